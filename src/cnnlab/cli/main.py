"""The ``cnnlab`` command: a thin shell over the library.

Each sub-command lives in its own module with ``register(subparsers)``; that function adds its
parser and sets ``func`` (called with the parsed namespace, returning an exit status).
Errors derived from :class:`cnnlab.errors.CnnlabError` print one line and exit 2.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from cnnlab import __version__, openmp, portable
from cnnlab.errors import CnnlabError

# Sub-command modules, in the order `cnnlab --help` lists them.
COMMAND_MODULES = [
    "cnnlab.cli.data",
    "cnnlab.cli.train",
    "cnnlab.cli.summary",
    "cnnlab.cli.evaluate",
    "cnnlab.cli.demo",
    "cnnlab.cli.models",
    "cnnlab.cli.sweep",
    "cnnlab.cli.lrfind",
    "cnnlab.cli.inspect",
    "cnnlab.cli.explain",
    "cnnlab.cli.compare",
    "cnnlab.cli.export",
]

TRAINING_COMMANDS = ("train", "sweep", "lrfind")
"""The commands whose CPU threads' waiting is chosen for the machine before PyTorch loads (cnnlab.openmp)."""

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps descriptions' line breaks.  A flag whose help states its
    default already (a setting's flag, whose own default is None: not typed) keeps that one."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Learn, train and measure small CNNs on MNIST-like images.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser

def main(argv: list[str] | None = None) -> int:
    try:
        status = _run(argv)
    except SystemExit as exc:   # argparse's exits, and torchrun's SIGTERM in a training process
        if isinstance(exc.code, int):
            _end_training_process(argv, exc.code)
        raise
    _end_training_process(argv, status)
    return status


def _end_training_process(argv: list[str] | None, status: int) -> None:
    """A training process of a distributed run ends at once (cnnlab.distributed.end_process).
    That module is not imported here: a Ctrl-C while torch loads must land in _run's handler.  A call from
    Python (argv given) returns as usual."""
    distributed = sys.modules.get("cnnlab.distributed")
    if argv is None and distributed is not None:
        distributed.end_process(status)


def _run(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if next((word for word in words if not word.startswith("-")), None) in TRAINING_COMMANDS:
        openmp.choose()
    try:
        # Building the parser imports every sub-command (torch among them, ~1 s): Ctrl-C lands here often.
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves
        status = int(args.func(args) or 0)
        if sys.stdout is not None:
            sys.stdout.flush()   # a reader that went away shows here, not in the interpreter's last flush
        if argv is None:
            # The program is about to exit: spare the interpreter's final garbage collections a walk over
            # torch's ~10^6 objects (0.3-0.4 s of every command).  atexit handlers, finalizers of objects
            # freed by reference counting and the flushing of stdout and stderr all still run; every
            # file cnnlab writes is closed (and renamed into place) before this point.
            gc.freeze()
        return status
    except CnnlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if not portable.is_closed_pipe(exc):
            raise
        # The reader went away (`cnnlab data info | head`): stop quietly, as other tools do.
        silence_stdout()
        return 141


def silence_stdout() -> None:
    """Point stdout at the null device (/dev/null, Windows' nul) so the interpreter's final flush of what
    is left in its buffer does not fail again; a stdout without a file descriptor is left as it is."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # None (pythonw), or a stream that is not a file
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
