"""A run's inputs are checked once, where they are read, before any work: run references, saved runs
(config.json and checkpoint fields), numbers from flags; and nothing is created until they are good."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.train.config import TrainConfig

QUICK = ["--train-limit", "256", "--test-limit", "100", "--batch-size", "64", "--epochs", "1", "--device", "cpu",
         "--no-progress", "--no-verify"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished one-epoch runs on the committed subset: SGD (the book's) and AdamW."""
    from tests.conftest import SUBSET_DATA

    root = tmp_path_factory.mktemp("runs")
    data = str(SUBSET_DATA / "fashion-mnist")
    for name, extra in (("sgd", []), ("adamw", ["--optimizer", "adamw", "--lr", "0.003"])):
        assert main(["train", "--data-dir", data, "--run-dir", str(root / name), *QUICK, *extra]) == 0
    return root


@pytest.fixture
def run(runs, tmp_path):
    """A copy of the SGD run to damage."""
    return Path(shutil.copytree(runs / "sgd", tmp_path / "run"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--resume", ""], "--resume is empty; give a run directory or its checkpoint.pt"),
    (["train", "--resume", "  ", "--lr", "0.1"], "--resume is empty"),
    (["train", "--run-dir", ""], "--run-dir is empty; give a folder, or leave --run-dir out for the default"),
    (["evaluate", ""], "the run to evaluate is empty; give a run directory or its checkpoint.pt"),
    (["predict", "", "--index", "0"], "the checkpoint to predict with is empty"),
    (["inspect", ""], "the run to inspect is empty"),
    (["inspect", "x", "--out-dir", ""], "--out-dir is empty"),
    (["sweep", "--grid", "lr=0.1", "--root", ""], "--root is empty"),
])
def test_empty_run_references_and_folders_are_refused(argv, expected, tmp_path, monkeypatch, capsys):
    """A script's empty variable: `--resume ""` started a brand-new run (taking --lr), `--run-dir ''` was ignored."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line(capsys, expected)
    assert list(tmp_path.iterdir()) == []


def test_resume_takes_the_checkpoint_file_for_its_run(run, capsys):
    """`--resume RUN/checkpoint.pt` (as evaluate and predict take) means its folder; it was a NotADirectoryError."""
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert "resuming on cpu at epoch 2" in capsys.readouterr().out
    assert load_checkpoint(run)["state"]["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2


def test_resume_refuses_another_file(run, capsys):
    (run / "other.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    assert main(["train", "--resume", str(run / "other.pt")]) == 2
    _one_line(capsys, f"--resume {run / 'other.pt'}: give the run directory or its checkpoint.pt, not another file")


def _craft(run: Path, change) -> None:
    ckpt = load_checkpoint(run)
    for key in ("path", "format", "version"):
        ckpt.pop(key)
    change(ckpt)
    save_checkpoint(run / "checkpoint.pt", ckpt)


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["state"].update(sums="abc"), "field 'state' must be a mapping with the epoch and step reached, "
                                              "metric sums, history and counts, got {"),
    (lambda c: c["state"].update(history=[1, 2]), "field 'state' must be"),
    (lambda c: c["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
     "field 'rng' must be a mapping of random-generator states (byte tensors)"),
    (lambda c: c.update(rng={"torch": "x"}), "field 'rng' must be"),
    (lambda c: c.update(input_size=10 ** 9), "field 'input_size' must be a positive integer up to 1024, got 1000000000"),
    (lambda c: c["config"].update(lr="fast"), "field 'config': learning rate must be a finite number, got 'fast'"),
    (lambda c: c["config"].update(data_dir=7), "field 'config': data dir must be text, got 7"),
    (lambda c: c["optimizer_state"].update(param_groups="x"), "field 'optimizer_state' must be an optimizer's state"),
])
@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_crafted_checkpoint_fields_are_one_line(run, capsys, change, expected, command):
    _craft(run, change)
    before = _files(run)
    argv = (["train", "--resume", str(run), "--epochs", "2", "--no-progress"] if command == "resume"
            else ["evaluate", str(run), "--device", "cpu"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {run / 'checkpoint.pt'}") and expected in err, err
    assert err.count("\n") == 1
    assert _files(run) == before


def test_an_adamw_checkpoint_in_an_sgd_run_is_refused_before_any_work(runs, run, capsys):
    """It was a ValueError traceback from the optimizer's load_state_dict."""
    shutil.copy(runs / "adamw" / "checkpoint.pt", run / "checkpoint.pt")
    before = _files(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    _one_line(capsys, f"checkpoint {run / 'checkpoint.pt'} belongs to another run: its settings differ from "
                      f"{run / 'config.json'}'s: lr 0.003 (config.json: 0.9), optimizer 'adamw' (config.json: 'sgd')")
    assert _files(run) == before


def test_optimizer_state_of_another_optimizer_is_refused(runs, run, capsys):
    """The same, with the checkpoint's own config edited to match: its state is still AdamW's."""
    adamw = load_checkpoint(runs / "adamw")
    _craft(run, lambda c: c.update(optimizer_state=adamw["optimizer_state"]))
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    _one_line(capsys, f"checkpoint {run / 'checkpoint.pt'}: its optimizer state is not sgd's")


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "holds no 'config' mapping of training settings (got [1, 2])"),
    ('{"device": "cpu"}', "holds no 'config' mapping of training settings"),
    ('{"config": {"data_dir": 5}}', "config.json: data dir must be text, got 5"),
    ('{"config": {"epochs": "many"}}', "config.json: epochs must be a positive integer, got 'many'"),
    ('{"config": {"colour": "red"}}', "unknown training settings colour in"),
    ("{", "is not valid JSON"),
])
def test_malformed_config_json_is_one_line(run, capsys, content, expected):
    (run / "config.json").write_text(content)
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = _one_line(capsys, "")
    assert expected in err and str(run) in err
    assert _files(run) == before
    with pytest.raises(Exception, match="config"):
        TrainConfig.from_run(run)


def test_old_runs_that_saved_tta_flip_still_load(run):
    saved = json.loads((run / "config.json").read_text())
    config = {k: v for k, v in saved["config"].items() if k != "tta"}
    (run / "config.json").write_text(json.dumps({**saved, "config": {**config, "tta_flip": True}}))
    assert TrainConfig.from_run(run).tta == "flip"


@pytest.mark.parametrize("flags, expected", [
    (["--lr", "1e39"], "learning rate must be at most 3.402823e+38 (the largest float32), got 1e+39"),
    (["--weight-decay", "1e39"], "weight decay must be at most 3.402823e+38 (the largest float32)"),
    (["--epochs", "100000000000000000000"],
     "epochs must be at most 1000000 (what metrics.csv and the curves can hold), got 100000000000000000000"),
    (["--batch-size", str(2 ** 64)], "batch size must be at most 9223372036854775807 (an int64), got 18446744073709551616"),
    (["--dist-timeout", "nan"], "distributed timeout (--dist-timeout) must be a positive number of seconds, got nan"),
    (["--data-dir", "no-such-folder"], "no-such-folder: "),
])
def test_bad_numbers_and_inputs_leave_no_run_directory(flags, expected, tmp_path, monkeypatch, capsys):
    """--lr 1e39 was a RuntimeError traceback that left config.json; --epochs 10^20 trained and then failed
    in matplotlib; --dist-timeout nan was taken without --nproc; a failed run left an empty run directory."""
    from tests.conftest import SUBSET_DATA

    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(SUBSET_DATA / "fashion-mnist")] if "--data-dir" not in flags else []
    assert main(["train", *data, "--run-dir", "r", *QUICK, *flags]) == 2
    assert expected in _one_line(capsys, "")
    assert list(tmp_path.iterdir()) == []


def test_bad_numbers_name_the_bound(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "100000000000000000000", "--no-progress"]) == 2
    _one_line(capsys, "epochs must be at most 1000000")
    assert main(["train", "--lr", "1e39", "--no-progress"]) == 2
    _one_line(capsys, "learning rate must be at most 3.402823e+38")
    assert main(["train", "--dist-timeout", "nan", "--no-progress"]) == 2
    _one_line(capsys, "distributed timeout (--dist-timeout) must be a positive number of seconds, got nan")
    assert list(tmp_path.iterdir()) == []


def test_failed_inspect_leaves_no_inspect_folder(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(run), "--data-dir", str(tmp_path / "empty")]) == 2
    _one_line(capsys, f"--data-dir {tmp_path / 'empty'}: ")
    assert not (run / "inspect").exists()


def test_data_found_through_cnnlab_data_is_recorded(tmp_path, monkeypatch, capsys):
    """A run whose data came from $CNNLAB_DATA recorded data_dir null, so evaluate failed without the variable."""
    from tests.conftest import SUBSET_DATA

    monkeypatch.setenv("CNNLAB_DATA", str(SUBSET_DATA))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--run-dir", "r", *QUICK]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["data_dir"] == str((SUBSET_DATA / "fashion-mnist").absolute())
    assert load_checkpoint(tmp_path / "r")["config"]["data_dir"] == config["data_dir"]
    monkeypatch.delenv("CNNLAB_DATA")
    capsys.readouterr()
    assert main(["evaluate", "r", "--device", "cpu"]) == 0
    assert "lenet on fashion-mnist test (1000 images)" in capsys.readouterr().out
