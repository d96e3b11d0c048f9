"""``cnnlab train --tensorboard``: the event files, read back with TensorBoard's own EventAccumulator,
hold the run's curves (the same numbers as metrics.csv), per-class accuracy (as ``cnnlab evaluate``
computes it), images of the expected sizes and the hparams; a resumed run repeats no step."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cnnlab.cli.main import main
from cnnlab.data import get_spec
from cnnlab.errors import ConfigError
from tests.conftest import SUBSET_DATA

STEPS_PER_EPOCH = 4   # 256 training images in batches of 64
CLASSES = list(get_spec("fashion-mnist").classes)


def train_args(run_dir, epochs=2):
    return ["train", "--data-dir", str(SUBSET_DATA), "--no-verify", "--train-limit", "256", "--batch-size", "64",
            "--epochs", str(epochs), "--device", "cpu", "--kernel", "off", "--precision", "fp32", "--channels-last", "off", "--no-progress",
            "--tensorboard", "--run-dir", str(run_dir)]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                                 "tensors": 0})
    acc.Reload()
    return acc


def steps(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("tb") / "run"
    assert main(train_args(run)) == 0
    return run


def test_curves_match_the_runs_csv(run_dir):
    acc = events(run_dir)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    points = [r for r in rows if r["train_loss"]]
    tests = [r for r in rows if r["test_acc"]]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [round(float(r["epoch"]) * STEPS_PER_EPOCH) for r in points]
    assert [e.value for e in loss] == pytest.approx([float(r["train_loss"]) for r in points], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/acc")] == pytest.approx([float(r["train_acc"]) for r in points])
    assert steps(acc, "test/acc") == [4, 8]
    assert [e.value for e in acc.Scalars("test/acc")] == pytest.approx([float(r["test_acc"]) for r in tests])
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([0.9] * len(points))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert acc.Scalars("speed/examples_per_sec")[-1].value == pytest.approx(summary["examples_per_sec"], rel=1e-5)


def test_per_class_accuracy_is_what_evaluate_reports(run_dir):
    from cnnlab.inference import evaluate
    from cnnlab.trained import TrainedRun

    run = TrainedRun.open(run_dir)
    images, labels = run.load_split("test")
    expected = evaluate(run.build_model(), images, labels, run.classes).per_class
    acc = events(run_dir)
    got = [acc.Scalars(f"test_per_class/{name}")[-1] for name in CLASSES]
    assert {e.step for e in got} == {8}
    assert [e.value for e in got] == pytest.approx(expected, abs=1e-6)


def test_images_and_histograms(run_dir):
    acc = events(run_dir)
    tags = acc.Tags()
    assert {"test/confusion_matrix", "test/misclassified", "weights/first_layer_kernels"} <= set(tags["images"])
    for tag in tags["images"]:
        assert [e.step for e in acc.Images(tag)] == [4, 8]
    wrong = acc.Images("test/misclassified")[-1]
    assert (wrong.width, wrong.height) == (8 * 29 + 1, 8 * 29 + 1)   # 64 images of 28 px, 1 px apart
    kernels = acc.Images("weights/first_layer_kernels")[-1]
    assert (kernels.width, kernels.height) == (6 * 21 + 1, 21 + 1)   # LeNet's 6 kernels, 5 px enlarged 4x
    assert acc.Images("test/confusion_matrix")[-1].width > 100
    from cnnlab.models import create

    names = [n for n, _ in create("lenet").named_parameters()]
    assert sorted(tags["histograms"]) == sorted([f"weights/{n}" for n in names] + [f"gradients/{n}" for n in names])
    assert [e.step for e in acc.Histograms("gradients/0.weight")] == [4, 8]


def test_hparams_hold_settings_and_final_metrics(run_dir):
    acc = events(run_dir)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "lenet"
    assert start.hparams["lr"].number_value == pytest.approx(0.9)
    assert start.hparams["batch_size"].number_value == 64
    assert start.hparams["tensorboard"].number_value == 1   # PyTorch writes booleans as numbers
    assert start.hparams["augment"].string_value == "[]" and start.hparams["train_limit"].number_value == 256
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparam/test_acc", "hparam/best_test_acc"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert acc.Scalars("hparam/test_acc")[-1].value == pytest.approx(summary["test_acc"])


def test_resume_appends_without_duplicated_steps(tmp_path):
    run = tmp_path / "run"
    assert main(train_args(run, epochs=1)) == 0
    shutil.copy(run / "checkpoint.pt", tmp_path / "after-epoch-1.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    # As if that process had died after logging epoch 2 but before its checkpoint: resume from epoch 1 again.
    shutil.copy(tmp_path / "after-epoch-1.pt", run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    logged = sorted((run / "tb").iterdir())
    assert len(logged) == 3   # one event file per process that trained, all in the same run
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0   # already complete: trains nothing
    assert sorted((run / "tb").iterdir()) == logged                     # ... and logs nothing
    acc = events(run)
    assert steps(acc, "train/loss") == list(range(1, 9))
    assert steps(acc, "test/acc") == [4, 8]
    for tag in acc.Tags()["scalars"]:
        tag_steps = steps(acc, tag)
        assert len(tag_steps) == len(set(tag_steps)), tag
    assert [e.step for e in acc.Images("test/misclassified")] == [4, 8]


def test_refused_in_one_line_without_tensorboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)   # as if it were not installed: its import fails
    run = tmp_path / "run"
    assert main(train_args(run)) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: --tensorboard needs tensorboard, which is not installed; install it with: "
                            "pip install tensorboard (or, in cnnlab's folder, pip install -e \".[tensorboard]\")\n")
    assert "training on" not in captured.out
    assert not (run / "checkpoint.pt").exists() and not (run / "metrics.csv").exists()

    from cnnlab.train import TrainConfig, train

    with pytest.raises(ConfigError, match=r"pip install tensorboard \(or, in cnnlab's folder"):
        train(TrainConfig(tensorboard=True, data_dir=str(SUBSET_DATA), verify=False, epochs=1), run_dir=run,
              progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("blocker", ["file", "/proc/self", "/sys/kernel", "missing"])
def test_an_unusable_tb_is_refused_before_the_run_is_written(tmp_path, capsys, blocker):
    """The run's ``tb`` as a file, a link into /proc or /sys, or a link to nothing: one line, and the run
    directory is left as it was (no config.json)."""
    run = tmp_path / "run"
    run.mkdir()
    tb = run / "tb"
    if blocker == "file":
        tb.write_text("notes", encoding="utf-8")
    else:
        tb.symlink_to(tmp_path / "nowhere" if blocker == "missing" else blocker)
    assert main(train_args(run, epochs=1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: TensorBoard's folder {tb} ")
    assert err.endswith("; move it away or train without --tensorboard\n")
    assert [p.name for p in run.iterdir()] == ["tb"]


def test_distributed_run_logs_from_rank_0_only(tmp_path):
    import os
    import subprocess

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "cnnlab", *train_args(run, epochs=1), "--nproc", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((run / "tb").iterdir())) == 1   # one writer: rank 0's
    acc = events(run)
    assert steps(acc, "train/loss") == [1, 2, 3, 4]   # 4 global batches of 64, as one process counts them
    assert steps(acc, "test/acc") == [4]
    summary = json.loads((run / "summary.json").read_text())
    assert acc.Scalars("test/acc")[0].value == pytest.approx(summary["test_acc"])


def test_a_run_with_a_validation_split_logs_its_validation_accuracy(tmp_path):
    """With --val-fraction each epoch measures the validation split (metrics.csv's val_acc): the events
    name it so, and the hparams hold it beside the test accuracy measured once at the end."""
    run = tmp_path / "run"
    assert main(train_args(run) + ["--val-fraction", "0.25"]) == 0
    acc = events(run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    epochs = [r for r in rows if r["val_acc"]]
    assert steps(acc, "val/acc") == [4, 8]   # the validation split is held out before --train-limit
    assert [e.value for e in acc.Scalars("val/acc")] == pytest.approx([float(r["val_acc"]) for r in epochs])
    assert "test/acc" not in acc.Tags()["scalars"]
    assert {"val/confusion_matrix", "val/misclassified"} <= set(acc.Tags()["images"])
    summary = json.loads((run / "summary.json").read_text())
    assert acc.Scalars("hparam/test_acc")[-1].value == pytest.approx(summary["test_acc"])
    assert acc.Scalars("hparam/val_acc")[-1].value == pytest.approx(summary["val_acc"])
