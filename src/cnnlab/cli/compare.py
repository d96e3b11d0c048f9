"""``cnnlab compare``: runs side by side."""

from __future__ import annotations

import sys

from cnnlab.cli.common import add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "compare",
                    "a table of runs (model, parameters, settings that differ, accuracy, time, speed) and "
                    "a figure of their curves")
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories, or folders of runs (a sweep root)")
    p.add_argument("--csv", action="store_true", help="print the table as CSV instead of Markdown")
    p.add_argument("--out", default=None, metavar="FIGURE", help="also draw the runs' curves into this image file")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.compare import compare  # noqa: PLC0415  keeps `cnnlab --help` fast

    print(compare(args.runs, csv_output=args.csv, figure=args.out), end="")
    if args.out:
        print(f"figure: {args.out}", file=sys.stderr)
    return 0
