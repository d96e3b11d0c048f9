"""`cnnlab train --profile` and the per-phase timings every run reports."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.train import TrainConfig, train
from cnnlab.train.profile import ProfileReport

SMALL = ["--batch-size", "64", "--device", "cpu", "--no-progress"]   # all of the subset: 2,000 and 1,000 images
ROW = re.compile(r"  (.+?)\s+(\d+\.\d{3})\s+(\d+\.\d) %")


def test_process_age_counts_from_the_process_start():
    code = ("import time; from cnnlab.portable import process_age; a = process_age(); time.sleep(0.3); "
            "print(a, process_age())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "None":
        pytest.skip("this system does not say when a process started")
    # a positive age, which grows as the process lives on
    assert 0 < float(out[0]) < float(out[1])


def test_profile_prints_where_the_time_went_and_writes_a_trace(fashion_dir, tmp_path, capsys):
    from cnnlab.kernels.lenet import native

    run = tmp_path / "r"
    began = time.perf_counter()
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "2", "--profile",
                 *SMALL]) == 0
    wall = time.perf_counter() - began
    out = capsys.readouterr().out.splitlines()
    # the book's closing lines stay where they are; the report follows them
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", out[4])
    assert out[5] == "where the time went, from the process's start (seconds):"
    rows = {m.group(1).strip(): float(m.group(2)) for m in map(ROW.match, out[6:]) if m}
    labels = list(rows)
    assert labels[0].startswith("start-up") and labels[1].startswith("data") and labels[2].startswith("set-up")
    assert any(label.startswith("training steps (63 more; ") for label in labels)   # 2 x 32 steps (2,000 / 64), less the first
    assert "evaluation (2 x 1,000 images)" in labels
    total = float(next(line for line in out if line.lstrip().startswith("total")).split()[-1])
    assert sum(rows.values()) == pytest.approx(total, abs=0.005 * len(rows))
    assert all(seconds >= 0 for seconds in rows.values())
    assert total - rows[labels[0]] <= wall   # the phases after start-up all happened inside this call, once
    assert out[-3] == (f"trace of steps 12-21 of epoch 2: {run / 'trace.json'} "
                       "(open in https://ui.perfetto.dev or chrome://tracing)")

    trace = json.loads((run / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::addmm" in names          # the dense layers' products, recorded by the profiler
    if native.load("f32")[0] is not None:  # the book's LeNet trains with the kernel: its C passes by name
        assert {"cnnlab::conv1_forward", "cnnlab::xent", "cnnlab::conv1_backward"} <= names
    report = (run / "profile.txt").read_text()
    assert report.startswith("where the time went") and "operators of steps 12-21 of epoch 2" in report
    assert "aten::addmm" in report

    timings = json.loads((run / "summary.json").read_text())["timings"]
    summary = json.loads((run / "summary.json").read_text())
    assert timings["train"] == pytest.approx(summary["train_seconds"])
    assert 0 < timings["first_step"] < timings["train"]
    assert timings["data"] > 0 and timings["evaluate"] > 0 and timings["epoch_end"] > 0


def test_every_run_reports_its_timings(fashion_dir):
    config = TrainConfig(data_dir=str(fashion_dir), epochs=1, train_limit=1024, test_limit=500, batch_size=128,
                         device="cpu")
    began = time.perf_counter()
    result = train(config, progress=False, out=io.StringIO())
    wall = time.perf_counter() - began
    t = result["timings"]
    assert set(t) == {"data", "build", "first_step", "train", "evaluate", "epoch_end"}
    assert all(v >= 0 for v in t.values()) and t["data"] > 0 and t["evaluate"] > 0
    assert t["first_step"] <= t["train"] == result["train_seconds"]    # the first step is part of training
    assert t["data"] + t["build"] + t["train"] + t["evaluate"] + t["epoch_end"] <= wall   # parts, each counted once


@pytest.mark.parametrize("epochs, done, step, steps, trace_steps, window", [
    (3, 0, 0, 100, 10, (1, 45, 10)),     # the middle of the second epoch
    (1, 0, 0, 4, 10, (0, 0, 4)),         # one short epoch: all of it
    (1, 0, 50, 100, 10, (0, 70, 10)),    # resumed in its only epoch: the middle of what is left
    (5, 4, 0, 100, 10, (4, 45, 10)),     # resumed for its last epoch
    (2, 0, 0, 100, 0, None),             # no trace asked for
])
def test_the_trace_covers_steady_steps(epochs, done, step, steps, trace_steps, window):
    report = ProfileReport(trace_steps=trace_steps)
    trainer = SimpleNamespace(epochs=epochs, steps_per_epoch=steps, state=SimpleNamespace(epoch=done, step=step))
    report.on_fit_start(trainer)
    assert report.window == window


def test_only_the_reporting_process_traces(fashion_dir, tmp_path, capsys):
    config = TrainConfig(data_dir=str(fashion_dir), epochs=2, train_limit=512, test_limit=200, batch_size=128,
                         device="cpu")
    silent = ProfileReport(tmp_path, show=False)
    train(config, progress=False, callbacks=[silent], out=io.StringIO())
    assert capsys.readouterr().out == "" and silent.traced is None
    assert not (tmp_path / "trace.json").exists() and not (tmp_path / "profile.txt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_trace_holds_the_device_kernels(fashion_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "2", "--profile",
                 "--device", "cuda", "--no-progress"]) == 0
    print(capsys.readouterr().out)   # the table, for the device run's log
    trace = json.loads((run / "trace.json").read_text())
    assert any(event.get("cat") == "kernel" for event in trace["traceEvents"])
    assert "Self CUDA" in (run / "profile.txt").read_text()
