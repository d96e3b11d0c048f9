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


@pytest.mark.parametrize("argv, message", [
    (["models", "--family", "bogus"], "unknown model family 'bogus'; families: alexnet, densenet, googlenet, lenet, "
                                      "nin, resnet, vgg"),
    (["summary", "--input-size", "0"], "--input-size must be from 1 to 1024 pixels, got 0"),
    (["summary", "--input-size=-1"], "--input-size must be from 1 to 1024 pixels, got -1"),
    (["summary", "--input-size", "100000"], "--input-size must be from 1 to 1024 pixels, got 100000"),
    (["summary", "--input-size", "4"], "--input-size 4 is too small for model 'lenet': its smallest input is 12x12 (its own size is 28)"),
    (["summary", "--model", "alexnet", "--input-size", "28"],
     "--input-size 28 is too small for model 'alexnet': its smallest input is 65x65 (its own size is 224)"),
    (["summary", "--model", "vgg_mini", "--input-size", "4"],
     "--input-size 4 is too small for model 'vgg_mini': its smallest input is 8x8"),
    (["summary", "--in-channels", "0"], "--in-channels must be a positive integer, got 0"),
    (["summary", "--in-channels=-3"], "--in-channels must be a positive integer, got -3"),
    (["summary", "--num-classes=-1"], "--num-classes must be a positive integer, got -1"),
    (["lr-find", "--end-lr", "inf"], "lr-find needs 0 < --start-lr < --end-lr, both finite, got 1e-05 and inf"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_summary_sizes_models_that_take_an_image_size(capsys):
    """vgg11 at 32 pixels: its classifier is sized for the input given, not its 224-pixel default."""
    assert main(["summary", "--model", "vgg11", "--input-size", "32"]) == 0
    assert "(1, 512, 1, 1)" in capsys.readouterr().out
