"""Time to accuracy of the shipped presets on the full Fashion-MNIST.

    python benchmarks/recipes.py [--presets small,fast,best-5min,best] [--quick] [--device cpu] [--out FILE.json]

Trains each preset from scratch with ``cnnlab.train.train`` (the same code as ``cnnlab train
--preset NAME``), records the test accuracy after every epoch with the training seconds spent so
far, and prints the time (and epoch) at which each preset first reaches 0.90, 0.92, 0.93 and
0.94, its final accuracy, parameters, and the ratio of its time to 0.90 against the book's LeNet
recipe measured in the same run.  ``--quick`` uses 2,000 training and 1,000 test images and two
epochs (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script here runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.presets import PRESETS, preset_config  # noqa: E402
from cnnlab.train.callbacks import Callback  # noqa: E402
from cnnlab.train.run import train  # noqa: E402

THRESHOLDS = (0.90, 0.92, 0.93, 0.94)


class EpochLog(Callback):
    """Test accuracy after every epoch, with the training seconds spent so far."""

    def __init__(self):
        self.points: list[dict] = []

    def on_epoch_end(self, trainer, epoch, record):
        self.points.append({"epoch": epoch + 1, "train_seconds": trainer.state.train_seconds,
                            "test_acc": record["test_acc"]})


def hardware() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_preset(name: str, args) -> dict:
    overrides = {"device": args.device, "seed": args.seed}
    if args.quick:
        overrides.update(train_limit=2000, test_limit=1000, epochs=2)
    config = preset_config(name, **overrides)
    log = EpochLog()
    started = time.perf_counter()
    run_dir = Path(args.run_root) / name if args.run_root else None
    result = train(config, run_dir=run_dir, progress=False, out=sys.stdout if args.verbose else open(os.devnull, "w"),
                   callbacks=[log])
    from cnnlab.models import create

    params = sum(p.numel() for p in create(config.model, **config.model_options).parameters())
    reached = {}
    for threshold in THRESHOLDS:
        hit = next((p for p in log.points if p["test_acc"] >= threshold), None)
        reached[f"{threshold:.2f}"] = None if hit is None else {"epoch": hit["epoch"],
                                                                 "seconds": round(hit["train_seconds"], 1)}
    return {"preset": name, "model": config.model, "params": params, "epochs": config.epochs,
            "final_test_acc": result["test_acc"], "best_test_acc": max(p["test_acc"] for p in log.points),
            "train_seconds": result["train_seconds"], "wall_seconds": time.perf_counter() - started,
            "reached": reached, "curve": log.points}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="book,small,fast,best-5min,best", help="comma-separated preset names")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny subset, two epochs (smoke run)")
    parser.add_argument("--run-root", default=None, help="keep each preset's run directory here (ROOT/<preset>)")
    parser.add_argument("--verbose", action="store_true", help="print each epoch's line")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    names = [n for n in args.presets.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    hw = hardware()
    print("hardware:", json.dumps(hw), flush=True)
    results = []
    for name in names:
        res = run_preset(name, args)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "curve"}), flush=True)
    reference = next((r for r in results if r["preset"] == "book"), None)
    print()
    header = ["preset", "model", "params", "epochs", "final acc", *[f"t({t:.2f})" for t in THRESHOLDS],
              "t(0.90) / book"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        times = []
        for t in THRESHOLDS:
            hit = r["reached"][f"{t:.2f}"]
            times.append("-" if hit is None else f"{hit['seconds']:.0f}s (ep {hit['epoch']})")
        ratio = "-"
        if reference and r["reached"]["0.90"] and reference["reached"]["0.90"]:
            ratio = f"{r['reached']['0.90']['seconds'] / reference['reached']['0.90']['seconds']:.2f}"
        print(f"| {r['preset']} | {r['model']} | {r['params']:,} | {r['epochs']} | {r['final_test_acc']:.4f} | "
              + " | ".join(times) + f" | {ratio} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"hardware": hw, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
