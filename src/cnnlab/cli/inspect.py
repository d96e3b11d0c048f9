"""``cnnlab inspect RUN_DIR``: activations, first-layer kernels and misclassified test images of a run."""

from __future__ import annotations

from cnnlab.cli.common import add_command, output_folder


def register(subparsers) -> None:
    p = add_command(subparsers, "inspect", "draw a run's layer activations, first-layer kernels and mistakes",
                    description="For a trained run: the first- and second-layer activations of chosen test "
                                "images side by side (default: a pullover and a coat), the learned first-layer "
                                "kernels, and a grid of misclassified test images with true and predicted labels.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holding checkpoint.pt)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names or numbers whose first test image to show "
                        "(default: pullover,coat on Fashion-MNIST, else the first two classes)")
    p.add_argument("--out-dir", default=None, help="where the images go (default: RUN_DIR/inspect)")
    p.add_argument("--data-dir", default=None, help="folder of the dataset's IDX files (default: the run's)")
    p.add_argument("--no-verify", action="store_const", dest="verify", const=False, default=None,
                   help="trust the data files (default: checked as the run's were)")
    p.add_argument("--test-limit", type=int, default=None, help="look for mistakes in the first N test images")
    p.add_argument("--max-misclassified", type=int, default=25, help="images in the mistakes grid")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.inspect import inspect_run  # noqa: PLC0415  keeps `cnnlab --help` fast

    output_folder(args.out_dir, "--out-dir")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    paths = inspect_run(args.run_dir, args.out_dir, classes=classes, data_dir=args.data_dir, verify=args.verify,
                        test_limit=args.test_limit, max_misclassified=args.max_misclassified)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0
