"""Folder names valid on every system: a run made on Linux must copy to a Windows laptop, so names the user
types that Windows refuses are refused on every system, and names cnnlab makes are valid there."""

from __future__ import annotations

import pytest

from cnnlab import portable
from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.sweep import cell_name, run_sweep
from cnnlab.train.config import TrainConfig

# name -> (the rule it breaks, as the message says it; the name made valid), by Windows' documented rules
INVALID = {
    "con": ("'con' is a device name Windows reserves", "con_"),
    "CON.txt": ("'CON' is a device name Windows reserves", "CON_.txt"),
    "Nul.tar.gz": ("'Nul' is a device name Windows reserves", "Nul_.tar.gz"),
    "lpt9": ("'lpt9' is a device name Windows reserves", "lpt9_"),
    "COM1": ("'COM1' is a device name Windows reserves", "COM1_"),
    "aux ": ("Windows drops a trailing dot or space", "aux_"),
    "lenet:v2": ("Windows forbids ':' in folder names", "lenet-v2"),
    'a<b>c"d|e?f*g\\h': ("Windows forbids '\"' '*' '<' '>' '?' '\\\\' '|' in folder names", "a-b-c-d-e-f-g-h"),
    "tab\there": ("Windows forbids U+0009 in folder names", "tab-here"),
    "v1.": ("Windows drops a trailing dot or space", "v1"),
    "a ": ("Windows drops a trailing dot or space", "a"),
    "...": ("Windows drops a trailing dot or space", "_"),
    "..": ("'..' names no folder", "_"),
}
VALID = ["卷积 网络", "d2l笔记： 6 卷积神经网络", "lenet-v2", "console", "con_", "COM10", "lpt", "nul-run",
         ".hidden", " leading space", "run.v1", "ねこ", "고양이"]


@pytest.mark.parametrize("name", INVALID)
def test_names_windows_refuses_are_refused_with_the_rule(name):
    rule, _ = INVALID[name]
    assert rule in portable.check_portable_name(name)


@pytest.mark.parametrize("name", VALID)
def test_names_valid_everywhere_pass_unchanged(name):
    assert portable.check_portable_name(name) is None
    assert portable.portable_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_made_portable_the_same_way_every_time(name):
    _, safe = INVALID[name]
    assert portable.portable_name(name) == safe
    assert portable.check_portable_name(safe) is None


def test_sweep_cells_get_folder_names_windows_accepts():
    assert cell_name({"device": "cuda:0"}) == "device-cuda-0"
    assert cell_name({"device": "cuda:0", "lr": 0.1}) == "device-cuda-0_lr-0.1"
    assert cell_name({"option": {"a": 1}}) == "option-{-a-1}"       # JSON's quotes are forbidden there
    assert cell_name({"pooling": "avg"}) == "pooling-avg"


def test_sweep_cells_that_would_share_a_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="would share the folder device-cpu-0"):
        run_sweep(TrainConfig(), [("device", ["cpu:0", "cpu-0"])], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["train", "--name", "con"], "--name 'con': 'con' is a device name Windows reserves"),
    (["train", "--name", "lenet:v2"], "--name 'lenet:v2': Windows forbids ':' in folder names"),
    (["train", "--name", "v1."], "--name 'v1.': Windows drops a trailing dot or space"),
    (["train", "--run-dir", "runs/aux"], "--run-dir 'runs/aux': 'aux' is a device name Windows reserves"),
    (["sweep", "--grid", "lr=0.1", "--root", "sweeps/a:b"], "--root 'sweeps/a:b': Windows forbids ':'"),
    (["lr-find", "--out-dir", "prn.out"], "--out-dir 'prn.out': 'prn' is a device name Windows reserves"),
])
def test_folder_flags_refuse_names_windows_refuses_in_one_line(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert "try " + flags[-2] + " '" in err     # and says what would do
    assert not any(tmp_path.iterdir())


def test_the_suggested_name_is_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--name", "lenet:v2", "--epochs", "0"]) == 2
    assert "try --name 'lenet-v2'" in capsys.readouterr().err
    assert main(["train", "--name", "lenet-v2", "--epochs", "0"]) == 2     # past the name, to the settings
    assert "epochs must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["卷积 网络", "run.v1"])
def test_chinese_and_dotted_names_are_accepted(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--name", name, "--epochs", "0"]) == 2
    assert "epochs must be a positive integer" in capsys.readouterr().err
