"""``cnnlab train``: the book's recipe by default (LeNet, Fashion-MNIST, batch 256, SGD lr 0.9, 10 epochs)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from cnnlab import runlock
from cnnlab.cli.common import add_command, add_setting_flags, check_folder_name, output_folder
from cnnlab.distributed import (
    DEFAULT_TIMEOUT_S,
    LaunchInterrupted,
    check_launch,
    check_timeout,
    is_main_process,
    split_batch_size,
    world_size_from_env,
)
from cnnlab.distributed import launch as launch_processes
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.portable import process_age
from cnnlab.presets import PRESETS, get_preset
from cnnlab.train.checkpoint import load_checkpoint, run_reference
from cnnlab.train.config import TrainConfig, flag_fields, flag_name


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


def add_train_flags(p) -> None:
    """Flags that define a run (shared with commands that launch runs): --preset and --option, then one
    flag per TrainConfig setting (cnnlab.train.config.setting)."""
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="start from a named recipe (docs/training.md, 'Beyond LeNet'); flags you give override it")
    p.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="model option, repeatable (e.g. --option activation=relu --option pooling=max)")
    add_setting_flags(p)


def config_from_args(args):
    """The run's TrainConfig: the book's defaults, then the preset's settings, then the flags typed
    (a setting's flag left out is None)."""
    typed = {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
    settings: dict = {}
    if args.preset:
        settings = {**get_preset(args.preset).settings, "preset": args.preset}
        if "model" in typed:  # another model: the preset's options were for its own model
            settings.pop("model_options", None)
    settings["model_options"] = {**settings.get("model_options", {}), **parse_options(args.option)}
    return TrainConfig(**{**settings, **typed})


def register(subparsers) -> None:
    p = add_command(subparsers, "train", "train a model (default: the book's LeNet recipe on Fashion-MNIST)")
    add_train_flags(p)
    p.add_argument("--name", default=None, help="run name; the run directory is runs/<name> (default: a timestamp)")
    p.add_argument("--run-dir", default=None, help="run directory (overrides --name)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its directory (or its checkpoint.pt) with its saved "
                        "settings: only "
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
    from cnnlab.train.run import check_run, load_run  # noqa: PLC0415  keeps `cnnlab --help` fast

    if isinstance(args.nproc, bool) or not isinstance(args.nproc, int) or args.nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {args.nproc!r}")
    if args.resume is not None:
        _, config, _ = load_run(args.resume, epochs=args.epochs)
    else:
        config = config_from_args(args)
    check_run(config)
    split_batch_size(config.batch_size, args.nproc)
    check_launch(args.device or config.device)   # a resumed run may go on on another device


def launch(args, resumed: Path | None) -> int:
    """``--nproc N``: run this same command in N processes through torchrun's launcher (``resumed``:
    the folder of the run ``--resume`` names)."""
    from cnnlab.train.run import default_run_dir  # noqa: PLC0415  keeps `cnnlab --help` fast

    if world_size_from_env() > 1:
        raise ConfigError("--nproc launches processes itself; under torchrun leave it out")
    check_before_launch(args)
    argv = without_nproc(args.argv)
    run_dir = str(resumed) if resumed is not None else args.run_dir
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
    if not is_main_process():
        return contextlib.nullcontext()
    fix = "wait for it to finish before resuming it" if args.resume else \
        "wait for it to finish, or choose another --name/--run-dir"
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
    """``--name`` is one folder inside runs/; a path in it (../../x) would write anywhere, and a name
    Windows refuses (con, a:b) would make a run that cannot be copied there."""
    if name is None:
        return
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators):
        raise ConfigError(f"--name {name!r} must be a plain folder name inside runs/ (no '/' and not '..'); "
                          f"use --run-dir to put the run anywhere else")
    check_folder_name(name, "--name")


def typed_flags(args, names: dict[str, str]) -> list[str]:
    """The flags of ``names`` (destination -> flag) the user typed, in the order typed."""
    typed = [flag for dest, flag in names.items() if getattr(args, dest, None) is not None]

    def position(flag: str) -> int:
        return next((i for i, a in enumerate(args.argv) if a == flag or a.startswith(flag + "=")), len(args.argv))

    return sorted(typed, key=position)


def check_resume_flags(args) -> None:
    """``--resume`` continues a run with its saved settings: refuse typed flags that would change them
    (they used to be ignored without a word)."""
    from cnnlab.train.run import RESUMABLE  # noqa: PLC0415  keeps `cnnlab --help` fast

    names = {"preset": "--preset", "option": "--option", "name": "--name", "run_dir": "--run-dir",
             **{f.name: flag_name(f) for f in flag_fields() if f.name not in RESUMABLE}}
    changing = typed_flags(args, names)
    if changing:
        moved = "; to say where the run's data is now, give --data-dir PATH" if "--data" in changing else ""
        raise ConfigError(f"--resume continues {args.resume} with its saved settings; {', '.join(changing)} "
                          f"cannot change (start a new run, or leave {'it' if len(changing) == 1 else 'them'} out)"
                          f"{moved}")


def profile_callbacks(args, run_dir, startup: float | None) -> list:
    """``--profile``: the report of where the run's time went (rank 0 prints and writes it)."""
    from cnnlab.train.profile import ProfileReport  # noqa: PLC0415  keeps `cnnlab --help` fast

    return [ProfileReport(run_dir, startup=startup, show=is_main_process())] if args.profile else []


def run(args) -> int:
    from cnnlab.train import Interrupted, train  # noqa: PLC0415  loads cnnlab.train.run: keeps `cnnlab --help` fast
    from cnnlab.train.run import default_run_dir, prepare  # noqa: PLC0415  keeps `cnnlab --help` fast

    check_name(args.name)
    output_folder(args.run_dir, "--run-dir")
    if args.dist_timeout is not None:
        check_timeout(args.dist_timeout)
    resumed = run_reference(args.resume, "--resume") if args.resume is not None else None
    if resumed is not None:
        check_resume_flags(args)
    if args.nproc is not None and args.nproc != 1:
        return launch(args, resumed.folder if resumed is not None else None)
    progress = not args.no_progress
    timeout = {} if args.dist_timeout is None else {"dist_timeout": args.dist_timeout}
    startup = process_age() if args.profile else None
    if resumed is not None:
        run_dir = resumed.folder
    else:
        run_dir = Path(args.run_dir) if args.run_dir is not None else default_run_dir(args.name)
    profile = profile_callbacks(args, run_dir, startup)   # from here on, its table counts the time
    launched = runlock.held_by_parent(run_dir)  # a worker of `--nproc`: its launcher speaks for all
    try:
        config = config_from_args(args) if resumed is None else None
        with run_dir_lock(args, run_dir):   # makes the folder; nothing else can start a run in it meanwhile
            if resumed is not None:
                prepared = prepare(resume=resumed, epochs=args.epochs, data_dir=args.data_dir, device=args.device)
            else:
                prepared = prepare(config, run_dir=run_dir)
            result = train(prepared, progress=progress, callbacks=profile, **timeout)
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
