"""The seed's Python code blocks (d2l chapter 6 study notes), as the book's learners run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seeds" / "000_592f4f64f919b50d.txt"

# The imports the book's notebooks start with; the seed's blocks assume them.  The only change a
# learner makes to move onto cnnlab is the last line.
BOOK_IMPORTS = "import torch\nfrom torch import nn\nfrom d2l import torch as d2l\n"
CNNLAB_IMPORTS = BOOK_IMPORTS.replace("from d2l import torch as d2l", "from cnnlab import d2l")

# The book's chapter code that prints the shape table the seed shows (the seed has only the output).
SHAPE_TABLE_CODE = """\
X = torch.rand(size=(1, 1, 28, 28), dtype=torch.float32)
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape: \\t', X.shape)
"""


def seed_text() -> str:
    if not SEED.exists():
        pytest.skip(f"seed notes not found at {SEED}")
    return SEED.read_text(encoding="utf-8")


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks, in order."""
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def shape_table_lines(text: str) -> list[str]:
    """The seed's printed shape table (its lines starting with '>'), whitespace-normalised."""
    return [" ".join(line[1:].split()) for line in text.splitlines() if line.startswith(">")]


def seed_net():
    """LeNet exactly as the seed's first code block builds it: the block is executed, not retyped."""
    namespace: dict = {}
    exec("import torch\nfrom torch import nn\n" + python_blocks(seed_text())[0], namespace)
    return namespace["net"]
