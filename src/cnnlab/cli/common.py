"""Pieces shared by the sub-commands: parser construction and common flags."""

from __future__ import annotations

import argparse

from cnnlab.cli.main import HelpFormatter


def add_command(subparsers, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` shows every flag's default."""
    return subparsers.add_parser(name, help=help, description=description or help,
                                 formatter_class=HelpFormatter)


def add_data_flags(parser: argparse.ArgumentParser, action: str | type[argparse.Action] = "store",
                   no_verify_action: str | type[argparse.Action] = "store_const") -> None:
    parser.add_argument("--dataset", action=action, default="fashion-mnist",
                        help="dataset name (see `cnnlab data info --help` for the list)")
    parser.add_argument("--data-dir", action=action, default=None,
                        help="folder holding the dataset's IDX files; else $CNNLAB_DATA, the user cache, "
                             "system copies, then a download")
    parser.add_argument("--no-verify", action=no_verify_action, dest="verify", const=False, default=None,
                        help="trust the data files instead of checking their checksums against the registry "
                             "(then they may hold any number of examples: a subset); a trained run's data is "
                             "checked as the run's was")

