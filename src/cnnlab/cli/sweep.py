"""``cnnlab sweep``: one run per cell of a grid over model and training options, then a results table."""

from __future__ import annotations

from cnnlab.cli.common import add_command, output_folder
from cnnlab.cli.train import add_train_flags, config_from_args


def register(subparsers) -> None:
    p = add_command(subparsers, "sweep",
                    "train a grid of runs (e.g. --grid pooling=avg,max --grid activation=sigmoid,relu) "
                    "and tabulate them",
                    description="Train one run directory per cell of a grid over model options and training "
                                "settings, then write results.md, results.csv and results.png. Re-running "
                                "skips finished cells and resumes interrupted ones; a cell in --root that "
                                "trained other settings is refused.")
    p.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2",
                   help="an axis, repeatable: a training setting (lr, optimizer, ...) or a model option "
                        "(pooling, activation, ...); values are comma-separated and read as JSON where they "
                        "parse, so a list stays whole (--grid channels=[8,16],[16,32]); augmentations join "
                        "with + (--grid augment=crop+flip,flip,none)")
    p.add_argument("--root", default="runs/sweep", help="directory holding one run directory per cell")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.sweep import parse_axis, results_markdown, run_sweep  # noqa: PLC0415  keeps `cnnlab --help` fast

    output_folder(args.root, "--root")
    axes = [parse_axis(spec) for spec in args.grid]
    rows = run_sweep(config_from_args(args), axes, args.root, progress=args.progress)
    print(results_markdown(rows, [name for name, _ in axes]), end="")
    print(f"results: {args.root}/results.md, results.csv, results.png")
    return 0
