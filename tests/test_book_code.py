"""The committed chapter code (tests/data/book/chapter6.md) is what the chapter notes hold."""

from __future__ import annotations

import importlib.util

from book_code import BOOK_CODE, REPO, notes_text, python_blocks, shape_table_lines


def make_book_code():
    spec = importlib.util.spec_from_file_location("make_book_code", REPO / "tests" / "data" / "make_book_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_blocks_are_the_chapters():
    """Where the chapter notes are present: the same code blocks and shape table, in order, and the very
    bytes tests/data/make_book_code.py writes from them."""
    notes = notes_text()
    committed = BOOK_CODE.read_text(encoding="utf-8")
    assert python_blocks(committed) == python_blocks(notes)
    assert shape_table_lines(committed) == shape_table_lines(notes)
    assert committed == make_book_code().extract(notes), "rebuild it: python tests/data/make_book_code.py"


def test_the_extract_keeps_only_code_and_the_printed_table():
    text = ("Prose before.\n\n```python\nx = 1\n\ny = 2\n```\n\nMore prose.\n>A output shape: 1\n"
            ">B output shape: 2\n\n```python\nprint(x)\n```\nClosing prose.\n")
    extract = make_book_code().extract(text)
    assert "prose" not in extract.lower()
    assert python_blocks(extract) == python_blocks(text) == ["x = 1\n\ny = 2\n", "print(x)\n"]
    assert shape_table_lines(extract) == shape_table_lines(text) == ["A output shape: 1", "B output shape: 2"]
