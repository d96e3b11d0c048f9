"""A preset's time to accuracy over several seeds, as the Fashion-MNIST records count it.

    python benchmarks/speedrun.py --preset NAME [--seeds 5] [--first-seed 1000] [--target 0.94]
                                  [--data-dir DIR] [--quick]

Each seed is one whole process, timed from launch to exit: it chooses its threads' wait as
``cnnlab train`` does (before PyTorch loads), then trains the preset with ``cnnlab.train.train`` and a
callback that notes, after every epoch, the training seconds so far and the held-out accuracy.  The
test split is scored once, at the end; the time to ``--target`` is read from the validation curve
(presets hold out a tenth of the training data), never from the test split.

Printed per seed: final test accuracy, final validation accuracy, the epoch and training seconds at
which validation first reached the target, and the whole process's seconds; then the mean, min and
max over the seeds, the training FLOPs of one run (6 x the network's forward MACs per example x the
examples trained, the usual estimate for forward plus backward) and this machine's measured matmul
peak in fp32 and bf16, so that a time from another machine can be put beside it.

Choose recipes with development seeds, then report held-out seeds (another ``--first-seed``) once the
recipe is frozen.  ``--quick`` trains 2,000 images for 2 epochs: a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def child(args) -> None:
    """One seed's run, in this process (started by :func:`main`); its numbers go to ``args.out`` as JSON."""
    from cnnlab import openmp  # noqa: E402  before PyTorch loads, as `cnnlab train` chooses

    openmp.choose()
    from cnnlab.presets import preset_config  # noqa: E402
    from cnnlab.train.callbacks import Callback  # noqa: E402
    from cnnlab.train.run import train  # noqa: E402

    class EpochLog(Callback):
        def __init__(self):
            self.points: list[dict] = []

        def on_epoch_end(self, trainer, epoch, record):
            self.points.append({"epoch": epoch + 1, "train_seconds": trainer.state.train_seconds,
                                "val_acc": record.get("val_acc")})

    overrides = {"seed": args.seed, "data_dir": str(args.data_dir), "device": "cpu"}
    if args.quick:
        overrides.update(train_limit=2000, test_limit=1000, epochs=2)
    log = EpochLog()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        result = train(preset_config(args.preset, **overrides), progress=False, out=quiet, callbacks=[log])
    Path(args.out).write_text(json.dumps({"test_acc": result["test_acc"], "train_seconds": result["train_seconds"],
                                          "curve": log.points, "omp_wait": openmp.chosen().describe()}),
                              encoding="utf-8")


def run_seed(args, seed: int, folder: Path) -> dict:
    out = folder / f"seed-{seed}.json"
    cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--seed", str(seed),
           "--data-dir", str(args.data_dir), "--out", str(out), *(["--quick"] if args.quick else [])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
    run = json.loads(out.read_text(encoding="utf-8"))
    run["process_seconds"] = seconds
    hit = next((p for p in run["curve"] if p["val_acc"] is not None and p["val_acc"] >= args.target), None)
    run["to_target"] = hit
    return run


def training_flops(args) -> tuple[int, float]:
    """(parameters, estimated training FLOPs of one run): 6 x forward MACs per example x examples trained."""
    from cnnlab.data import get_spec  # noqa: E402
    from cnnlab.models import create, sized_options  # noqa: E402
    from cnnlab.models.summary import layer_stats  # noqa: E402
    from cnnlab.presets import preset_config  # noqa: E402

    config = preset_config(args.preset, data_dir=str(args.data_dir))
    spec = get_spec(config.dataset)
    channels, size = config.channels or spec.image_shape[0], config.image_size or spec.image_shape[1]
    model = create(config.model, num_classes=spec.num_classes, in_channels=channels,
                   **sized_options(config.model, config.model_options, size))
    macs = sum(row.macs for row in layer_stats(model, (1, channels, size, size)))
    train_images = round((2000 if args.quick else spec.num_train) * (1 - config.val_fraction))
    epochs = 2 if args.quick else config.epochs
    return sum(p.numel() for p in model.parameters()), 6.0 * macs * train_images * epochs


def matmul_peak(dtype_name: str, seconds: float = 0.5) -> float:
    """GFLOP/s of 1024 x 1024 matrix products in ``dtype_name`` on this machine's CPU, as PyTorch runs them."""
    import torch  # noqa: E402

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 1024 ** 3 * count / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.94, help="validation accuracy to time")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_FASHION_MNIST)
    parser.add_argument("--quick", action="store_true", help="2,000 images, 2 epochs: a smoke run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_seed(args, seed, Path(tmp))
            runs.append(run)
            hit = run["to_target"]
            reached = f"epoch {hit['epoch']}, {hit['train_seconds']:.1f} s of training" if hit else "not reached"
            last_val = next((p["val_acc"] for p in reversed(run["curve"]) if p["val_acc"] is not None), None)
            print(f"seed {seed}: test acc {run['test_acc']:.4f}, val acc "
                  f"{'-' if last_val is None else f'{last_val:.4f}'}, val >= {args.target}: {reached}; "
                  f"process {run['process_seconds']:.1f} s; omp_wait={run['omp_wait']}", flush=True)
    import torch  # noqa: E402  only now: the seeds' processes ran on an otherwise idle interpreter

    accs = [r["test_acc"] for r in runs]
    params, flops = training_flops(args)
    print(f"preset {args.preset}, {len(runs)} seeds from {args.first_seed}: test acc mean {statistics.mean(accs):.4f}, "
          f"min {min(accs):.4f}, max {max(accs):.4f}; process seconds mean "
          f"{statistics.mean(r['process_seconds'] for r in runs):.1f}, max {max(r['process_seconds'] for r in runs):.1f}; "
          f"val >= {args.target} in {sum(r['to_target'] is not None for r in runs)}/{len(runs)} seeds")
    print(f"network: {params:,d} parameters; training: about {flops / 1e12:.2f} TFLOP per run")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; Python "
          f"{platform.python_version()}, torch {torch.__version__}; matmul peak fp32 {matmul_peak('float32'):.0f} "
          f"GFLOP/s, bf16 {matmul_peak('bfloat16'):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
