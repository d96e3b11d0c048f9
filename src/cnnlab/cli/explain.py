"""``cnnlab explain RUN_DIR``: a local web page that shows how the trained network computes every number."""

from __future__ import annotations

from cnnlab.cli.common import add_command
from cnnlab.errors import ConfigError


def register(subparsers) -> None:
    p = add_command(subparsers, "explain", "see inside a trained network in the browser (a local page)",
                    description="Start a local web server for a trained run and print its URL. The page shows "
                                "every layer's feature maps for a test, uploaded or drawn image, how any one "
                                "number of a convolution, pooling or dense layer is computed, a kernel "
                                "playground, and the run's curves and confusion matrix. Works offline.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holding checkpoint.pt)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but a loopback address lets others use the page")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--data-dir", default=None, help="folder of the dataset's IDX files (default: the run's)")
    p.add_argument("--no-verify", action="store_const", dest="verify", const=False, default=None,
                   help="trust the data files (default: checked as the run's were)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.explain.run import ExplainedRun  # noqa: PLC0415  keeps `cnnlab --help` fast
    from cnnlab.explain.server import serve  # noqa: PLC0415  keeps `cnnlab --help` fast

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, not {args.port}")
    serve(ExplainedRun(args.run_dir, args.data_dir, args.verify), args.host, args.port, open_browser=args.open)
    return 0
