"""A whole training run: data, model, optimizer, engine and the run directory, from a TrainConfig.

This is what ``cnnlab train`` calls; it is a library function so notebooks and scripts get the
same runs (and the same files) as the command line.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.fileio import write_json
from cnnlab.train.callbacks import Callback, EpochPrinter, ProgressBar, RunDirWriter
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import Trainer, init_weights


def versions() -> dict[str, str]:
    import numpy

    import cnnlab

    info = {"cnnlab": cnnlab.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cuda"] = str(torch.version.cuda)
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def default_run_dir(name: str | None = None, root: str | Path = "runs") -> Path:
    return Path(root) / (name or time.strftime("%Y%m%d-%H%M%S"))


def check_writable(run_dir: Path) -> None:
    """Fail before any work if the run directory cannot be created or written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".cnnlab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run directory {run_dir} is not writable ({exc.strerror or exc}); "
                          f"choose another --run-dir") from exc


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} has no config.json; --resume needs the directory of an earlier run") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); the run cannot be resumed") from exc


def data_for(config: TrainConfig, device: torch.device):
    """Train and test batch iterators, on ``device``, sized for the model."""
    from cnnlab.data import get_spec, load_split
    from cnnlab.data.loader import BatchIterator
    from cnnlab.models import get_model_info

    spec = get_spec(config.dataset)
    resize = config.resize or get_model_info(config.model).input_size
    train_x, train_y = load_split(config.dataset, "train", config.data_dir)
    test_x, test_y = load_split(config.dataset, "test", config.data_dir)
    if config.train_limit:
        train_x, train_y = train_x[:config.train_limit], train_y[:config.train_limit]
    if config.test_limit:
        test_x, test_y = test_x[:config.test_limit], test_y[:config.test_limit]
    train = BatchIterator(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed, device=device,
                          resize=resize)
    test = BatchIterator(test_x, test_y, config.eval_batch_size, device=device, resize=resize)
    return spec, train, test, resize


def build_trainer(config: TrainConfig, device: torch.device, callbacks: Sequence[Callback] = ()) -> Trainer:
    from cnnlab.models import create
    from cnnlab.optim import build_optimizer, build_scheduler
    from cnnlab.train.fast import FastStep, plan_speed

    spec, train, test, resize = data_for(config, device)
    torch.manual_seed(config.seed)
    model = create(config.model, num_classes=len(spec.classes), in_channels=spec.image_shape[0],
                   **config.model_options)
    init_weights(model, config.init)
    model.to(device)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, len(train))
    extra = {"model": config.model, "model_options": dict(config.model_options),
             "num_classes": len(spec.classes), "in_channels": spec.image_shape[0], "dataset": config.dataset,
             "classes": list(spec.classes), "input_size": resize, "config": config.to_dict()}
    plan = plan_speed(device, config.compile, config.precision)
    loss_fn = torch.nn.CrossEntropyLoss()
    fast = FastStep(model, loss_fn, plan, config.batch_size)
    trainer = Trainer(model, optimizer, train, test, epochs=config.epochs, device=device, scheduler=scheduler,
                      loss_fn=loss_fn, callbacks=callbacks, points_per_epoch=config.points_per_epoch,
                      checkpoint_extra=extra, forward_backward=fast.forward_backward, autocast=fast.autocast)
    trainer.speed_plan = plan
    return trainer


def train(config: TrainConfig | None = None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True, out: TextIO | None = None, callbacks: Sequence[Callback] = (),
          epochs: int | None = None) -> dict[str, Any]:
    """Run (or resume) a training run and write its run directory; returns the final numbers.

    ``resume`` is the directory of an earlier run: its config.json and checkpoint.pt are read
    and training continues exactly where it stopped (``epochs`` may extend it).
    """
    from cnnlab.device import resolve_device

    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        saved = read_run_config(run_dir)
        config = TrainConfig.from_dict(saved["config"])
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    config = (config or TrainConfig())
    if epochs is not None:
        config.epochs = epochs
    config.validate()
    device = resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        check_writable(run_dir)
        if resume is None and (run_dir / "checkpoint.pt").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run; "
                              f"continue it with --resume {run_dir} or choose another --name/--run-dir")
    cbs: list[Callback] = []
    if progress:
        cbs.append(ProgressBar())
    cbs.append(EpochPrinter(out))
    if run_dir is not None:
        cbs.append(RunDirWriter(run_dir))
    cbs.extend(callbacks)
    trainer = build_trainer(config, device, cbs)
    if ckpt is not None:
        if ckpt.get("model") != config.model:
            raise CheckpointError(f"checkpoint in {run_dir} is for model {ckpt.get('model')!r}, "
                                  f"but the run's config says {config.model!r}")
        trainer.load_checkpoint(ckpt)
    if run_dir is not None:
        write_json(run_dir / "config.json", {
            "config": config.to_dict(), "device": str(device), "versions": versions(),
            "argv": sys.argv, "cwd": os.getcwd(), "threads": torch.get_num_threads(),
            "speed": trainer.speed_plan.describe(),
        })
    result = trainer.fit()
    if run_dir is not None:
        result["run_dir"] = str(run_dir)
    return result
