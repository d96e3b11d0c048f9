"""``cnnlab train``: the seed's recipe by default (LeNet, Fashion-MNIST, batch 256, SGD lr 0.9, 10 epochs)."""

from __future__ import annotations

import json
import sys

from cnnlab.cli.common import add_command, add_data_flags
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
    p.add_argument("--compile", default=d.compile, choices=["auto", "on", "off"],
                   help="torch.compile the training step (auto: on for CUDA, off for CPU, where a cold "
                        "compile costs more than it saves); falls back to plain PyTorch if it cannot compile")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"],
                   help="autocast precision (auto: bf16 on CUDA GPUs that support it, else fp32)")


def config_from_args(args):
    from cnnlab.train.config import TrainConfig

    return TrainConfig(model=args.model, model_options=parse_options(args.option), dataset=args.dataset,
                       data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                       eval_batch_size=args.eval_batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, init=args.init, seed=args.seed, device=args.device,
                       train_limit=args.train_limit, test_limit=args.test_limit, compile=args.compile,
                       precision=args.precision)


def register(subparsers) -> None:
    p = add_command(subparsers, "train", "train a model (default: the book's LeNet recipe on Fashion-MNIST)")
    add_train_flags(p)
    p.add_argument("--name", default=None, help="run name; the run directory is runs/<name> (default: a timestamp)")
    p.add_argument("--run-dir", default=None, help="run directory (overrides --name)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its directory (its saved settings are used; "
                        "--epochs may extend it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch still)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.models import get_model_info
    from cnnlab.data import get_spec
    from cnnlab.train import Interrupted, train
    from cnnlab.train.run import default_run_dir

    progress = not args.no_progress
    try:
        if args.resume:
            explicit_epochs = "--epochs" in sys.argv or any(a.startswith("--epochs=") for a in sys.argv)
            result = train(resume=args.resume, progress=progress, epochs=args.epochs if explicit_epochs else None)
        else:
            config = config_from_args(args).validate()
            get_model_info(config.model)
            get_spec(config.dataset)
            run_dir = args.run_dir or default_run_dir(args.name)
            result = train(config, run_dir=run_dir, progress=progress)
    except Interrupted as exc:
        where = args.resume or args.run_dir or "the run directory"
        print(f"interrupted ({exc}); checkpoint saved: continue with `cnnlab train --resume {where}`",
              file=sys.stderr)
        return 130
    print(f"run directory: {result['run_dir']}")
    return 0
