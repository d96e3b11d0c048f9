"""The book's own code on the real Fashion-MNIST: ``from cnnlab import d2l`` against the book's pipeline.

Three pieces of the book's code, each run unchanged but for the import, 10 epochs on the full data:

* ``ch6``: chapter 6's code blocks as printed (tests/data/book/chapter6.md, or $CNNLAB_TEST_NOTES):
  the LeNet, the data, and the chapter's own ``evaluate_accuracy_gpu`` and ``train_ch6``, which it
  defines and calls.  Only the data and the helpers (``Animator``, ``Accumulator``, ...) are cnnlab's.
* ``ch6 via d2l.train_ch6``: the same LeNet and data trained by ``d2l.train_ch6``, the library
  function the chapter saves (``#@save``) and chapter 7 calls: with cnnlab, the training step
  ``cnnlab train`` would choose (the LeNet kernel on a CPU).
* ``7.5 batch norm``: chapter 7.5's LeNet with batch normalisation, ``d2l.train_ch6`` at lr 1.0
  (tests/book_chapter7.py's ``BATCH_NORM_SECTION``).

The reference, "the book's pipeline", runs the same code with the book's ``load_data_fashion_mnist``
(a Dataset converting one image at a time through PIL into a tensor, torchvision's FashionMNIST +
ToTensor step for step, behind a DataLoader with 4 workers) and the book's ``train_ch6`` and
``evaluate_accuracy_gpu`` (the chapter's own, which are the book's library functions; eager PyTorch,
float32, the running sums read after every batch); the helpers stay cnnlab's, so only the pipeline
differs.  Where the real ``d2l`` package imports (it needs torchvision), the chapter's code and the
batch-norm section also run on it, as a third column; else that is skipped with a note.

Runs alternate (the order reversed every other round); each starts from the same initial weights
(``torch.manual_seed(0)`` before its training block) and is timed from loading the data to the end.
The book's examples/sec line counts only the training steps (its timer stops while batches are
fetched).  Ratios are the reference's median wall time over cnnlab's.

On a shared machine other people's work slows both sides, and not alike: two threads that must meet
at every parallel region (the LeNet kernel has many per step) lose far more to a third process than
PyTorch's larger operators do.  So each run also reports the CPU time the rest of the machine used
meanwhile (``/proc/stat``'s busy time less this process's and its children's), ``--wait-idle S``
waits up to S seconds before each run for a 3-second window in which others used under 10 % of the
CPUs, and ``--max-others C --retries N`` runs again (up to N times) a run during which the others
used more than C CPUs on average; the medians are of the runs kept, and the runs set aside are listed.

    python benchmarks/d2l_chapter.py [--quick] [--epochs N] [--rounds N] [--only ch6,via,bn]
                                     [--wait-idle S] [--max-others C --retries N]
                                     [--data-dir DIR] [--no-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import statistics
import sys
import tempfile
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
from book_code import BOOK_IMPORTS, CNNLAB_IMPORTS, python_blocks, chapter_text  # noqa: E402 - tests/book_code.py
from book_chapter7 import BATCH_NORM_SECTION  # noqa: E402 - tests/book_chapter7.py

warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores is the book's setting

PIECES = {"ch6": "chapter 6 as printed (its own train_ch6)", "via": "chapter 6's LeNet via d2l.train_ch6",
          "bn": "7.5 batch norm via d2l.train_ch6"}
PIPELINES = ("cnnlab.d2l", "book pipeline", "real d2l")


def book_load_data_fashion_mnist(batch_size, resize=None):
    """The book's loader, without torchvision: per-image PIL conversion, DataLoader with 4 workers."""
    from torch.utils.data import DataLoader

    from cnnlab.data import load_split

    if resize is not None:
        raise ValueError("this reference reproduces the chapter's calls, which do not resize")
    train = BookFashionMNIST(*load_split("fashion-mnist", "train"))
    test = BookFashionMNIST(*load_split("fashion-mnist", "test"))
    return (DataLoader(train, batch_size, shuffle=True, num_workers=4),
            DataLoader(test, batch_size, shuffle=False, num_workers=4))


class _BookPipeline:
    """cnnlab.d2l with the book's ``load_data_fashion_mnist``, ``train_ch6`` and ``evaluate_accuracy_gpu``
    swapped in (the last two: the chapter's own definitions); every other name unchanged."""

    def __init__(self, d2l):
        self._d2l = d2l
        self.load_data_fashion_mnist = book_load_data_fashion_mnist
        namespace = {"torch": torch, "nn": torch.nn, "d2l": self}
        for block in python_blocks(chapter_text()):
            if block.lstrip().startswith(("def evaluate_accuracy_gpu", "def train_ch6")):
                exec(block, namespace)
        self.evaluate_accuracy_gpu, self.train_ch6 = namespace["evaluate_accuracy_gpu"], namespace["train_ch6"]

    def __getattr__(self, name):
        return getattr(self._d2l, name)


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its reaped children), or
    None where /proc/stat cannot be read (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)   # less idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def others_since(start: tuple[float, float] | None) -> float | None:
    """CPU seconds the rest of the machine used since ``start`` (a :func:`cpu_seconds` reading)."""
    now = cpu_seconds()
    if start is None or now is None:
        return None
    return max(0.0, (now[0] - start[0]) - (now[1] - start[1]))


def wait_for_idle(limit: float, window: float = 3.0, share: float = 0.10) -> str:
    """Wait up to ``limit`` seconds for ``window`` seconds in which others use under ``share`` of the CPUs."""
    started = time.perf_counter()
    while True:
        before = cpu_seconds()
        if before is None:
            return "no /proc/stat: not waited"
        time.sleep(window)
        used = others_since(before) / (window * os.cpu_count())
        if used < share:
            return f"waited {time.perf_counter() - started:.0f} s for others under {share:.0%}"
        if time.perf_counter() - started > limit:
            return f"others still at {used:.0%} of the CPUs after {limit:.0f} s: ran anyway"


def real_d2l_missing() -> str | None:
    """Why the real d2l package cannot run here, or None if it can."""
    try:
        importlib.import_module("d2l.torch")
    except Exception as exc:  # ImportError, or torchvision failing to load beside this torch
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return None


def piece_code(piece: str, epochs: int) -> tuple[list[str], str]:
    """(set-up blocks, timed blocks) of a piece, with its epochs set to ``epochs``."""
    blocks = python_blocks(chapter_text())
    if piece in ("ch6", "via"):
        run = blocks[-1]
        if "lr, num_epochs = 0.9, 10" not in run:
            raise SystemExit("the chapter's last block no longer reads 'lr, num_epochs = 0.9, 10'")
        run = run.replace("lr, num_epochs = 0.9, 10", f"lr, num_epochs = 0.9, {epochs}")
        if piece == "via":   # the chapter's blocks, the call going to the library's train_ch6
            run = run.replace("train_ch6(", "d2l.train_ch6(")
            return [blocks[0]], "\n".join([blocks[1], "torch.manual_seed(0)", run])
        return [blocks[0]], "\n".join(blocks[1:-1] + ["torch.manual_seed(0)", run])
    net, rest = BATCH_NORM_SECTION.split("\n\n", 1)
    if "lr, num_epochs, batch_size = 1.0, 10, 256" not in rest:
        raise SystemExit("the batch-norm section no longer reads 'lr, num_epochs, batch_size = 1.0, 10, 256'")
    *data, train = rest.replace("1.0, 10, 256", f"1.0, {epochs}, 256").strip().splitlines()
    return [net], "\n".join([*data, "torch.manual_seed(0)", train])


def run_piece(piece: str, pipeline: str, epochs: int) -> tuple[list[str], float]:
    """Execute a piece on a pipeline; returns what it printed and the wall time of its timed blocks."""
    setup, timed = piece_code(piece, epochs)
    namespace: dict = {"__name__": "__chapter__"}
    exec(BOOK_IMPORTS if pipeline == "real d2l" else CNNLAB_IMPORTS, namespace)
    if pipeline == "book pipeline":
        namespace["d2l"] = _BookPipeline(namespace["d2l"])
    for block in setup:
        exec(block, namespace)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        exec(timed, namespace)
    return [line for line in out.getvalue().splitlines() if not line.startswith("<Figure")], \
        time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of the chapter's 10, one round")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every run (default: the book's 10)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of alternating runs (default 2; --quick 1)")
    parser.add_argument("--only", default="ch6,via,bn", help="pieces to run (default ch6,via,bn)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the other processes to go quiet")
    parser.add_argument("--max-others", type=float, default=None, metavar="C",
                        help="run again a run during which other processes used more than C CPUs on average")
    parser.add_argument("--retries", type=int, default=3, help="most reruns of one run (with --max-others)")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (sets CNNLAB_DATA)")
    parser.add_argument("--no-reference", action="store_true", help="skip the book's pipeline and the real d2l")
    parser.add_argument("--animator", default=None,
                        help="where the Animator's PNG goes (default: a temporary folder's animator.png)")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 10)
    rounds = args.rounds or (1 if args.quick else 2)
    pieces = [p for p in args.only.split(",") if p]
    unknown = set(pieces) - set(PIECES)
    if unknown:
        parser.error(f"unknown piece(s) {', '.join(sorted(unknown))}; choose from {', '.join(PIECES)}")
    if args.data_dir:
        os.environ["CNNLAB_DATA"] = args.data_dir
    os.environ["CNNLAB_ANIMATOR"] = args.animator or os.path.join(tempfile.mkdtemp(prefix="d2l-chapter-"),
                                                                  "animator.png")

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
          f"device {device}")
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{epochs} epoch(s), batch 256, {rounds} round(s), runs alternating")
    pipelines = ["cnnlab.d2l"]
    if not args.no_reference:
        pipelines.append("book pipeline")
        missing = real_d2l_missing()
        if missing is None:
            pipelines.append("real d2l")
        else:
            print(f"the real d2l package is not importable here ({missing}): its column is skipped")
    # via's references are ch6's: the book's train_ch6 is the one the chapter defines.
    reference_pieces = pieces + (["ch6"] if "via" in pieces and "ch6" not in pieces else [])
    runs = [(piece, pipeline) for piece in reference_pieces for pipeline in pipelines
            if not (piece == "via" and pipeline != "cnnlab.d2l") and (piece in pieces or pipeline != "cnnlab.d2l")]
    walls: dict = {run: [] for run in runs}
    set_aside: list[str] = []
    for r in range(rounds):
        for piece, pipeline in (runs if r % 2 == 0 else runs[::-1]):
            for attempt in range(args.retries + 1 if args.max_others is not None else 1):
                waited = f"; {wait_for_idle(args.wait_idle)}" if args.wait_idle else ""
                start = cpu_seconds()
                lines, wall = run_piece(piece, pipeline, epochs)
                others = others_since(start)
                share = others / wall if others is not None else None
                busy = f", others used {share:.2f} of {os.cpu_count()} CPUs" if share is not None else ""
                label = f"round {r + 1}, {PIECES[piece]}, {pipeline}: wall {wall:.1f} s " \
                        f"(load average {os.getloadavg()[0]:.2f}{busy}{waited})"
                disturbed = args.max_others is not None and share is not None and share > args.max_others
                if disturbed and attempt < args.retries:
                    set_aside.append(label)
                    print(f"{label}: set aside, run again", flush=True)
                    continue
                break
            walls[(piece, pipeline)].append(wall)
            print(label, flush=True)
            for line in lines[-2:]:
                print("   ", line, flush=True)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if set_aside:
        print(f"{len(set_aside)} run(s) set aside, others above {args.max_others} CPUs:")
        for label in set_aside:
            print("   ", label)
    print("medians of the wall times, and the reference's over cnnlab.d2l's:")
    for piece in pieces:
        ours = statistics.median(walls[(piece, "cnnlab.d2l")])
        cells = [f"cnnlab.d2l {ours:.1f} s"]
        for pipeline in pipelines[1:]:
            reference = walls.get(("ch6" if piece == "via" else piece, pipeline))
            if reference:
                ref = statistics.median(reference)
                cells.append(f"{pipeline} {ref:.1f} s ({ref / ours:.2f}x)")
        print(f"  {PIECES[piece]}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
