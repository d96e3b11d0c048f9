"""``cnnlab compare``: the table and figure for two tiny real runs and one still in progress."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.models import create
from cnnlab.train.callbacks import MAX_METRICS_BYTES, MAX_METRICS_ROW_BYTES, metrics_csv
from cnnlab.train.config import MAX_EPOCHS
from tests.conftest import SUBSET_DATA


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, lr in (("a", "0.9"), ("b", "0.3")):
        assert main(["train", "--data-dir", str(SUBSET_DATA), "--no-verify", "--train-limit", "256",
                     "--batch-size", "64", "--epochs", "1", "--lr", lr, "--device", "cpu", "--no-progress",
                     "--run-dir", str(root / name)]) == 0
    # A run interrupted after its first epoch of three: its files as Ctrl-C leaves them (no summary.json).
    shutil.copytree(root / "b", root / "c")
    (root / "c" / "summary.json").unlink()
    config = json.loads((root / "c" / "config.json").read_text())
    config["config"]["epochs"] = 3
    (root / "c" / "config.json").write_text(json.dumps(config))
    return root


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_markdown_table_and_figure(root, tmp_path, capsys):
    figure = tmp_path / "compare.png"
    assert main(["compare", str(root / "a"), str(root / "b"), str(root / "c"), "--out", str(figure)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "model", "params", "lr", "epochs", "final acc", "best acc", "train s", "examples/s",
                      "status"]
    assert set(lines[1]) <= {"|", "-"}
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    params = sum(p.numel() for p in create("lenet").parameters())
    for name, lr in (("a", "0.9"), ("b", "0.3")):
        row, s = rows[str(root / name)], summary(root / name)
        assert row[1:5] == ["lenet", f"{params:,d}", lr, "1/1"]
        assert row[5] == row[6] == f"{s['test_acc']:.4f}"
        assert row[7] == f"{s['train_seconds']:.1f}" and row[8] == f"{s['examples_per_sec']:.0f}"
        assert row[9] == "done"
    progress = rows[str(root / "c")]
    assert progress[4] == "1/3" and progress[7:] == ["", "", "in progress"]
    with Image.open(figure) as img:
        assert img.format == "PNG" and img.size == (1200, 480)


def test_csv_and_a_folder_of_runs(root, capsys):
    assert main(["compare", str(root), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in rows] == [str(root / n) for n in ("a", "b", "c")]
    assert [r["lr"] for r in rows] == ["0.9", "0.3", "0.3"]
    assert [r["status"] for r in rows] == ["done", "done", "in progress"]
    assert rows[0]["params"] == str(sum(p.numel() for p in create("lenet").parameters()))
    assert float(rows[0]["final acc"]) == pytest.approx(summary(root / "a")["test_acc"], abs=5e-5)


def test_bad_paths_are_one_line(root, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'missing'} is not a folder" in err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run directory" in err
    assert main(["compare", str(root / "a"), "--out", str(tmp_path / "x.nope")]) == 2
    assert "unknown image format" in capsys.readouterr().err


def test_a_run_with_a_validation_split_is_compared_on_it_and_its_test_score_shown(root, tmp_path, capsys):
    """Each epoch of such a run scores the validation split (metrics.csv leaves test_acc empty until the
    end): the table once counted no epoch done and showed it in progress for ever."""
    validated = tmp_path / "v"
    assert main(["train", "--data-dir", str(SUBSET_DATA), "--no-verify", "--train-limit", "256",
                 "--batch-size", "64", "--epochs", "2", "--val-fraction", "0.25", "--device", "cpu",
                 "--no-progress", "--run-dir", str(validated)]) == 0
    capsys.readouterr()
    figure = tmp_path / "compare.png"
    assert main(["compare", str(root / "a"), str(validated), "--csv", "--out", str(figure)]) == 0
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    plain, held = rows[str(root / "a")], rows[str(validated)]
    s = summary(validated)
    val_accs = [float(r["val_acc"]) for r in csv.DictReader(io.StringIO((validated / "metrics.csv").read_text()))
                if r["val_acc"]]
    assert len(val_accs) == 2
    assert (held["epochs"], held["held out"], held["status"]) == ("2/2", "val", "done")
    assert float(held["final acc"]) == pytest.approx(s["val_acc"], abs=5e-5)
    assert float(held["best acc"]) == pytest.approx(max(val_accs), abs=5e-5)
    assert float(held["test acc"]) == pytest.approx(s["test_acc"], abs=5e-5)
    assert plain["held out"] == "test" and float(plain["test acc"]) == float(plain["final acc"]) == \
        pytest.approx(summary(root / "a")["test_acc"], abs=5e-5)
    assert figure.is_file()


def test_a_damaged_metrics_file_is_one_line(root, tmp_path, capsys):
    damaged = tmp_path / "d"
    shutil.copytree(root / "a", damaged)
    (damaged / "metrics.csv").write_text("epoch,train_loss\n1,not-a-number\n")
    assert main(["compare", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{damaged / 'metrics.csv'} is not a cnnlab metrics file" in err


@pytest.mark.parametrize("content, problem", [
    (b'{"test_acc": "x"}', "test_acc is 'x'"),
    (b'{"train_seconds": [1]}', "train_seconds is [1]"),
    (b"[1, 2]", "it holds a list, not a mapping"),
    (b"\xff\xfe{", "'utf-8' codec can't decode byte 0xff"),
])
def test_a_damaged_summary_is_one_line_naming_it(root, tmp_path, capsys, content, problem):
    damaged = tmp_path / "d"
    shutil.copytree(root / "a", damaged)
    (damaged / "summary.json").write_bytes(content)
    assert main(["compare", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: {damaged / 'summary.json'} is damaged ({problem}"), err


@pytest.mark.parametrize("row, problem", [
    ("2,nan,0.5,0.6", "train_loss is nan, not a finite number"),
    ("2,0.4,inf,0.6", "train_acc is inf, not a finite number"),
    ("2,0.4,0.5,0.6,9", "has 5 fields, the header 4"),
    ("2,0.4", "has 2 fields, the header 4"),
])
def test_a_row_training_does_not_write_is_refused_naming_file_and_line(root, tmp_path, capsys, row, problem):
    damaged = tmp_path / "d"
    shutil.copytree(root / "a", damaged)
    metrics = damaged / "metrics.csv"
    lines = metrics.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,test_acc"
    metrics.write_text("\n".join([*lines, row]) + "\n", encoding="utf-8")
    where = f"line {len(lines) + 1}{':' if 'finite' in problem else ''}"
    assert main(["compare", str(damaged)]) == 2
    assert capsys.readouterr().err == (f"error: {metrics} is not a cnnlab metrics file ({where} {problem}); "
                                       f"the run directory is damaged\n")


def test_a_metrics_file_larger_than_any_run_writes_is_refused_unread(root, tmp_path, capsys):
    """Far beyond one row per epoch of the longest run: refused from its size, not read into memory."""
    damaged = tmp_path / "d"
    shutil.copytree(root / "a", damaged)
    metrics = damaged / "metrics.csv"
    with open(metrics, "r+b") as f:
        f.truncate(8 * MAX_METRICS_BYTES)       # sparse: no disk space, and reading it would take gigabytes
    assert main(["compare", str(damaged)]) == 2
    assert capsys.readouterr().err == (f"error: {metrics} is larger than a metrics file of {MAX_EPOCHS:,d} epochs "
                                       f"can be ({MAX_METRICS_BYTES:,d} bytes); it is not one training wrote: "
                                       f"the run directory is damaged\n")


def test_the_longest_run_fits_the_bound():
    """A row of the largest epoch with the longest floats Python writes stays within the row bound."""
    longest = -1.2345678901234567e-308
    text = metrics_csv([{"epoch": float(MAX_EPOCHS), "train_loss": longest, "train_acc": longest,
                         "test_acc": longest, "val_acc": longest}])
    assert len(text.splitlines()[1]) + 1 <= MAX_METRICS_ROW_BYTES
    assert len(text.splitlines()[0]) + 1 + MAX_EPOCHS * MAX_METRICS_ROW_BYTES <= MAX_METRICS_BYTES


def test_params_are_of_the_network_as_it_trained_on_its_data(tmp_path, capsys):
    """A run on colour 32x32 images has a wider first convolution and dense layer than the book's LeNet:
    the table counted the network as if it were built for Fashion-MNIST."""
    import numpy as np

    from cnnlab.train.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "colour.npz", x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(64) % 4, x_test=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(16) % 4)
    run = tmp_path / "colour"
    assert main(["train", "--data", str(tmp_path / "colour.npz"), "--epochs", "1", "--batch-size", "16",
                 "--device", "cpu", "--no-progress", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    trained = sum(t.numel() for t in load_checkpoint(run)["model_state"].values())
    assert trained != sum(p.numel() for p in create("lenet").parameters())
    assert main(["compare", str(run), "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["params"] == str(trained)
