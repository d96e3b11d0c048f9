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
    (["summary", "--image-size", "0"], "image size must be a whole number of pixels from 1 to 1024, got 0"),
    (["summary", "--image-size=-1"], "image size must be a whole number of pixels from 1 to 1024, got -1"),
    (["summary", "--image-size", "100000"], "image size must be a whole number of pixels from 1 to 1024, got 100000"),
    (["summary", "--image-size", "4"], "--image-size 4 is too small for model 'lenet': its smallest input is 12x12 (its own size is 28)"),
    (["summary", "--model", "vgg_mini", "--image-size", "4"],
     "--image-size 4 is too small for model 'vgg_mini': its smallest input is 8x8 (its own size is 28)"),
    (["summary", "--channels", "2"], "channels must be 1 (gray) or 3 (colour), got 2"),
    (["summary", "--in-channels", "0"], "--in-channels must be a positive integer, got 0"),
    (["summary", "--in-channels=-3"], "--in-channels must be a positive integer, got -3"),
    (["summary", "--num-classes=-1"], "--num-classes must be a positive integer, got -1"),
    (["lr-find", "--end-lr", "inf"], "lr-find needs 0 < --start-lr < --end-lr, both finite, got 1e-05 and inf"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_summary_sizes_the_model_as_training_does(capsys):
    """--image-size is the images' side, as for `cnnlab train`: LeNet is built for 32-pixel images (its
    dense layer takes 16 x 6 x 6), while vgg11, made for 224 pixels, gets them resized to its own size."""
    assert main(["summary", "--model", "lenet", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "(1, 6, 32, 32)" in out and "(1, 576)" in out and "resized" not in out
    assert main(["summary", "--model", "vgg11", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "vgg11 takes 224x224 inputs: 32x32 images are resized to it, as in training"
    assert "(1, 512, 7, 7)" in out


def test_summary_input_size_is_the_deprecated_name_of_image_size(capsys):
    """The old flag still works, says once on stderr that it is deprecated and what replaces it, and
    is left out of --help."""
    assert main(["summary", "--input-size", "32"]) == 0
    old = capsys.readouterr()
    assert old.err == ("note: --input-size is deprecated, use --image-size (the images' side: a model made for "
                       "larger images resizes them to its own size, as training does)\n")
    assert main(["summary", "--image-size", "32"]) == 0
    assert capsys.readouterr().out == old.out
    with pytest.raises(SystemExit):
        main(["summary", "--help"])
    assert "--input-size" not in capsys.readouterr().out
    assert main(["summary", "--input-size", "32", "--image-size", "28"]) == 2
    assert capsys.readouterr().err.endswith("error: give --image-size only (--input-size is its deprecated name)\n")
