"""Pieces shared by the sub-commands: parser construction and common flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab import portable
from cnnlab.cli.main import HelpFormatter
from cnnlab.errors import ConfigError
from cnnlab.train.config import TrainConfig, flag_fields, flag_name


def add_command(subparsers, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` shows every flag's default."""
    return subparsers.add_parser(name, help=help, description=description or help,
                                 formatter_class=HelpFormatter)


def add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None, *,
                      typed_only: bool = True) -> None:
    """One flag per TrainConfig setting declared with ``setting(...)`` (all of them, or ``names``): its name,
    help, choices and parser come from the field.  With ``typed_only`` a flag left out is None, so a preset
    or a saved run yields only to what was typed; ``--help`` still shows the config's default."""
    defaults = TrainConfig()
    for f in flag_fields():
        if names is not None and f.name not in names:
            continue
        meta, default = f.metadata, getattr(defaults, f.name)
        kwargs = {"dest": f.name, "help": meta["help"], "default": None if typed_only else default}
        if isinstance(default, bool):   # a switch: --no-verify stores False, --nesterov True
            kwargs.update(action="store_const", const=not default)
        else:
            kwargs.update(type=meta["parse"] or (type(default) if default is not None else str),
                          choices=meta["choices"], metavar=meta["metavar"])
            if typed_only and default is not None:
                shown = (", ".join(default) or "none") if isinstance(default, list) else default
                kwargs["help"] += f" (default: {shown})"
        parser.add_argument(flag_name(f), **kwargs)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir and --no-verify, as for train, for commands that only read data."""
    add_setting_flags(parser, ("dataset", "data_dir", "verify"), typed_only=False)


def output_folder(text: str | None, flag: str) -> str | None:
    """A folder flag's value: None (not given) or a non-empty path; an empty one (a script's empty
    variable) would silently mean the default or the current folder.  The folder it names must be valid on
    every system (:func:`check_folder_name`)."""
    if text is not None and not text.strip():
        raise ConfigError(f"{flag} is empty; give a folder, or leave {flag} out for the default")
    if text is not None:
        check_folder_name(text, flag)
    return text


def check_folder_name(value: str, flag: str) -> None:
    """:class:`ConfigError` unless the folder ``value`` names last (a path's last part) is valid on every
    system: a run made on Linux must still open once copied to a Windows laptop."""
    path = Path(value)
    if path.name in ("", ".", ".."):   # a drive or the root, or a folder that is there already
        return
    problem = portable.check_portable_name(path.name)
    if problem is not None:
        fix = str(path.with_name(portable.portable_name(path.name)))
        raise ConfigError(f"{flag} {value!r}: {problem}, and cnnlab's folders must copy to any system; "
                          f"try {flag} {fix!r}")
