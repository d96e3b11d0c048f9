"""Write the book's chapter 6 code that the tests run: ``tests/data/book/chapter6.md``.

    python tests/data/make_book_code.py [NOTES]

NOTES is the chapter notes' text (default: ``$CNNLAB_TEST_NOTES``, else
``../shared/seeds/000_592f4f64f919b50d.txt`` beside the repository).  The output keeps, in the order
of the notes, only the ```python fenced blocks (the book's sample code) and the lines starting with
'>' (the shape table the chapter prints), each as it is; the book's prose is left out.  The same
notes always give the same bytes, and ``tests/test_book_code.py`` checks the committed file against
the notes wherever they are present.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "book" / "chapter6.md"
DEFAULT_NOTES = REPO.parent / "shared" / "seeds" / "000_592f4f64f919b50d.txt"

HEADER = """\
# Dive into Deep Learning, chapter 6 (LeNet): the book's code blocks

The chapter's Python code blocks and the shape table it prints (the lines starting with '>'), in order
and unchanged, as tests/data/make_book_code.py writes them from the chapter notes.  The book's sample
code is licensed MIT-0 (MIT No Attribution); see tests/data/README.md.
"""


def extract(text: str) -> str:
    """The header, then every ```python block and every '>' line of ``text``, in order, one blank line
    between pieces (consecutive '>' lines stay together)."""
    pieces: list[list[str]] = []
    block: list[str] | None = None
    previous_quoted = False
    for line in text.splitlines():
        if block is not None:
            block.append(line)
            if line.startswith("```"):
                pieces.append(block)
                block = None
        elif line.startswith("```python"):
            block = [line]
            previous_quoted = False
        elif line.startswith(">"):
            if previous_quoted:
                pieces[-1].append(line)
            else:
                pieces.append([line])
            previous_quoted = True
        else:
            previous_quoted = False
    if block is not None:
        raise ValueError("the notes end inside a ```python block")
    return HEADER + "".join("\n" + "\n".join(piece) + "\n" for piece in pieces)


def main(argv: list[str]) -> int:
    notes = Path(argv[0]) if argv else Path(os.environ.get("CNNLAB_TEST_NOTES", DEFAULT_NOTES))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(extract(notes.read_text(encoding="utf-8")), encoding="utf-8", newline="\n")
    print(f"{OUT.relative_to(REPO)} from {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
