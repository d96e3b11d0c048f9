"""Every command's bad input is one line `error: ...` with exit status 2, never a traceback."""

from __future__ import annotations

import pytest

import cnnlab.cli.main as cli_main
from cnnlab.cli.main import main


def test_ctrl_c_while_the_parser_is_built_is_one_line(monkeypatch, capsys):
    """Building the parser imports torch (~1 s): a Ctrl-C there printed a KeyboardInterrupt traceback."""
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert main(["train"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
