"""Examples/sec of one epoch of Fashion-MNIST batches (256): cnnlab's loader vs the book's way.

The book's way (d2l ``load_data_fashion_mnist``): a Dataset whose ``__getitem__`` turns one
uint8 image into a PIL image and then into a float tensor (what torchvision's FashionMNIST with
``ToTensor`` does), behind ``torch.utils.data.DataLoader`` with 4 workers and shuffling.
cnnlab's way: the split is one uint8 tensor, a batch is an index slice converted in one op.
Both are measured in the same run, on the same data, including each loader's start-up.

    python benchmarks/loader.py [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script here runs
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cnnlab.data import BatchIterator, load_split

warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores is the book's setting


class BookFashionMNIST(Dataset):
    """One image at a time, as torchvision's ``FashionMNIST`` with ``transforms.ToTensor()`` (the d2l loader).

    Step for step what torchvision does per example, without importing it (its PyPI builds do not
    load beside the pinned torch): index the split's uint8 tensor and int() the label; make a PIL
    image of mode "L"; then ``to_tensor``: a copied uint8 array, viewed (H, W, bands), permuted to
    (bands, H, W) and made contiguous, converted to the default float type and divided by 255.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.data = images[:, 0].contiguous()      # (N, 28, 28) uint8, as torchvision keeps it
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        img, target = self.data[i], int(self.targets[i])
        picture = Image.fromarray(img.numpy(), mode="L")
        x = torch.from_numpy(np.array(picture, np.uint8, copy=True))
        x = x.view(picture.size[1], picture.size[0], len(picture.getbands())).permute((2, 0, 1)).contiguous()
        return x.to(dtype=torch.get_default_dtype()).div(255), target


def epoch_rate(make_batches, n_examples: int) -> float:
    start = time.perf_counter()
    seen = 0
    for X, y in make_batches():
        seen += len(y)
    elapsed = time.perf_counter() - start
    assert seen == n_examples, (seen, n_examples)
    return n_examples / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="first 12,800 training examples, 1 run each")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    parser.add_argument("--runs", type=int, default=3, help="epochs timed per loader (mean reported)")
    args = parser.parse_args()

    images, labels = load_split("fashion-mnist", "train", args.data_dir)
    runs = 1 if args.quick else args.runs
    if args.quick:
        images, labels = images[:12_800], labels[:12_800]
    n = len(labels)

    ours = BatchIterator(images, labels, 256, shuffle=True, seed=0)
    book = DataLoader(BookFashionMNIST(images, labels), batch_size=256, shuffle=True, num_workers=4)

    ours_rates = [epoch_rate(lambda: ours, n) for _ in range(runs)]
    book_rates = [epoch_rate(lambda: book, n) for _ in range(runs)]
    ours_mean, book_mean = statistics.mean(ours_rates), statistics.mean(book_rates)

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    print(f"data: {n:,d} Fashion-MNIST training examples, batch 256, shuffled, {runs} epoch(s) each")
    print(f"cnnlab BatchIterator:            {ours_mean:>12,.0f} examples/sec  (runs: "
          f"{', '.join(f'{r:,.0f}' for r in ours_rates)})")
    print(f"book Dataset+DataLoader(4 wkrs): {book_mean:>12,.0f} examples/sec  (runs: "
          f"{', '.join(f'{r:,.0f}' for r in book_rates)})")
    print(f"ratio of means: {ours_mean / book_mean:.1f}x; ratio of best epochs: "
          f"{max(ours_rates) / max(book_rates):.1f}x (the best epoch is the least disturbed by other load)")


if __name__ == "__main__":
    main()
