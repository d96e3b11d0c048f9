"""``cnnlab demo``: run the book's small experiments and print what they show."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_command
from cnnlab.cli.main import HelpFormatter


def register(subparsers) -> None:
    parser = add_command(subparsers, "demo", help="run a small experiment from d2l chapter 6 and print it")
    demos = parser.add_subparsers(dest="demo", metavar="DEMO", required=True)

    edges = demos.add_parser(
        "edges", formatter_class=HelpFormatter,
        help="edge detection with corr2d, learning the kernel back, the section's exercises, translation, "
             "parameter counts",
        description="Detect the vertical edges of a 6x8 image with the kernel [[1, -1]], learn that\n"
                    "kernel back from (X, Y) by gradient descent (d2l 6.2), work the section's exercises\n"
                    "(an image with a diagonal edge, transposing the image and the kernel, a kernel for\n"
                    "the diagonal alone), show that shifting the image shifts the edge map, and compare\n"
                    "the parameters of fully connected and convolutional layers (d2l 6.1).")
    edges.add_argument("--lr", type=float, default=3e-2, help="learning rate of the gradient descent")
    edges.add_argument("--steps", type=int, default=10, help="gradient-descent iterations")
    edges.add_argument("--seed", type=int, default=0, help="seed of the kernel's random start")
    edges.add_argument("--print-every", type=int, default=2, help="print the loss every this many iterations")
    edges.set_defaults(func=run_edges)


def run_edges(args: argparse.Namespace) -> int:
    from cnnlab.demos import run_edges_demo

    run_edges_demo(lr=args.lr, steps=args.steps, seed=args.seed, print_every=args.print_every, print_fn=print)
    return 0
