"""``cnnlab train``: the seed's recipe by default (LeNet, Fashion-MNIST, batch 256, SGD lr 0.9, 10 epochs)."""

from __future__ import annotations

import json
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


def add_train_flags(p) -> None:
    """Flags that define a run (shared with commands that launch runs)."""
    from cnnlab.train.config import TrainConfig

    d = TrainConfig()
    add_data_flags(p)
    p.add_argument("--model", default=d.model, help="model name (see `cnnlab models`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, repeatable (e.g. --option activation=relu)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="batch size for test accuracy")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
    p.add_argument("--init", default=d.init, choices=["xavier", "default"],
                   help="weight initialisation: Xavier-uniform (the book) or PyTorch's default")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same run)")
    p.add_argument("--device", default=d.device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")


def config_from_args(args):
    from cnnlab.train.config import TrainConfig

    return TrainConfig(model=args.model, model_options=parse_options(args.option), dataset=args.dataset,
                       data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                       eval_batch_size=args.eval_batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, init=args.init, seed=args.seed, device=args.device,
                       train_limit=args.train_limit, test_limit=args.test_limit)


def register(subparsers) -> None:
    p = add_command(subparsers, "train", "train a model (default: the book's LeNet recipe on Fashion-MNIST)")
    add_train_flags(p)
    p.add_argument("--name", default=None, help="run name; the run directory is runs/<name> (default: a timestamp)")
    p.add_argument("--run-dir", default=None, help="run directory (overrides --name)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its directory (its saved settings are used; "
                        "--epochs may extend it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch still)")
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


def launch(args) -> int:
    """``--nproc N``: run this same command in N processes through torchrun's launcher."""
    from cnnlab.distributed import launch as launch_processes, world_size_from_env
    from cnnlab.train.run import default_run_dir

    if world_size_from_env() > 1:
        raise ConfigError("--nproc launches processes itself; under torchrun leave it out")
    argv = without_nproc(args.argv)
    run_dir = args.resume or args.run_dir
    if run_dir is None:  # chosen once here, so every process agrees on it
        run_dir = str(default_run_dir(args.name))
        argv += ["--run-dir", run_dir]
    return launch_processes(args.nproc, argv, run_dir)  # rank 0 prints the run directory


def run(args) -> int:
    from cnnlab.models import get_model_info
    from cnnlab.data import get_spec
    from cnnlab.train import Interrupted, train
    from cnnlab.train.run import default_run_dir

    from cnnlab.distributed import is_main_process

    if args.nproc is not None and args.nproc != 1:
        return launch(args)
    progress = not args.no_progress
    timeout = {} if args.dist_timeout is None else {"dist_timeout": args.dist_timeout}
    try:
        if args.resume:
            explicit_epochs = "--epochs" in sys.argv or any(a.startswith("--epochs=") for a in sys.argv)
            result = train(resume=args.resume, progress=progress, epochs=args.epochs if explicit_epochs else None,
                           **timeout)
        else:
            config = config_from_args(args).validate()
            get_model_info(config.model)
            get_spec(config.dataset)
            run_dir = args.run_dir or default_run_dir(args.name)
            result = train(config, run_dir=run_dir, progress=progress, **timeout)
    except Interrupted as exc:
        where = args.resume or args.run_dir or "the run directory"
        print(f"interrupted ({exc}); checkpoint saved: continue with `cnnlab train --resume {where}`",
              file=sys.stderr)
        return 130
    if is_main_process():
        print(f"run directory: {result['run_dir']}")
    return 0
