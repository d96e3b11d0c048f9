"""``cnnlab lr-find``: the learning-rate range test, with its plot."""

from __future__ import annotations

from cnnlab.cli.common import add_command, output_folder
from cnnlab.cli.train import add_train_flags, config_from_args
from cnnlab.fileio import check_writable_dir


def register(subparsers) -> None:
    p = add_command(subparsers, "lr-find", "learning-rate range test: loss against an exponentially growing rate",
                    description="Train briefly while the learning rate grows from --start-lr to --end-lr and "
                                "plot the smoothed loss (as fastai's lr_find). Writes lr_find.png and "
                                "lr_find.csv and suggests a rate.")
    p.add_argument("--start-lr", type=float, default=1e-5, help="first learning rate")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate")
    p.add_argument("--steps", type=int, default=100, help="batches (one rate each)")
    p.add_argument("--out-dir", default="runs/lr-find", help="where lr_find.png and lr_find.csv go")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.lrfind import lr_range_test, write_lr_find  # noqa: PLC0415  keeps `cnnlab --help` fast
    from cnnlab.train.run import check_run  # noqa: PLC0415  keeps `cnnlab --help` fast

    output_folder(args.out_dir, "--out-dir")
    config = check_run(config_from_args(args))
    check_writable_dir(args.out_dir)     # before the training, not after it
    result = lr_range_test(config, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps)
    write_lr_find(result, args.out_dir)
    print(f"steepest descent at lr {result.steepest_lr:.3g}; minimum loss at lr {result.min_loss_lr:.3g}")
    print(f"suggested --lr {result.steepest_lr:.3g} (the steepest descent; the other usual pick is "
          f"{result.min_loss_lr / 10:.3g}, a tenth of the lr at the minimum); plot: {args.out_dir}/lr_find.png")
    return 0
