"""A whole training run: data, model, optimizer, engine and the run directory, from a TrainConfig.

This is what ``cnnlab train`` calls; it is a library function so notebooks and scripts get the
same runs (and the same files) as the command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy
import torch

import cnnlab
from cnnlab import distributed, openmp
from cnnlab.augment import BatchAugment
from cnnlab.data import get_spec
from cnnlab.data.dataset import check_data_settings, read_dataset
from cnnlab.data.loader import BatchIterator
from cnnlab.data.sources import Location, locate
from cnnlab.device import resolve_device
from cnnlab.distributed import DistributedContext
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.fileio import probe_writable, write_json
from cnnlab.inference import tta_forward
from cnnlab.models import create, get_model_info, sized_options
from cnnlab.models.registry import check_model
from cnnlab.optim import build_scheduler
from cnnlab.train.callbacks import Callback, DamagedSummary, EpochPrinter, ProgressBar, RunDirWriter, read_summary
from cnnlab.train.checkpoint import RunReference, run_reference
from cnnlab.train.config import MAX_EPOCHS, TrainConfig
from cnnlab.train.engine import RunInfo, Trainer, init_weights
from cnnlab.train.steps import choose_step
from cnnlab.train.tensorboard import TensorBoardLogger, check_log_dir, require_tensorboard
from cnnlab.trained import TrainedRun


def versions() -> dict[str, str]:
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
    try:
        probe_writable(run_dir)
    except OSError as exc:
        raise ConfigError(f"run directory {run_dir} is not writable ({exc.strerror or exc}); "
                          f"choose another {flag}") from exc


def check_run(config: TrainConfig) -> TrainConfig:
    """The config's own checks, then those that need the world: the model and dataset exist, the crop
    padding fits the model's input, the model with its options builds for the data's images (on the
    meta device: no weights, no time), the device is there and an optional extra the run needs is
    installed, so a bad setting fails before any data is read.  Returns ``config``.  (:func:`prepare`
    runs it once per run, and resolves the device.)"""
    config.validate()
    check_data_settings(config.image_size, config.channels, config.val_fraction)
    size = config.resize or (config.image_size if config.data is not None and config.image_size else None) \
        or get_model_info(config.model).input_size
    if config.crop_padding > size:
        raise ConfigError(f"crop padding {config.crop_padding} is more than the {size}-pixel image it pads; "
                          f"use at most {size} (a few pixels is usual)")
    if config.data is not None:   # classes and channels are known once the data is read
        check_model(config.model, config.model_options, num_classes=2, in_channels=config.channels or 1)
    else:
        spec = get_spec(config.dataset)
        check_model(config.model, config.model_options, num_classes=len(spec.classes),
                    in_channels=spec.image_shape[0])
    if config.tensorboard:
        require_tensorboard()
    return config


def run_config(config: TrainConfig | None = None, *, epochs: int | None = None,
               data_dir: str | Path | None = None, device: str | None = None) -> TrainConfig:
    """The settings a run trains with: ``config`` (default: the book's recipe), then ``epochs``,
    ``data_dir`` and ``device`` where given, with ``data_dir`` and ``data`` made absolute."""
    config = config or TrainConfig()
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    if device is not None:
        config = dataclasses.replace(config, device=str(device))
    if config.data_dir is not None:
        config = dataclasses.replace(config, data_dir=os.path.abspath(os.path.expanduser(config.data_dir)))
    if config.data is not None:
        config = dataclasses.replace(config, data=os.path.abspath(os.path.expanduser(config.data)))
    return config


RESUMABLE = ("epochs", "data_dir", "device")
"""The settings a resumed run may change: more epochs, where the data is now, where to go on."""


def load_run(resume: str | Path | RunReference, **changes: Any) -> tuple[Path, TrainConfig, TrainedRun]:
    """The run directory, settings and checkpoint of a run to resume, all checked before any work: the
    checkpoint has every field a resume restores, and it is this run's (its saved settings are the run's
    config.json, up to the resumable ones).  ``changes`` are run_config's ``epochs``, ``data_dir``, ``device``."""
    ref = resume if isinstance(resume, RunReference) else run_reference(resume, "--resume")
    if ref.checkpoint.name != "checkpoint.pt":
        raise ConfigError(f"--resume {ref.checkpoint}: give the run directory or its checkpoint.pt, not another file")
    current = TrainConfig.from_run(ref.folder)
    config = run_config(current, **changes)
    run = TrainedRun.open(ref, "--resume", resumable=True)
    saved, current = run.config.to_dict(), current.to_dict()
    # ``data``: own data's place, which --data-dir moves (config.json may say so before the checkpoint does)
    differ = [k for k in saved if k not in RESUMABLE + ("data",) and saved[k] != current[k]]
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} (config.json: {current[k]!r})" for k in differ)
        raise CheckpointError(f"checkpoint {ref.checkpoint} belongs to another run: its settings differ from "
                              f"{ref.folder / 'config.json'}'s: {shown}; put the run's own checkpoint.pt back or "
                              f"start a new run")
    if run.model_name != config.model:
        raise CheckpointError(f"checkpoint in {ref.folder} is for model {run.model_name!r}, "
                              f"but the run's config says {config.model!r}")
    check_resume_epochs(config, run.ckpt, ref.folder)
    if config.data is not None:
        config = own_data_place(config, changes.get("data_dir"), current["data_dir"], ref.folder)
    return ref.folder, config, run


def own_data_place(config: TrainConfig, data_dir, saved_data_dir, run_dir: Path) -> TrainConfig:
    """A resumed run on its own data (``--data``), read from ``data_dir`` where given: where the data is now,
    as for a registry dataset.  DataError when the data is no longer where the run last read it."""
    if data_dir is not None:
        config = dataclasses.replace(config, data=config.data_dir, data_dir=saved_data_dir)
    if not os.path.exists(config.data):
        raise DataError(f"the run's data {config.data} is not there any more; if it moved, give its new place: "
                        f"`cnnlab train --resume {run_dir} --data-dir PATH`")
    return config


RESUMED_DATA = {"classes": "classes", "channels": "channels", "image_size": "image size", "splits": "split sizes"}
"""What a resumed run's data must share with the data its checkpoint was trained on."""


def check_resumed_data(saved: Any, now: dict[str, Any], run_dir) -> None:
    """DataError naming the data's place and what differs when a resumed run's data is not the data its
    checkpoint recorded (other classes, channels, size or split sizes): the checkpoint is fine, the data
    changed.  A checkpoint without a data record (an older run) is taken as it is."""
    if not isinstance(saved, dict):
        return
    differ = [f"{words} {now[key]} (the run's: {saved[key]})" for key, words in RESUMED_DATA.items()
              if key in saved and saved[key] != now[key]]
    if differ:
        raise DataError(f"the data in {now['location']} is not what {run_dir} trained on: {'; '.join(differ)[:300]}; "
                        f"point --data-dir at the run's own data, or start a new run on this data")


def check_resume_epochs(config: TrainConfig, ckpt: dict[str, Any], run_dir) -> None:
    """A resumed run cannot end before the epochs its checkpoint already holds."""
    done = ckpt.get("state", {}).get("epoch") if isinstance(ckpt.get("state"), dict) else None
    if isinstance(done, int) and config.epochs < done:
        raise ConfigError(f"--epochs {config.epochs} is fewer than the {done} epochs {run_dir} has already "
                          f"trained; pass --epochs {done} or more to resume it (or leave --epochs out)")


def model_input_size(config: TrainConfig, data_size: int) -> int:
    """The side the model sees (its input size): the config's ``resize`` (set through the Python API), else the data's own for the small models (those registered
    at 32 pixels or less: LeNet and the ``_mini`` zoo), else the model's own (the loader resizes)."""
    if config.resize:
        return config.resize
    own = get_model_info(config.model).input_size
    return data_size if own <= 32 else own


def data_for(prepared: "PreparedRun", device: torch.device, dist: DistributedContext | None = None,
             progress: bool = True):
    """The run's data (:func:`cnnlab.data.dataset.read_dataset`, from where it was found) and its batch
    iterators on ``device``,
    sized for the model: ``(data, train, held_out, test, size)``.  ``held_out`` is what each epoch is
    measured on (the validation split when there is one, else the test split); ``test`` is evaluated
    once at the end when a validation split exists (None otherwise).  In a distributed run, this
    process's shards (``config.batch_size`` is the global batch, split over the processes)."""
    config = prepared.config
    data = read_dataset(config, prepared.location, progress=progress)
    size = model_input_size(config, data.size)
    # The book's recipe feeds raw [0, 1] pixels; your own data, and registry data marked so (CIFAR-10's
    # photographs), is normalised with its training statistics.
    normalize = data.stats if data.source != "registry" or get_spec(data.name).normalized else None
    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    batch_size = dist.check_batch_size(config.batch_size) if dist is not None else config.batch_size
    train = BatchIterator(*data.train, batch_size, shuffle=True, seed=config.seed, device=device,
                          resize=size, normalize=normalize, rank=rank, world_size=world_size)

    def evaluation(split):
        return BatchIterator(*split, config.eval_batch_size, device=device, resize=size, normalize=normalize,
                             rank=rank, world_size=world_size, even_shards=False)

    test = evaluation(data.test) if data.test is not None else None
    if data.val is not None:
        return data, train, evaluation(data.val), test, size
    return data, train, test, None, size


def data_record(data) -> dict[str, Any]:
    """What a run trained on, as config.json and the checkpoint record it: where the data was read from,
    its content's fingerprint, classes, channels, image size and split sizes."""
    return {"source": data.source, "name": data.name, "location": data.location, "fingerprint": data.fingerprint,
            "classes": list(data.classes), "channels": data.channels, "image_size": data.size,
            "splits": {name: int(getattr(data, name)[1].shape[0]) for name in ("train", "val", "test")
                       if getattr(data, name) is not None}}


def build_trainer(prepared: "PreparedRun | TrainConfig", device: torch.device | None = None,
                  callbacks: Sequence[Callback] = (), dist: DistributedContext | None = None, progress: bool = False,
                  *, fixed_rate: bool | None = None) -> Trainer:
    """The run's Trainer: its data, model and training step (``choose_step``; ``fixed_rate`` as there),
    with ``callbacks`` in the order they are called.  A config is prepared first (:func:`prepare`)."""
    if isinstance(prepared, TrainConfig):
        prepared = prepare(prepared)
    config, device = prepared.config, device or prepared.device
    build_start = time.perf_counter()
    data, train, held_out, test, resize = data_for(prepared, device, dist, progress=progress)
    data_seconds = time.perf_counter() - build_start
    torch.manual_seed(config.seed)
    options = sized_options(config.model, config.model_options, resize)
    model = create(config.model, num_classes=len(data.classes), in_channels=data.channels, **options)
    init_weights(model, config.init)
    model.to(device)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    step = choose_step(config, model, device, loss_fn=loss_fn, batch_size=train.batch_size, dist=dist,
                       fixed_rate=fixed_rate, input_size=resize)
    scheduler = build_scheduler(step.optimizer, config.schedule, config.epochs, len(train),
                                warmup_epochs=config.warmup_epochs, lr_step_epochs=config.lr_step_epochs,
                                lr_gamma=config.lr_gamma)
    augment = (BatchAugment(config.augment, config.seed, crop_padding=config.crop_padding,
                            erase_prob=config.erase_prob) if config.augment else None)
    record = {"model": config.model, "model_options": options,
              "num_classes": len(data.classes), "in_channels": data.channels,
              "dataset": config.dataset if data.source == "registry" else data.name,
              "classes": list(data.classes), "image_shape": [data.channels, data.size, data.size],
              "splits": [name for name in ("train", "val", "test") if getattr(data, name) is not None],
              "input_size": resize, "config": config.to_dict(), "data": data_record(data),
              "normalize": [list(v) for v in train.normalize] if train.normalize is not None else None}
    run = RunInfo(record=record, notes=tuple(data.notes), data_seconds=data_seconds,
                  build_seconds=time.perf_counter() - build_start - data_seconds)
    val, test = (held_out, test) if data.val is not None else (None, held_out)
    return Trainer(step, train, test, val_batches=val, epochs=config.epochs, device=device, scheduler=scheduler,
                   callbacks=callbacks, reduce=dist.all_reduce_sum if dist is not None else None, augment=augment,
                   eval_forward=tta_forward(step.logits, config.tta),
                   divergence_limit=100 * math.log(max(len(data.classes), 2)), run=run)


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """A run checked and its data found, ready to train: nothing after :func:`prepare` checks or looks
    for anything again."""

    config: TrainConfig
    """The checked settings, with the data's folder (``data_dir``, or ``data``) absolute."""
    run_dir: Path | None
    device: torch.device
    location: Location | None
    """Where the registry dataset's files are, verified (None for --data, read from its path)."""
    resume: TrainedRun | None = None
    """The checked checkpoint a resumed run goes on from."""


def prepare(config: TrainConfig | None = None, *, run_dir: str | Path | None = None,
            resume: str | Path | RunReference | None = None, epochs: int | None = None,
            data_dir: str | Path | None = None, device: str | None = None) -> PreparedRun:
    """Check a run once and find its data once: ``config`` (default: the book's recipe) for a new run in
    ``run_dir``, or the run ``resume`` names with its saved settings (``epochs``, ``data_dir`` and
    ``device`` may change, as :data:`RESUMABLE` says).  The command line and :func:`train` both start here."""
    resumed = None
    if resume is not None:
        run_dir, config, resumed = load_run(resume, epochs=epochs, data_dir=data_dir, device=device)
    else:
        config = run_config(config, epochs=epochs, data_dir=data_dir, device=device)
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not str(run_dir).strip():
            raise ConfigError("the run directory is empty; give a folder (or none, for no run directory)")
        if resumed is None and (run_dir / "checkpoint.pt").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run; "
                              f"continue it with --resume {run_dir} or choose another --name/--run-dir")
    check_run(config)
    if run_dir is not None and config.tensorboard:
        check_log_dir(run_dir)
    chosen = resolve_device(config.device)
    location = None
    if config.data is None:   # the folder it is in, absolute: evaluating the run later reads the same files
        location = locate(config.dataset, config.data_dir, verify=config.verify)
        config = dataclasses.replace(config, data_dir=os.path.abspath(location.folder))
    return PreparedRun(config, run_dir, chosen, location, resumed)


def train(config: TrainConfig | PreparedRun | None = None, *, run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True, out: TextIO | None = None,
          callbacks: Sequence[Callback] = (), epochs: int | None = None, data_dir: str | Path | None = None,
          device: str | None = None, dist_timeout: float = distributed.DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run (or resume) a training run and write its run directory; returns the final numbers.

    ``config`` is a :class:`TrainConfig` (then the run is prepared here, see :func:`prepare`: ``run_dir``,
    ``resume``, ``epochs``, ``data_dir`` and ``device`` as there) or a :class:`PreparedRun`.
    ``resume`` is the directory of an earlier run: its config.json and checkpoint.pt are read
    and training continues exactly where it stopped (``epochs`` may extend it, ``data_dir`` says
    where the data is now, ``device`` where to go on: a run started on a GPU can finish on a CPU).
    The run's config records ``data_dir`` as an absolute path, so the run can be resumed or
    inspected from any working directory.

    Started by torchrun (WORLD_SIZE > 1), every process calls this: they join one process group
    (``dist_timeout`` bounds every wait for a peer), train one model with DDP, and only rank 0
    prints and writes the run directory; ``callbacks`` run in every process.
    """
    if isinstance(config, PreparedRun):
        prepared = config
    else:
        prepared = prepare(config, run_dir=run_dir, resume=resume, epochs=epochs, data_dir=data_dir, device=device)
    finished = finished_summary(prepared)
    if finished is not None:
        if distributed.is_main_process():
            done, folder = prepared.config.epochs, prepared.run_dir
            print(f"{folder} already finished its {done} epoch{'' if done == 1 else 's'}: nothing to train, and its files are left as they "
                  f"are; to train it further, pass more --epochs (cnnlab train --resume {folder} --epochs "
                  f"{min(2 * done, MAX_EPOCHS)})", file=out or sys.stdout, flush=True)
        return {**finished, "run_dir": str(prepared.run_dir)}
    dist = distributed.setup(prepared.config.device, dist_timeout)
    try:
        result = _train(prepared, progress=progress, out=out, callbacks=callbacks, dist=dist)
    except BaseException as exc:
        distributed.teardown()
        lost = distributed.lost_peer_error(dist, exc) if dist is not None and isinstance(exc, Exception) else None
        if lost is not None:
            raise lost from exc
        raise
    distributed.teardown(wait_for_peers=True)
    return result


def finished_summary(prepared: PreparedRun) -> dict[str, Any] | None:
    """What summary.json says of a resumed run with nothing left to train (its checkpoint holds all its
    epochs, and summary.json was written when it finished), so resuming it trains nothing and rewrites
    none of its files (config.json's command line, summary.json's timings).  None where there is work:
    epochs left, or a summary.json missing or unreadable (resuming writes it from the checkpoint)."""
    if prepared.resume is None or prepared.run_dir is None:
        return None
    state = prepared.resume.ckpt["state"]
    if int(state["epoch"]) < prepared.config.epochs or int(state["step"]) != 0:
        return None
    try:
        return read_summary(prepared.run_dir)
    except DamagedSummary:
        return None


def _train(prepared: PreparedRun, *, progress, out, callbacks, dist: DistributedContext | None) -> dict[str, Any]:
    """Train a prepared run (going on from its checked checkpoint, if any).  The run directory is
    created only once the data is read, the model built and the checkpoint restored: a run that cannot
    start leaves nothing behind."""
    config, run_dir = prepared.config, prepared.run_dir
    ckpt = prepared.resume.ckpt if prepared.resume is not None else None
    main = dist is None or dist.is_main
    device = dist.device if dist is not None else prepared.device
    cbs: list[Callback] = []
    if progress:  # every rank keeps the bar's cadence: its running metrics are an all-reduce
        cbs.append(ProgressBar(show=main))
    if main:
        cbs.append(EpochPrinter(out))
    if run_dir is not None and main:
        if config.tensorboard:
            # Before RunDirWriter: an epoch's events are on disk before the checkpoint that ends it.
            cbs.append(TensorBoardLogger(run_dir, config.to_dict()))
        cbs.append(RunDirWriter(run_dir, checkpoint_on_interrupt=dist is None))
    cbs.extend(callbacks)
    trainer = build_trainer(prepared, device, cbs, dist, progress=progress and main)
    if ckpt is not None:
        check_resumed_data(ckpt.get("data"), trainer.run.record["data"], run_dir)
    if main:
        for note in trainer.run.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
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
            "speed": trainer.step.reason, "omp_wait": openmp.chosen().describe(), "data": trainer.run.record["data"],
            "params": sum(p.numel() for p in trainer.step.module.parameters()),
        })
    if main:
        # What the step computes with and, where a path asked for or expected is not in use, why: on
        # stderr, so the book's lines on stdout stay as they are.
        print(f"speed: {trainer.step.reason}; threads={torch.get_num_threads()}, omp_wait={openmp.chosen().describe()}",
              file=sys.stderr, flush=True)
    result = trainer.fit()
    if run_dir is not None:
        result["run_dir"] = str(run_dir)
    return result
