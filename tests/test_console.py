"""Printing never crashes: Chinese, Japanese and Korean names reach a console or file in any encoding (as
``?`` where it lacks them), and a reader that goes away (``cnnlab ... | head``) ends the command quietly on
every system."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab import portable
from cnnlab.cli.main import main

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "ねこ", "卷积 网络", "고양이"]   # in the order cnnlab sorts class folders


def image_folder(root: Path) -> Path:
    """A tiny image tree whose class folders have Chinese, Japanese and Korean names: 3 images per class."""
    for split in ("train", "test"):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def cnnlab_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("sink", ["file", "pipe"])
@pytest.mark.parametrize("stdio", ["cp1252", "gbk", "ascii", "ascii:surrogateescape"])
def test_class_names_print_in_any_output_encoding(stdio, sink, tmp_path):
    """As on an English (cp1252) or Chinese (gbk) Windows with output redirected, or under LANG=C
    (ascii:surrogateescape): `data info` finishes and shows each name as that encoding can, a character
    it lacks as '?'."""
    encoding = stdio.split(":")[0]
    folder = image_folder(tmp_path / "数据")
    command = [sys.executable, "-m", "cnnlab", "data", "info", "--data", str(folder)]
    env = cnnlab_env(PYTHONIOENCODING=stdio)
    if sink == "file":
        with open(tmp_path / "out.txt", "wb") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, env=env, timeout=300, check=False)
        output = (tmp_path / "out.txt").read_bytes()
    else:
        done = subprocess.run(command, capture_output=True, env=env, timeout=300, check=False)
        output = done.stdout
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    text = output.decode(encoding)
    rows = [line.split()[:-1] for line in text.splitlines() if line.startswith("  ") and line.split()[-1] == "3"]
    shown = [name.encode(encoding, errors="replace").decode(encoding).split() for name in CLASSES]
    assert rows == shown + shown        # train, then test
    if encoding == "gbk":
        assert "卷积 网络" in text and "ねこ" in text and "???" in text   # GBK has no Hangul


def test_a_utf8_output_keeps_every_character(tmp_path):
    script = "import cnnlab, sys; print(sys.stdout.errors); print('卷积 고양이')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          env=cnnlab_env(PYTHONIOENCODING="utf-8"), timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.decode("utf-8").split("\n")[:2] == ["strict", "卷积 고양이"]


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`cnnlab data info ... | head -0`: the reader is gone before the first line; no traceback, status 141."""
    folder = image_folder(tmp_path / "images")
    env = cnnlab_env()
    env.pop("PYTHONUNBUFFERED", None)   # as a shell runs it: the output waits in the buffer until the end
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "data", "info", "--data", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()
    stderr = process.stderr.read().decode(errors="replace")
    assert process.wait(timeout=300) == 141, stderr
    assert stderr == ""


class ClosedPipeOnWindows(io.TextIOBase):
    """stdout as Windows leaves it when the reader has gone: every write and flush fails with EINVAL."""

    def write(self, text):
        raise OSError(errno.EINVAL, "Invalid argument")

    def flush(self):
        raise OSError(errno.EINVAL, "Invalid argument")


def test_a_closed_pipe_on_windows_ends_the_command_quietly(monkeypatch, capsys):
    monkeypatch.setattr(portable, "WINDOWS", True)
    monkeypatch.setattr(sys, "stdout", ClosedPipeOnWindows())
    assert main(["summary", "--model", "lenet"]) == 141
    assert capsys.readouterr().err == ""


def test_only_a_closed_stdout_counts_as_a_closed_pipe(monkeypatch):
    invalid = OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(sys, "stdout", ClosedPipeOnWindows())
    assert portable.is_closed_pipe(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    monkeypatch.setattr(portable, "WINDOWS", False)
    assert not portable.is_closed_pipe(invalid)          # elsewhere EINVAL is just an invalid argument
    monkeypatch.setattr(portable, "WINDOWS", True)
    assert portable.is_closed_pipe(invalid)
    assert not portable.is_closed_pipe(OSError(errno.EINVAL, "Invalid argument", "runs/a?b"))  # a file's name
    assert not portable.is_closed_pipe(OSError(errno.ENOENT, "No such file or directory"))
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not portable.is_closed_pipe(invalid)          # stdout still takes writes: not the pipe


def test_an_invalid_file_name_on_windows_is_not_taken_for_a_closed_pipe(monkeypatch):
    def build_parser():
        raise OSError(errno.EINVAL, "Invalid argument", "runs/a?b")

    monkeypatch.setattr(portable, "WINDOWS", True)
    monkeypatch.setattr("cnnlab.cli.main.build_parser", build_parser)
    with pytest.raises(OSError, match="a\\?b"):
        main(["summary"])
