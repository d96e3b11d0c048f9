"""A whole training run: data, model, optimizer, engine and the run directory, from a TrainConfig.

This is what ``cnnlab train`` calls; it is a library function so notebooks and scripts get the
same runs (and the same files) as the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

from cnnlab import distributed
from cnnlab.distributed import DistributedContext
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.fileio import write_json
from cnnlab.train.callbacks import Callback, EpochPrinter, ProgressBar, RunDirWriter
from cnnlab.train.checkpoint import load_checkpoint, run_reference
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


def check_writable(run_dir: Path, flag: str = "--run-dir") -> None:
    """Fail before any work if the run directory cannot be created or written (``flag`` chose it)."""
    from cnnlab.fileio import probe_writable

    try:
        probe_writable(run_dir)
    except OSError as exc:
        raise ConfigError(f"run directory {run_dir} is not writable ({exc.strerror or exc}); "
                          f"choose another {flag}") from exc


def check_run(config: TrainConfig) -> TrainConfig:
    """The config's own checks, then those that need the world: the model and dataset exist, the crop
    padding fits the model's input, the model with its options builds for the dataset's images (on the
    meta device: no weights, no time) and the device is there, so a bad setting fails before any data is
    read.  Returns ``config``."""
    from cnnlab.data import get_spec
    from cnnlab.device import resolve_device
    from cnnlab.models import get_model_info
    from cnnlab.models.registry import check_model
    from cnnlab.train.fast import check_speed_settings

    config.validate()
    size = config.resize or get_model_info(config.model).input_size
    spec = get_spec(config.dataset)
    if config.crop_padding > size:
        raise ConfigError(f"crop padding {config.crop_padding} is more than the {size}-pixel image it pads; "
                          f"use at most {size} (a few pixels is usual)")
    check_speed_settings(compile=config.compile, precision=config.precision, kernel=config.kernel,
                         channels_last=config.channels_last)
    check_model(config.model, config.model_options, num_classes=len(spec.classes), in_channels=spec.image_shape[0])
    resolve_device(config.device)
    return config


def with_located_data(config: TrainConfig) -> TrainConfig:
    """``config`` with ``data_dir`` the absolute folder its data is in (found through --data-dir,
    $CNNLAB_DATA, the cache, a system copy or a download), so evaluating or inspecting the run later
    reads the same files without that variable."""
    from cnnlab.data.sources import locate

    location = locate(config.dataset, config.data_dir, verify=config.verify)
    return dataclasses.replace(config, data_dir=os.path.abspath(location.folder))


def run_config(config: TrainConfig | None = None, *, resume: str | Path | None = None, epochs: int | None = None,
               data_dir: str | Path | None = None, device: str | None = None) -> TrainConfig:
    """The settings a run trains with: ``config`` (default: the book's recipe), or those saved in the run
    directory ``resume``; then ``epochs``, ``data_dir`` and ``device`` where given, with ``data_dir``
    made absolute."""
    if resume is not None:
        config = TrainConfig.from_run(run_reference(resume, "--resume").folder)
    config = config or TrainConfig()
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    if device is not None:
        config = dataclasses.replace(config, device=str(device))
    if config.data_dir is not None:
        config = dataclasses.replace(config, data_dir=os.path.abspath(os.path.expanduser(config.data_dir)))
    return config


RESUMABLE = ("epochs", "data_dir", "device")
"""The settings a resumed run may change: more epochs, where the data is now, where to go on."""


def load_run(resume: str | Path, **changes: Any) -> tuple[Path, TrainConfig, dict[str, Any]]:
    """The run directory, settings and checkpoint of a run to resume, all checked before any work: the
    checkpoint has every field a resume restores, and it is this run's (its saved settings are the run's
    config.json, up to the resumable ones).  ``changes`` are run_config's ``epochs``, ``data_dir``, ``device``."""
    ref = run_reference(resume, "--resume")
    if ref.checkpoint.name != "checkpoint.pt":
        raise ConfigError(f"--resume {resume}: give the run directory or its checkpoint.pt, not another file")
    config = run_config(resume=ref.folder, **changes)
    ckpt = load_checkpoint(ref.checkpoint)
    missing = [f for f in ("model", "model_state", "optimizer_state", "state", "rng", "config") if f not in ckpt]
    missing += [f"state.{f}" for f in ("sums", "history", "train_seconds", "examples_seen")
                if "state" in ckpt and f not in ckpt["state"]]
    if missing:
        raise CheckpointError(f"checkpoint {ref.checkpoint} lacks {', '.join(missing)}, so the run cannot go on "
                              f"from it; start a new run")
    saved = TrainConfig.from_dict(ckpt["config"]).to_dict()
    current = TrainConfig.from_run(ref.folder).to_dict()
    differ = [k for k in saved if k not in RESUMABLE and saved[k] != current[k]]
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} (config.json: {current[k]!r})" for k in differ)
        raise CheckpointError(f"checkpoint {ref.checkpoint} belongs to another run: its settings differ from "
                              f"{ref.folder / 'config.json'}'s: {shown}; put the run's own checkpoint.pt back or "
                              f"start a new run")
    if ckpt["model"] != config.model:
        raise CheckpointError(f"checkpoint in {ref.folder} is for model {ckpt['model']!r}, "
                              f"but the run's config says {config.model!r}")
    check_resume_epochs(config, ckpt, ref.folder)
    return ref.folder, config, ckpt


def check_resume_epochs(config: TrainConfig, ckpt: dict[str, Any], run_dir) -> None:
    """A resumed run cannot end before the epochs its checkpoint already holds."""
    done = ckpt.get("state", {}).get("epoch") if isinstance(ckpt.get("state"), dict) else None
    if isinstance(done, int) and config.epochs < done:
        raise ConfigError(f"--epochs {config.epochs} is fewer than the {done} epochs {run_dir} has already "
                          f"trained; pass --epochs {done} or more to resume it (or leave --epochs out)")


def data_for(config: TrainConfig, device: torch.device, dist: DistributedContext | None = None):
    """Train and test batch iterators, on ``device``, sized for the model; in a distributed run,
    this process's shards (``config.batch_size`` is the global batch, split over the processes)."""
    from cnnlab.data import get_spec, load_split
    from cnnlab.data.loader import BatchIterator
    from cnnlab.models import get_model_info

    spec = get_spec(config.dataset)
    resize = config.resize or get_model_info(config.model).input_size
    train_x, train_y = load_split(config.dataset, "train", config.data_dir, verify=config.verify)
    test_x, test_y = load_split(config.dataset, "test", config.data_dir, verify=config.verify)
    if config.train_limit:
        train_x, train_y = train_x[:config.train_limit], train_y[:config.train_limit]
    if config.test_limit:
        test_x, test_y = test_x[:config.test_limit], test_y[:config.test_limit]
    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    batch_size = dist.check_batch_size(config.batch_size) if dist is not None else config.batch_size
    train = BatchIterator(train_x, train_y, batch_size, shuffle=True, seed=config.seed, device=device,
                          resize=resize, rank=rank, world_size=world_size)
    test = BatchIterator(test_x, test_y, config.eval_batch_size, device=device, resize=resize,
                         rank=rank, world_size=world_size, even_shards=False)
    return spec, train, test, resize


def build_trainer(config: TrainConfig, device: torch.device, callbacks: Sequence[Callback] = (),
                  dist: DistributedContext | None = None) -> Trainer:
    from cnnlab.models import create
    from cnnlab.optim import build_optimizer, build_scheduler, constant_rate
    from cnnlab.inference import tta_forward
    from cnnlab.train.fast import FastStep, GraphStep, plan_speed

    build_start = time.perf_counter()
    spec, train, test, resize = data_for(config, device, dist)
    data_seconds = time.perf_counter() - build_start
    torch.manual_seed(config.seed)
    model = create(config.model, num_classes=len(spec.classes), in_channels=spec.image_shape[0],
                   **config.model_options)
    init_weights(model, config.init)
    model.to(device)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # A whole step can be one CUDA graph when nothing in it changes from step to step on the host.
    constant = constant_rate(config.schedule, config.warmup_epochs)
    graphable = dist is None and config.optimizer == "sgd" and constant and not config.augment
    plan = plan_speed(device, config.compile, config.precision, config.kernel, model=model, loss_fn=loss_fn,
                      distributed=dist is not None, channels_last=config.channels_last, graphable=graphable)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)   # before the optimizer and DDP see the parameters
    optimizer = build_optimizer(model, config.optimizer, config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov, scheduled=not constant)
    scheduler = build_scheduler(optimizer, config.schedule, config.epochs, len(train),
                                warmup_epochs=config.warmup_epochs, lr_step_epochs=config.lr_step_epochs,
                                lr_gamma=config.lr_gamma)
    augment = None
    if config.augment:
        from cnnlab.augment import BatchAugment

        augment = BatchAugment(config.augment, config.seed, crop_padding=config.crop_padding,
                               erase_prob=config.erase_prob)
    extra = {"model": config.model, "model_options": dict(config.model_options),
             "num_classes": len(spec.classes), "in_channels": spec.image_shape[0], "dataset": config.dataset,
             "classes": list(spec.classes), "input_size": resize, "config": config.to_dict()}
    trained = dist.wrap(model) if dist is not None else model
    fast = FastStep(trained, loss_fn, plan, train.batch_size)
    trainer = Trainer(trained, optimizer, train, test, epochs=config.epochs, device=device, scheduler=scheduler,
                      callbacks=callbacks, points_per_epoch=config.points_per_epoch, checkpoint_extra=extra,
                      reduce=dist.all_reduce_sum if dist is not None else None, loss_fn=loss_fn, augment=augment,
                      forward_backward=fast.forward_backward, autocast=fast.autocast,
                      eval_forward=tta_forward(fast.eval_forward or model, config.tta),
                      fused_step=(GraphStep(trained, fast.forward_loss, optimizer, train.batch_size)
                                  if plan.cuda_graphs and not plan.compile else None),
                      divergence_limit=100 * math.log(len(spec.classes)))
    if fast.kernel is not None:   # whether the kernel found its C passes is known once it is built
        missing = None if fast.kernel.native else f"the kernel's C passes are unavailable: {fast.kernel.native_note}"
        plan = dataclasses.replace(plan, kernel_c=missing is None,
                                   note="; ".join(filter(None, [plan.note, missing])))
    trainer.speed_plan = plan
    trainer.timings.update(data=data_seconds, build=time.perf_counter() - build_start - data_seconds)
    if augment is not None:
        # Each batch's augmentation is seeded by where it sits in the run, so resuming replays it exactly.
        augment.position = lambda: (trainer.state.epoch, trainer.state.step)
    return trainer


def train(config: TrainConfig | None = None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True, out: TextIO | None = None, callbacks: Sequence[Callback] = (),
          epochs: int | None = None, data_dir: str | Path | None = None, device: str | None = None,
          dist_timeout: float = distributed.DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run (or resume) a training run and write its run directory; returns the final numbers.

    ``resume`` is the directory of an earlier run: its config.json and checkpoint.pt are read
    and training continues exactly where it stopped (``epochs`` may extend it, ``data_dir`` says
    where the data is now, ``device`` where to go on: a run started on a GPU can finish on a CPU).
    The run's config records ``data_dir`` as an absolute path, so the run can be resumed or
    inspected from any working directory.

    Started by torchrun (WORLD_SIZE > 1), every process calls this: they join one process group
    (``dist_timeout`` bounds every wait for a peer), train one model with DDP, and only rank 0
    prints and writes the run directory; ``callbacks`` run in every process.
    """
    ckpt = None
    if resume is not None:
        run_dir, config, ckpt = load_run(resume, epochs=epochs, data_dir=data_dir, device=device)
    else:
        config = run_config(config, epochs=epochs, data_dir=data_dir, device=device)
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not str(run_dir).strip():
            raise ConfigError("the run directory is empty; give a folder (or none, for no run directory)")
        if ckpt is None and (run_dir / "checkpoint.pt").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run; "
                              f"continue it with --resume {run_dir} or choose another --name/--run-dir")
    config = with_located_data(check_run(config))
    dist = distributed.setup(config.device, dist_timeout)
    try:
        result = _train(config, run_dir=run_dir, ckpt=ckpt, progress=progress, out=out,
                        callbacks=callbacks, dist=dist, device=dist.device if dist is not None else None)
    except BaseException as exc:
        distributed.teardown()
        lost = distributed.lost_peer_error(dist, exc) if dist is not None and isinstance(exc, Exception) else None
        if lost is not None:
            raise lost from exc
        raise
    distributed.teardown(wait_for_peers=True)
    return result


def _train(config: TrainConfig, *, run_dir: Path | None, ckpt: dict[str, Any] | None, progress, out, callbacks,
           dist: DistributedContext | None, device: torch.device | None) -> dict[str, Any]:
    """Train a checked config (``ckpt``: the checked checkpoint to go on from).  The run directory is
    created only once the data is read, the model built and the checkpoint restored: a run that cannot
    start leaves nothing behind."""
    from cnnlab.device import resolve_device

    main = dist is None or dist.is_main
    device = device or resolve_device(config.device)
    cbs: list[Callback] = []
    if progress:  # every rank keeps the bar's cadence: its running metrics are an all-reduce
        cbs.append(ProgressBar(show=main))
    if main:
        cbs.append(EpochPrinter(out))
    if run_dir is not None and main:
        cbs.append(RunDirWriter(run_dir, checkpoint_on_interrupt=dist is None))
    cbs.extend(callbacks)
    trainer = build_trainer(config, device, cbs, dist)
    if ckpt is not None:
        try:
            trainer.load_checkpoint(ckpt)
        except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
            # load_run checked each field; what is left is a state that does not fit the model's parameters
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"checkpoint {ckpt.get('path')} does not fit the run ({first[:120]}); the file "
                                  f"is damaged: use another checkpoint or start a new run") from exc
    if run_dir is not None and main:
        check_writable(run_dir)
        write_json(run_dir / "config.json", {
            "config": config.to_dict(), "device": str(device), "versions": versions(),
            "argv": sys.argv, "cwd": os.getcwd(), "threads": torch.get_num_threads(),
            "world_size": dist.world_size if dist is not None else 1,
            "speed": trainer.speed_plan.describe(),
        })
    if main and trainer.speed_plan.note:
        # A fast path asked for (--kernel on, --compile on, ...) or expected (the kernel's C passes) is not
        # in use: say why once, on stderr, so the book's lines on stdout stay as they are.
        print(f"note: {trainer.speed_plan.note}", file=sys.stderr, flush=True)
    result = trainer.fit()
    if run_dir is not None:
        result["run_dir"] = str(run_dir)
    return result
