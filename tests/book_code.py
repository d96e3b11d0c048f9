"""The chapter's Python code blocks (d2l chapter 6, LeNet), as the book's learners run them."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK_CODE = REPO / "tests" / "data" / "book" / "chapter6.md"
"""The chapter's Python code blocks and printed shape table, committed (tests/data/README.md)."""
NOTES = Path(os.environ.get("CNNLAB_TEST_NOTES", REPO.parent / "shared" / "seeds" / "000_592f4f64f919b50d.txt"))
"""The full chapter notes the committed code came from: the book's text, so not in this repository."""

# The imports the book's notebooks start with; the chapter's blocks assume them.  The only change a
# learner makes to move onto cnnlab is the last line.
BOOK_IMPORTS = "import torch\nfrom torch import nn\nfrom d2l import torch as d2l\n"
CNNLAB_IMPORTS = BOOK_IMPORTS.replace("from d2l import torch as d2l", "from cnnlab import d2l")

# The book's chapter code that prints the shape table the chapter shows (the notes have only the output).
SHAPE_TABLE_CODE = """\
X = torch.rand(size=(1, 1, 28, 28), dtype=torch.float32)
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape: \\t', X.shape)
"""


def chapter_text() -> str:
    """The chapter's code blocks and shape table: the notes named by CNNLAB_TEST_NOTES, else the
    committed extract of them."""
    path = NOTES if "CNNLAB_TEST_NOTES" in os.environ else BOOK_CODE
    return path.read_text(encoding="utf-8")


def notes_text() -> str:
    """The full chapter notes (skipped, or under CI=true failed, where they are absent)."""
    from conftest import require

    require(NOTES.exists(), f"the chapter notes ({NOTES})", "set CNNLAB_TEST_NOTES to the notes' file")
    return NOTES.read_text(encoding="utf-8")


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks, in order."""
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def shape_table_lines(text: str) -> list[str]:
    """The chapter's printed shape table (its lines starting with '>'), whitespace-normalised."""
    return [" ".join(line[1:].split()) for line in text.splitlines() if line.startswith(">")]


def book_net():
    """LeNet exactly as the chapter's first code block builds it: the block is executed, not retyped."""
    namespace: dict = {}
    exec("import torch\nfrom torch import nn\n" + python_blocks(chapter_text())[0], namespace)
    return namespace["net"]
