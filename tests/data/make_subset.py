"""Write the small real subsets of Fashion-MNIST and MNIST that the tests train on.

    python tests/data/make_subset.py [SOURCE_ROOT]

SOURCE_ROOT holds ``fashion-mnist/`` and ``mnist/`` with the canonical gzip IDX files (default:
``../shared/data`` beside the repository, else ``$CNNLAB_TEST_DATA``).  Each subset is the first
2,000 training and the first 1,000 test examples of the canonical files, in file order, written
as gzip IDX with a zero time stamp, so the same source always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnnlab.data.idx import read_idx, write_idx  # noqa: E402

COUNTS = {"train": 2_000, "t10k": 1_000}
DATASETS = ("fashion-mnist", "mnist")


def main(argv: list[str]) -> int:
    default = Path(os.environ.get("CNNLAB_TEST_DATA", REPO.parent / "shared" / "data"))
    source = Path(argv[0]) if argv else default
    for name in DATASETS:
        out = HERE / name
        out.mkdir(exist_ok=True)
        for prefix, n in COUNTS.items():
            for part, rank in (("images", 3), ("labels", 1)):
                stem = f"{prefix}-{part}-idx{rank}-ubyte"
                array = read_idx(source / name / f"{stem}.gz")[:n]
                write_idx(out / f"{stem}.gz", array)
                digest = hashlib.sha256((out / f"{stem}.gz").read_bytes()).hexdigest()
                print(f"{name}/{stem}.gz  {array.shape}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
