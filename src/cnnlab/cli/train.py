"""``cnnlab train``: the seed's recipe by default (LeNet, Fashion-MNIST, batch 256, SGD lr 0.9, 10 epochs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cnnlab.cli.common import add_command, add_data_flags
from cnnlab.distributed import DEFAULT_TIMEOUT_S
from cnnlab.errors import ConfigError


def parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs into a dict; values are read as JSON when they parse, else kept as strings."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"model option {pair!r} is not key=value (e.g. --option activation=relu)")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def _explicit(action_class):
    """An argparse action that also records that the user gave the flag, so a preset's value
    yields only to flags actually typed (defaults stay visible in --help): its destination in
    ``explicit_flags``, the flag as typed in ``typed_flags`` (for messages)."""

    class Explicit(action_class):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.explicit_flags = set(getattr(namespace, "explicit_flags", set())) | {self.dest}
            typed = list(getattr(namespace, "typed_flags", []))
            if option_string not in typed:
                typed.append(option_string)
            namespace.typed_flags = typed

    return Explicit


STORE = _explicit(argparse._StoreAction)
STORE_TRUE = _explicit(argparse._StoreTrueAction)
STORE_CONST = _explicit(argparse._StoreConstAction)
APPEND = _explicit(argparse._AppendAction)


def parse_list(text: str) -> list[str]:
    """``"crop,flip"`` -> ``["crop", "flip"]``; ``""`` or ``"none"`` -> ``[]``."""
    return [] if text.strip().lower() in ("", "none") else [t.strip() for t in text.split(",") if t.strip()]


def add_train_flags(p) -> None:
    """Flags that define a run (shared with commands that launch runs)."""
    from cnnlab.presets import PRESETS
    from cnnlab.inference import TTA_CHOICES
    from cnnlab.train.config import AUGMENTATIONS, OPTIMIZERS, SCHEDULES, TrainConfig
    from cnnlab.train.steps import CHANNELS_LAST_CHOICES, COMPILE_CHOICES, KERNEL_CHOICES, PRECISION_CHOICES

    d = TrainConfig()
    add_data_flags(p, action=STORE, no_verify_action=STORE_CONST)
    p.add_argument("--data", action=STORE, default=None, metavar="PATH",
                   help="your own data instead of --dataset: an image folder (one sub-folder per class, "
                        "optionally under train/ and test/ or val/), a .npz file (x_train, y_train, x_test, "
                        "y_test) or a folder of IDX files (see docs/data.md)")
    p.add_argument("--image-size", action=STORE, type=int, default=None, metavar="PIXELS",
                   help="side the images are converted to (default: the size most images share, else 28)")
    p.add_argument("--channels", action=STORE, type=int, default=None, choices=(1, 3),
                   help="1 (gray) or 3 (colour) (default: 1 if every image is gray, else 3)")
    p.add_argument("--val-fraction", action=STORE, type=float, default=d.val_fraction, metavar="F",
                   help="hold out this part of the training data (seeded, stratified) for validation: the "
                        "epochs report validation accuracy, the test split is scored once at the end")
    p.add_argument("--skip-bad-images", action=STORE_TRUE,
                   help="leave out (and count) unreadable or corrupt images instead of stopping at the first")
    p.add_argument("--preset", action=STORE, default=None, choices=sorted(PRESETS),
                   help="start from a named recipe (see README, 'Beyond LeNet'); flags you give override it")
    p.add_argument("--model", action=STORE, default=d.model, help="model name (see `cnnlab models`)")
    p.add_argument("--option", action=APPEND, default=[], metavar="KEY=VALUE",
                   help="model option, repeatable (e.g. --option activation=relu --option pooling=max)")
    p.add_argument("--epochs", action=STORE, type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", action=STORE, type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--eval-batch-size", action=STORE, type=int, default=d.eval_batch_size,
                   help="batch size for test accuracy")
    p.add_argument("--lr", action=STORE, type=float, default=d.lr, help="learning rate (the peak, with a schedule)")
    p.add_argument("--optimizer", action=STORE, default=d.optimizer, choices=OPTIMIZERS,
                   help="sgd (the book), adamw (decoupled weight decay, not on biases/norms) or adam")
    p.add_argument("--momentum", action=STORE, type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--nesterov", action=STORE_TRUE, help="Nesterov momentum (SGD with --momentum > 0)")
    p.add_argument("--tta", action=STORE, default=d.tta, choices=TTA_CHOICES,
                   help="test-time augmentation of the run's test evaluations (and later `cnnlab evaluate`): "
                        "flip scores each image with its mirror image too, flip-shift adds both moved a pixel "
                        "up-left and down-right")
    p.add_argument("--tta-flip", action=STORE_CONST, dest="tta", const="flip", help="the same as --tta flip")
    p.add_argument("--weight-decay", action=STORE, type=float, default=d.weight_decay, help="weight decay")
    p.add_argument("--schedule", action=STORE, default=d.schedule, choices=SCHEDULES,
                   help="learning-rate schedule, stepped every batch")
    p.add_argument("--warmup-epochs", action=STORE, type=float, default=d.warmup_epochs,
                   help="linear warm-up length in epochs (onecycle: its rising part, default a quarter of the run)")
    p.add_argument("--lr-step-epochs", action=STORE, type=int, default=d.lr_step_epochs,
                   help="step schedule: epochs between rate drops")
    p.add_argument("--lr-gamma", action=STORE, type=float, default=d.lr_gamma,
                   help="step schedule: factor of each drop")
    p.add_argument("--label-smoothing", action=STORE, type=float, default=d.label_smoothing,
                   help="cross-entropy label smoothing")
    p.add_argument("--augment", action=STORE, type=parse_list, default=d.augment, metavar="LIST",
                   help=f"comma-separated on-device augmentations from {', '.join(AUGMENTATIONS)} (or none)")
    p.add_argument("--crop-padding", action=STORE, type=int, default=d.crop_padding,
                   help="random crop: zero padding in pixels")
    p.add_argument("--erase-prob", action=STORE, type=float, default=d.erase_prob,
                   help="random erasing: probability per image")
    p.add_argument("--init", action=STORE, default=d.init, choices=["xavier", "default"],
                   help="weight initialisation: Xavier-uniform (the book) or PyTorch's default")
    p.add_argument("--seed", action=STORE, type=int, default=d.seed, help="random seed (same seed, same run)")
    p.add_argument("--device", action=STORE, default=d.device,
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--train-limit", action=STORE, type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", action=STORE, type=int, default=None, help="use only the first N test images")
    p.add_argument("--compile", action=STORE, default=d.compile, choices=COMPILE_CHOICES,
                   help="torch.compile the training step (auto: off, since a cold compile costs the "
                        "10-epoch recipe more than it saves on CPU and GPU alike; on: compile, with CUDA graphs on GPUs); falls back to plain PyTorch if it cannot compile")
    p.add_argument("--precision", action=STORE, default=d.precision, choices=PRECISION_CHOICES,
                   help="precision (auto: bf16 on CUDA GPUs that support it, and for the LeNet kernel on "
                        "CPUs with native bf16; else fp32)")
    p.add_argument("--kernel", action=STORE, default=d.kernel, choices=KERNEL_CHOICES,
                   help="hand-fused CPU training step for LeNet-shaped networks (auto: wherever it applies; "
                        "off: PyTorch's own layers)")
    p.add_argument("--channels-last", action=STORE, default=d.channels_last, choices=CHANNELS_LAST_CHOICES,
                   help="NHWC convolutions (auto: on CPUs, where they measured 1.25-1.75x faster per step)")
    p.add_argument("--tensorboard", action=STORE_TRUE,
                   help="also write TensorBoard event files into the run directory's tb/ "
                        "(needs pip install 'cnnlab[tensorboard]'; see docs/watch-export.md)")


FLAG_FIELDS = ("model", "epochs", "batch_size", "eval_batch_size", "lr", "optimizer", "momentum", "nesterov",
               "weight_decay", "schedule", "warmup_epochs", "lr_step_epochs", "lr_gamma", "label_smoothing",
               "augment", "crop_padding", "erase_prob", "init", "seed", "device", "train_limit", "test_limit",
               "compile", "precision", "kernel", "channels_last", "tta", "tensorboard", "data", "image_size",
               "channels", "val_fraction", "skip_bad_images")


def config_from_args(args):
    """The run's TrainConfig: the book's defaults, then the preset's settings, then the flags typed."""
    from cnnlab.presets import get_preset
    from cnnlab.train.config import TrainConfig

    settings = {name: getattr(args, name) for name in FLAG_FIELDS}
    settings.update(dataset=args.dataset, data_dir=args.data_dir, verify=args.verify is not False,
                    model_options=parse_options(args.option))
    preset = getattr(args, "preset", None)
    if preset:
        explicit = getattr(args, "explicit_flags", set())
        chosen = dict(get_preset(preset).settings)
        if "model" in explicit:  # another model: the preset's options were for its own model
            chosen.pop("model_options", None)
        chosen["model_options"] = {**chosen.get("model_options", {}), **settings["model_options"]}
        for name in FLAG_FIELDS:
            if name in explicit:
                chosen[name] = settings[name]
        settings = {**settings, **chosen, "preset": preset}
    return TrainConfig(**settings)


def register(subparsers) -> None:
    p = add_command(subparsers, "train", "train a model (default: the book's LeNet recipe on Fashion-MNIST)")
    add_train_flags(p)
    p.add_argument("--name", action=STORE, default=None, help="run name; the run directory is runs/<name> (default: a timestamp)")
    p.add_argument("--run-dir", action=STORE, default=None, help="run directory (overrides --name)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its directory with its saved settings: only "
                        "--epochs (to extend it), --data-dir (where the data is now), --device and the output "
                        "flags (--no-progress, --profile, --nproc, --dist-timeout) may be given")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch still)")
    p.add_argument("--profile", action="store_true",
                   help="after training, print where the time went (start-up, data, first step, steps, "
                        "evaluation, writes) and write profile.txt and a torch.profiler trace.json of 10 "
                        "steady-state steps into the run directory")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel through torchrun: "
                        "one GPU each with NCCL, or gloo on the CPU); --batch-size stays the global batch")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="distributed runs: how long a process waits for its peers before stopping with an "
                        f"error (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(func=run)


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` with its ``--nproc N`` / ``--nproc=N`` removed (what each launched process runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def check_before_launch(args) -> None:
    """What every process would refuse, refused once here: otherwise each of N workers prints the
    same error among torchrun's log lines."""
    from pathlib import Path

    from cnnlab.distributed import check_timeout, split_batch_size
    from cnnlab.train.checkpoint import load_checkpoint
    from cnnlab.train.run import check_resume_epochs, run_config

    if isinstance(args.nproc, bool) or not isinstance(args.nproc, int) or args.nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {args.nproc!r}")
    if args.dist_timeout is not None:
        check_timeout(args.dist_timeout)
    if args.resume:
        check_resume_flags(args)
        typed = getattr(args, "explicit_flags", set())
        config = run_config(resume=args.resume, epochs=args.epochs if "epochs" in typed else None)
        if "epochs" in typed:
            check_resume_epochs(config, load_checkpoint(Path(args.resume) / "checkpoint.pt"), args.resume)
    else:
        config = config_from_args(args)
    config.validate()
    if config.tensorboard:
        from cnnlab.train.tensorboard import require_tensorboard

        require_tensorboard()
    split_batch_size(config.batch_size, args.nproc)


def launch(args) -> int:
    """``--nproc N``: run this same command in N processes through torchrun's launcher."""
    from cnnlab.distributed import LaunchInterrupted, launch as launch_processes, world_size_from_env
    from cnnlab.train.run import default_run_dir

    if world_size_from_env() > 1:
        raise ConfigError("--nproc launches processes itself; under torchrun leave it out")
    check_before_launch(args)
    argv = without_nproc(args.argv)
    run_dir = args.resume or args.run_dir
    if run_dir is None:  # chosen once here, so every process agrees on it
        run_dir = str(default_run_dir(args.name))
        argv += ["--run-dir", run_dir]
    with run_dir_lock(args, run_dir, share_with_children=True):   # held here for every worker
        try:
            return launch_processes(args.nproc, argv, run_dir)  # rank 0 prints the run directory
        except LaunchInterrupted as exc:
            print(f"interrupted; {checkpoint_on_disk(run_dir)}", file=sys.stderr)
            return 128 + exc.signum


def checkpoint_on_disk(run_dir) -> str:
    """What a distributed run interrupted in the launcher leaves, read from the file itself."""
    from pathlib import Path

    from cnnlab.errors import CnnlabError
    from cnnlab.train.checkpoint import load_checkpoint

    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return "no checkpoint had been written yet: start the run again"
    try:
        state = load_checkpoint(path)["state"]
        where = f"epoch {int(state['epoch'])}" + (f", batch {int(state['step'])}" if state["step"] else "")
    except (CnnlabError, KeyError, TypeError, ValueError):
        where = "its last save"
    return f"the checkpoint in {run_dir} (after {where}) is kept: continue with `cnnlab train --resume {run_dir}`"


def run_dir_lock(args, run_dir, share_with_children: bool = False):
    """The run directory's lock (:mod:`cnnlab.runlock`), taken by the process that writes it: rank 0,
    or the ``--nproc`` launcher for all its workers."""
    import contextlib
    from pathlib import Path

    from cnnlab import runlock
    from cnnlab.distributed import is_main_process

    if not is_main_process():
        return contextlib.nullcontext()
    fix = "wait for it to finish before resuming it" if args.resume else \
        "wait for it to finish, or choose another --name/--run-dir"
    if Path(run_dir).is_file():   # --resume RUN/checkpoint.pt
        run_dir = Path(run_dir).parent
    return runlock.hold(run_dir, fix=fix, share_with_children=share_with_children)


def interrupted_line(exc, run_dir) -> str:
    """The Ctrl-C line: where training stopped and what the checkpoint on disk holds."""
    resume = f"continue with `cnnlab train --resume {run_dir}`"
    if exc.saved_at is None:
        return f"interrupted ({exc}) before the first checkpoint was written; start the run again"
    if exc.saved_at == exc.stopped_at:
        return f"interrupted ({exc}); checkpoint saved: {resume}"
    epoch, step = exc.saved_at
    at = f"epoch {epoch}, batch {step}" if step else f"epoch {epoch}"
    return f"interrupted ({exc}); the checkpoint kept is the one after {at}: {resume}"


def check_name(name: str | None) -> None:
    """``--name`` is one folder inside runs/; a path in it (../../x) would write anywhere."""
    if name is None:
        return
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators):
        raise ConfigError(f"--name {name!r} must be a plain folder name inside runs/ (no '/' and not '..'); "
                          f"use --run-dir to put the run anywhere else")


RESUME_FLAGS = ("--epochs", "--data-dir", "--device")
"""Flags a resumed run takes besides the output ones: more epochs, where the data is now, and the device
to go on with (a run started on a GPU machine can finish on a laptop)."""


def check_resume_flags(args) -> None:
    """``--resume`` continues a run with its saved settings: refuse typed flags that would change them
    (they used to be ignored without a word)."""
    changing = [flag for flag in getattr(args, "typed_flags", []) if flag not in RESUME_FLAGS]
    if changing:
        raise ConfigError(f"--resume continues {args.resume} with its saved settings; {', '.join(changing)} "
                          f"cannot change (start a new run, or leave {'it' if len(changing) == 1 else 'them'} out)")


def profile_callbacks(args, run_dir, startup: float | None) -> list:
    """``--profile``: the report of where the run's time went (rank 0 prints and writes it)."""
    from cnnlab.distributed import is_main_process
    from cnnlab.train.profile import ProfileReport

    return [ProfileReport(run_dir, startup=startup, show=is_main_process())] if args.profile else []


def run(args) -> int:
    from cnnlab.train.profile import process_age
    from cnnlab.models import get_model_info
    from cnnlab.data import get_spec
    from cnnlab.train import Interrupted, train
    from cnnlab.train.run import default_run_dir

    from cnnlab import runlock
    from cnnlab.distributed import is_main_process

    check_name(args.name)
    if args.nproc is not None and args.nproc != 1:
        return launch(args)
    progress = not args.no_progress
    timeout = {} if args.dist_timeout is None else {"dist_timeout": args.dist_timeout}
    startup = process_age() if args.profile else None
    run_dir = args.resume or args.run_dir or default_run_dir(args.name)
    profile = profile_callbacks(args, run_dir, startup)   # from here on, its table counts the time
    launched = runlock.held_by_parent(run_dir)  # a worker of `--nproc`: its launcher speaks for all
    try:
        with run_dir_lock(args, run_dir):
            if args.resume:
                typed = getattr(args, "explicit_flags", set())
                check_resume_flags(args)
                result = train(resume=args.resume, progress=progress,
                               epochs=args.epochs if "epochs" in typed else None,
                               data_dir=args.data_dir, device=args.device if "device" in typed else None,
                               callbacks=profile,
                               **timeout)
            else:
                config = config_from_args(args).validate()
                get_model_info(config.model)
                get_spec(config.dataset)
                result = train(config, run_dir=run_dir, progress=progress, callbacks=profile, **timeout)
    except (Interrupted, KeyboardInterrupt) as exc:
        if launched:
            return 130
        if isinstance(exc, KeyboardInterrupt):
            raise
        if is_main_process():
            print(interrupted_line(exc, run_dir), file=sys.stderr)
        return 130
    if is_main_process():
        print(f"run directory: {result['run_dir']}")
    return 0
