"""The book's whole recipe, the book's pipeline against ``cnnlab train``, alternating in one run.

Reference (the book, d2l 6.6): torchvision's ``FashionMNIST`` with ``transforms.ToTensor()``, one
example at a time (a PIL image, then a float tensor; ``benchmarks/loader.py``'s ``BookFashionMNIST``
repeats those steps because torchvision's PyPI builds do not load beside the pinned torch),
``torch.utils.data.DataLoader(batch_size=256, shuffle=True, num_workers=4)``, and the book's ``train_ch6`` loop (Xavier init, SGD lr 0.9, ``Accumulator`` with
its ``float()`` host syncs, ``evaluate_accuracy_gpu`` after every epoch; only the Animator's drawing
is left out).  cnnlab: ``python -m cnnlab train`` with the same recipe.

Each run is its own process, timed from launch to exit (imports, data loading and every test
evaluation included); examples/sec = epochs x training examples / that wall time.  Each process
also times itself from its first batch to its final test accuracy, reported as a second ratio.  Peak memory is
the process's maximum resident set (``wait4``; the reference's worker processes are reported apart).
Runs alternate (reference, cnnlab, reference, ...) so load from other jobs hits both alike.

    python benchmarks/speed.py              # 2 rounds of the 10-epoch recipe each (CPU: ~5 min)
    python benchmarks/speed.py --quick      # 1 round of 1 epoch each
    python benchmarks/speed.py --device cuda --cnnlab-args "--compile off --precision fp32"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]


# ---- the book's pipeline (runs in a worker process) -------------------------------------------
def reference_worker(args) -> dict:
    import torch
    from torch import nn
    from torch.utils import data

    sys.path.insert(0, str(REPO / "src"))
    from cnnlab.data import load_split

    device = torch.device(args.device)

    class Accumulator:
        def __init__(self, n):
            self.data = [0.0] * n

        def add(self, *args):
            self.data = [a + float(b) for a, b in zip(self.data, args)]

        def __getitem__(self, idx):
            return self.data[idx]

    def accuracy(y_hat, y):
        if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
            y_hat = y_hat.argmax(axis=1)
        cmp = y_hat.type(y.dtype) == y
        return float(cmp.type(y.dtype).sum())

    def evaluate_accuracy_gpu(net, data_iter, device=None):
        if isinstance(net, nn.Module):
            net.eval()
            if not device:
                device = next(iter(net.parameters())).device
        metric = Accumulator(2)
        with torch.no_grad():
            for X, y in data_iter:
                X = X.to(device)
                y = y.to(device)
                metric.add(accuracy(net(X), y), y.numel())
        return metric[0] / metric[1]

    def train_ch6(net, train_iter, test_iter, num_epochs, lr, device):
        def init_weights(m):
            if type(m) == nn.Linear or type(m) == nn.Conv2d:
                nn.init.xavier_uniform_(m.weight)
        net.apply(init_weights)
        net.to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        loss = nn.CrossEntropyLoss()
        num_batches = len(train_iter)
        for epoch in range(num_epochs):
            metric = Accumulator(3)
            net.train()
            for i, (X, y) in enumerate(train_iter):
                optimizer.zero_grad()
                X, y = X.to(device), y.to(device)
                y_hat = net(X)
                l = loss(y_hat, y)
                l.backward()
                optimizer.step()
                with torch.no_grad():
                    metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
                train_l = metric[0] / metric[2]
                train_acc = metric[1] / metric[2]
                if (i + 1) % max(1, num_batches // 5) == 0 or i == num_batches - 1:
                    pass  # the book's animator.add(...) draws here
            test_acc = evaluate_accuracy_gpu(net, test_iter)
        return train_l, train_acc, test_acc

    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    from loader import BookFashionMNIST  # benchmarks/loader.py: torchvision's FashionMNIST + ToTensor, per example

    train_images, train_labels = load_split("fashion-mnist", "train", args.data_dir, download=False)
    if args.train_limit:
        train_images, train_labels = train_images[:args.train_limit], train_labels[:args.train_limit]
    train_set = BookFashionMNIST(train_images, train_labels)
    test_set = BookFashionMNIST(*load_split("fashion-mnist", "test", args.data_dir, download=False))
    train_iter = data.DataLoader(train_set, 256, shuffle=True, num_workers=4)
    test_iter = data.DataLoader(test_set, 256, shuffle=False, num_workers=4)
    start = time.perf_counter()
    train_l, train_acc, test_acc = train_ch6(net, train_iter, test_iter, args.epochs, 0.9, device)
    fit_seconds = time.perf_counter() - start
    import resource
    return {"test_acc": test_acc, "train_acc": train_acc, "train_loss": train_l, "train_examples": len(train_set),
            "fit_seconds": fit_seconds,
            "workers_max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# ---- measuring ---------------------------------------------------------------------------------
def run_process(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of that process, stdout)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({proc.returncode}): {shlex.join(cmd)}\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024, text


def run_reference(args, env) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--epochs", str(args.epochs),
           "--data-dir", str(args.data_dir)] + (["--train-limit", str(args.train_limit)] if args.train_limit else [])
    wall, rss, text = run_process(cmd, env)
    result = json.loads(text.strip().splitlines()[-1])
    return {**result, "wall": wall, "rss_mb": rss}


def run_cnnlab(args, env, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data-dir", str(args.data_dir), "--device", args.device,
           "--epochs", str(args.epochs), "--run-dir", str(run_dir), "--no-progress", *shlex.split(args.cnnlab_args)]
    if args.train_limit:
        cmd += ["--train-limit", str(args.train_limit)]
    wall, rss, text = run_process(cmd, env)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    train_examples = args.train_limit or 60000
    return {"test_acc": summary["test_acc"], "train_acc": summary["train_acc"], "wall": wall, "rss_mb": rss,
            "train_examples": train_examples, "speed": config.get("speed", "?"), "fit_seconds": summary["wall_seconds"],
            "timings": summary.get("timings", {})}


def matmul_peak_gflops(device: str, dtype: str = "float32") -> float:
    """Best matrix-multiply rate (GFLOP/s) over a few square products in ``dtype``: the compute roof."""
    import torch

    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=dev, dtype=getattr(torch, dtype)) for _ in range(2))
    best = float("inf")
    for _ in range(6):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def recipe_flops_per_example() -> float:
    """Training FLOPs per example of LeNet: forward MACs x 2 (multiply + add) x 3 (forward, two backward products)."""
    sys.path.insert(0, str(REPO / "src"))
    from cnnlab.models import create
    from cnnlab.models.summary import layer_stats

    macs = sum(s.macs for s in layer_stats(create("lenet")))
    return macs * 2 * 3


def hardware(device: str) -> str:
    import torch

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"CPU {cpu_model()}",
             f"{os.cpu_count()} logical CPUs", f"torch threads {torch.get_num_threads()}"]
    if device.startswith("cuda"):
        parts += [f"GPU {torch.cuda.get_device_name(0)}", f"CUDA {torch.version.cuda}"]
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round of 1 epoch each")
    p.add_argument("--rounds", type=int, default=2, help="runs of each pipeline, alternating")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (the recipe: 10)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_FASHION_MNIST, help="folder with Fashion-MNIST's IDX files")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N examples (development only)")
    p.add_argument("--cnnlab-args", default="", help="extra flags for cnnlab train, e.g. \"--compile on\"")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(reference_worker(args)))
        return
    if args.quick:
        args.rounds, args.epochs = 1, 1

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    print(hardware(args.device))
    peak = matmul_peak_gflops(args.device)
    peak_bf16 = matmul_peak_gflops(args.device, "bfloat16")
    flops = recipe_flops_per_example()
    print(f"matmul peak ({args.device}): fp32 {peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s; "
          f"recipe: {flops / 1e6:.2f} MFLOP per training example")
    print(f"recipe: LeNet, batch 256, SGD lr 0.9, {args.epochs} epoch(s), {args.rounds} round(s) each, device {args.device}")
    # A machine's first run of each pipeline pays once what no later run pays: compiling Python sources
    # to bytecode, matplotlib's font cache (~7 s on a fresh GPU machine), the LeNet kernel's C passes
    # (a few seconds, then cached), CUDA's kernel cache.  One short untimed run of each, so that round 1
    # measures what every later run costs.
    with tempfile.TemporaryDirectory() as tmp:
        warm_args = argparse.Namespace(**{**vars(args), "epochs": 1, "train_limit": 1024})
        warm_ref, warm_fast = run_reference(warm_args, env), run_cnnlab(warm_args, env, Path(tmp) / "warm")
    print(f"warm-up, untimed (1 epoch of 1,024 images each): reference {warm_ref['wall']:.1f} s, "
          f"cnnlab {warm_fast['wall']:.1f} s")
    ref_runs, fast_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ref = run_reference(args, env)
            ref_runs.append(ref)
            print(f"  round {r + 1} reference: {ref['wall']:7.1f} s  test acc {ref['test_acc']:.4f}  "
                  f"peak RSS {ref['rss_mb']:.0f} MB (+ workers up to {ref['workers_max_rss_mb']:.0f} MB each)",
                  flush=True)
            fast = run_cnnlab(args, env, Path(tmp) / f"run{r}")
            fast_runs.append(fast)
            print(f"  round {r + 1} cnnlab:    {fast['wall']:7.1f} s  test acc {fast['test_acc']:.4f}  "
                  f"peak RSS {fast['rss_mb']:.0f} MB  [{fast['speed']}]", flush=True)

    def rate(run):
        return args.epochs * run["train_examples"] / run["wall"]

    ref_rate = statistics.median(rate(r) for r in ref_runs)
    fast_rate = statistics.median(rate(r) for r in fast_runs)
    fast_wall = statistics.median(r["wall"] for r in fast_runs)
    # The roof is the precision cnnlab trained in (its plan is in the run's speed line).
    bf16 = "precision=bf16" in fast_runs[0]["speed"]
    roof = peak_bf16 if bf16 else peak
    bound = args.epochs * fast_runs[0]["train_examples"] * flops / (roof * 1e9)
    print(f"reference: {ref_rate:8.0f} examples/s  wall {statistics.median(r['wall'] for r in ref_runs):6.1f} s  "
          f"test acc {statistics.mean(r['test_acc'] for r in ref_runs):.4f}  peak RSS {max(r['rss_mb'] for r in ref_runs):.0f} MB")
    print(f"cnnlab:    {fast_rate:8.0f} examples/s  wall {fast_wall:6.1f} s  "
          f"test acc {statistics.mean(r['test_acc'] for r in fast_runs):.4f}  peak RSS {max(r['rss_mb'] for r in fast_runs):.0f} MB")
    print(f"speed-up: {fast_rate / ref_rate:.2f}x (medians of {args.rounds} round(s))")
    # The same recipe timed inside each process, from the first batch to the final test accuracy (data
    # loaded, Python, torch and the device already started): what start-up costs both is left out.
    ref_fit = statistics.median(r["fit_seconds"] for r in ref_runs)
    fast_fit = statistics.median(r["fit_seconds"] for r in fast_runs)
    print(f"in-process, first batch to final test accuracy: reference {ref_fit:.2f} s, cnnlab {fast_fit:.2f} s "
          f"-> {ref_fit / fast_fit:.2f}x")
    phases = {name: statistics.median(r["timings"].get(name, 0.0) for r in fast_runs)
              for name in ("data", "build", "first_step", "train", "evaluate", "epoch_end")}
    inside = phases["data"] + phases["build"] + fast_fit
    print(f"cnnlab's wall by phase (medians): start-up and exit {fast_wall - inside:.2f} s, data {phases['data']:.2f} s, "
          f"set-up {phases['build']:.2f} s, first step {phases['first_step']:.2f} s, other steps "
          f"{phases['train'] - phases['first_step']:.2f} s, evaluation {phases['evaluate']:.2f} s, "
          f"epoch-end writes {phases['epoch_end']:.2f} s")
    print(f"compute bound at the {'bf16' if bf16 else 'fp32'} matmul peak: {bound:.1f} s for the training FLOPs; "
          f"cnnlab reaches {bound / fast_wall:.1%} of it")


if __name__ == "__main__":
    main()
