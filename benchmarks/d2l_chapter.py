"""The chapter's chapter-6 code, all 10 epochs on the real Fashion-MNIST: cnnlab.d2l vs the book's data pipeline.

Runs the chapter's Python blocks (tests/data/book/chapter6.md, or $CNNLAB_TEST_NOTES) unchanged,
with the book's imports and ``from cnnlab import d2l``, and prints the lines they print and the
wall time.  Then, in the same run, the same code again with the book's data pipeline in place of
``d2l.load_data_fashion_mnist``: a Dataset converting one image at a time through PIL into a
tensor (torchvision's FashionMNIST + ToTensor) behind a DataLoader with 4 workers, as the book.
Both start from the same initial weights (the shuffled orders differ).  Wall time includes
loading the data; the book's examples/sec line counts only the training steps (its timer stops
while batches are fetched).

    python benchmarks/d2l_chapter.py [--quick] [--epochs N] [--data-dir DIR] [--no-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _machine import cpu_model  # noqa: E402
from loader import BookFashionMNIST  # noqa: E402 - benchmarks/loader.py
from book_code import CNNLAB_IMPORTS, python_blocks, chapter_text  # noqa: E402 - tests/book_code.py

warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores is the book's setting


def book_load_data_fashion_mnist(batch_size, resize=None):
    """The book's loader, without torchvision: per-image PIL conversion, DataLoader with 4 workers."""
    from torch.utils.data import DataLoader

    from cnnlab.data import load_split

    if resize is not None:
        raise ValueError("this reference reproduces the chapter's call, which does not resize")
    train = BookFashionMNIST(*load_split("fashion-mnist", "train"))
    test = BookFashionMNIST(*load_split("fashion-mnist", "test"))
    return (DataLoader(train, batch_size, shuffle=True, num_workers=4),
            DataLoader(test, batch_size, shuffle=False, num_workers=4))


def run_chapter(epochs: int, book_pipeline: bool) -> tuple[list[str], float]:
    """Execute the chapter's blocks; returns what they printed and the wall time from data loading to the end."""
    blocks = python_blocks(chapter_text())
    namespace: dict = {"__name__": "__chapter__"}
    exec(CNNLAB_IMPORTS, namespace)
    if book_pipeline:
        namespace["d2l"] = _BookData(namespace["d2l"])
    exec(blocks[0], namespace)  # the net
    run_block = blocks[-1].replace("lr, num_epochs = 0.9, 10", f"lr, num_epochs = 0.9, {epochs}")
    if epochs != 10 and run_block == blocks[-1]:
        raise SystemExit("the chapter's last block no longer reads 'lr, num_epochs = 0.9, 10'")
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        for block in blocks[1:-1]:
            exec(block, namespace)
        torch.manual_seed(0)  # the same Xavier initial weights for both pipelines, whatever loading drew
        exec(run_block, namespace)
    return out.getvalue().splitlines(), time.perf_counter() - start


class _BookData:
    """cnnlab.d2l with the book's ``load_data_fashion_mnist`` swapped in; every other name unchanged."""

    def __init__(self, d2l):
        self._d2l = d2l

    def __getattr__(self, name):
        if name == "load_data_fashion_mnist":
            return book_load_data_fashion_mnist
        return getattr(self._d2l, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of the chapter's 10")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both runs (default: the chapter's 10)")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (sets CNNLAB_DATA)")
    parser.add_argument("--no-reference", action="store_true", help="skip the run with the book's data pipeline")
    parser.add_argument("--animator", default=None,
                        help="where the Animator's PNG goes (default: a temporary folder's animator.png)")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 10)
    if args.data_dir:
        os.environ["CNNLAB_DATA"] = args.data_dir
    if args.animator:
        os.environ["CNNLAB_ANIMATOR"] = args.animator
    else:
        import tempfile

        os.environ.setdefault("CNNLAB_ANIMATOR", os.path.join(tempfile.mkdtemp(prefix="d2l-chapter-"), "animator.png"))

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
          f"device {device}")
    print(f"the chapter's blocks, {epochs} epoch(s), batch 256, lr 0.9")

    runs = [("cnnlab.d2l", False)] + ([] if args.no_reference else [("book pipeline", True)])
    walls = {}
    for name, book in runs:
        lines, wall = run_chapter(epochs, book)
        walls[name] = wall
        print(f"--- {name}: wall {wall:.1f} s")
        for line in lines:
            print("   ", line)
    if len(walls) == 2:
        print(f"wall-time ratio, book pipeline / cnnlab.d2l: {walls['book pipeline'] / walls['cnnlab.d2l']:.2f}x")


if __name__ == "__main__":
    main()
