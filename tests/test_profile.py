"""`cnnlab train --profile` and the per-phase timings every run reports."""

from __future__ import annotations

import io
import json
import math
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
    """A child's age, read as it starts and again after sleeping 0.3 s, grows by the sleep and never exceeds
    the time since the parent started it.  Both bounds hold however busy the machine is (a busy machine
    only makes the sleep and the start longer); the slack covers two readings' resolution (10 ms on Linux,
    the 15.6 ms tick of Windows' system clock)."""
    code = ("import time; from cnnlab.portable import process_age; a = process_age(); time.sleep(0.3); "
            "print(a, process_age())")
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - began
    if out[0] == "None":
        pytest.skip("this system does not say when a process started")
    first, second = float(out[0]), float(out[1])
    slack = 0.035
    assert second - first >= 0.3 - slack
    assert second <= elapsed + slack


def phase_rows(lines: list[str]) -> tuple[list[str], list[float], list[float], float]:
    """The labels, seconds and percentages of a phase table's rows (after its heading), and its total."""
    rows = [ROW.fullmatch(line) for line in lines[1:-1]]
    assert all(rows), lines
    total = re.fullmatch(r"  total\s+(\d+\.\d{3})", lines[-1])
    assert total, lines[-1]
    return ([m.group(1).strip() for m in rows], [float(m.group(2)) for m in rows], [float(m.group(3)) for m in rows],
            float(total.group(1)))


def test_the_phase_table_from_known_timings(monkeypatch):
    """The table for timings given by hand: each phase named in order, its seconds, its share of the total,
    the steps after the first with their mean, and what the named phases leave over ("other")."""
    import cnnlab.train.profile as profile

    clock = [0.0]
    monkeypatch.setattr(profile, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    report = ProfileReport(startup=1.5, trace_steps=0)                      # made at 0.0 s
    trainer = SimpleNamespace(epochs=2, steps_per_epoch=10, state=SimpleNamespace(epoch=0, step=0),
                              timings={"data": 0.25, "build": 0.125, "first_step": 0.5, "train": 4.5,
                                       "evaluate": 1.0, "epoch_end": 0.75},
                              held_out_batches=SimpleNamespace(num_examples=1000), device=torch.device("cpu"))
    clock[0] = 0.5
    report.on_fit_start(trainer)                                           # set-up: 0.5 - 0.25 of data
    for epoch in range(2):
        for step in range(10):
            report.on_step_end(trainer, epoch, step)
    trainer.state.epoch = 2
    clock[0] = 8.0                                                         # other: 8.0 - 6.75 named after start-up
    assert report.table(trainer).splitlines() == [
        "where the time went, from the process's start (seconds):",
        "  start-up (interpreter, imports, flags)        1.500   15.8 %",
        "  data (read, verify, copy to the device)       0.250    2.6 %",
        "  set-up (model, optimizer, fast paths)         0.250    2.6 %",
        "  first step (lazy initialisation, capture)     0.500    5.3 %",
        "  training steps (19 more; 210.53 ms each)      4.000   42.1 %",   # 4.5 - 0.5 over 19 steps
        "  evaluation (2 x 1,000 images)                 1.000   10.5 %",
        "  epoch ends (checkpoints, logs, plots)         0.750    7.9 %",
        "  other (loop, progress, final writes)          1.250   13.2 %",
        "  total                                         9.500",
    ]
    report.startup = None                                                  # a notebook: no start-up row
    assert report.table(trainer).splitlines()[:2] == [
        "where the time went, from the start of training (seconds):",
        "  data (read, verify, copy to the device)       0.250    3.1 %"]


def test_profile_prints_where_the_time_went_and_writes_a_trace(fashion_dir, tmp_path, capsys):
    """The table a real run prints: its phases named in order, consistent with each other and with the
    run's own timings in summary.json, whatever the seconds were."""
    from cnnlab.kernels.lenet import native

    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "2", "--profile",
                 *SMALL]) == 0
    out = capsys.readouterr().out.splitlines()
    # the book's closing lines stay where they are; the report follows them
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", out[4])
    heading = out.index("where the time went, from the process's start (seconds):") if \
        "where the time went, from the process's start (seconds):" in out else \
        out.index("where the time went, from the start of training (seconds):")
    assert heading == 5
    table = out[heading:next(i for i, line in enumerate(out) if line.lstrip().startswith("total")) + 1]
    labels, seconds, shares, total = phase_rows(table)
    named = [r"start-up \(interpreter, imports, flags\)", r"data \(read, verify, copy to the device\)",
             r"set-up \(model, optimizer, fast paths\)", r"first step \(lazy initialisation, capture\)",
             r"training steps \(63 more; (\d+\.\d\d) ms each\)",       # 2 x 32 steps (2,000 / 64), less the first
             r"evaluation \(2 x 1,000 images\)", r"epoch ends \(checkpoints, logs, plots\)",
             r"the profiler \(start, stop, export\)", r"other \(loop, progress, final writes\)"]
    if not labels[0].startswith("start-up"):       # a system that does not say when a process started
        named = named[1:]
    assert len(labels) == len(named) and all(re.fullmatch(p, label) for p, label in zip(named, labels)), labels
    # consistent to the table's rounding: the seconds add up to the total, the shares to 100 %, each share is
    # its seconds over the total, and the steps' mean is their seconds over their count
    assert sum(seconds) == pytest.approx(total, abs=0.0005 * (len(seconds) + 1))
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares))
    for share, part in zip(shares, seconds):
        assert share == pytest.approx(100 * part / total, abs=0.05 + 100 * 0.0005 / total)
    by_label = dict(zip(labels, seconds))
    steps_label = next(label for label in labels if label.startswith("training steps"))
    mean_ms = float(re.search(r"(\d+\.\d\d) ms each", steps_label).group(1))
    assert 63 * mean_ms / 1000 == pytest.approx(by_label[steps_label], abs=0.0005 + 63 * 0.005 / 1000)
    # the phases the trainer times are its timings, as summary.json records them
    summary = json.loads((run / "summary.json").read_text())
    timings = summary["timings"]
    assert set(timings) == {"data", "build", "first_step", "train", "evaluate", "epoch_end"}
    assert timings["train"] == summary["train_seconds"]
    for label, key in (("data", "data"), ("first step", "first_step"), ("evaluation", "evaluate"),
                       ("epoch ends", "epoch_end")):
        row = next(label_ for label_ in labels if label_.startswith(label))
        assert by_label[row] == pytest.approx(timings[key], abs=0.0005 + 1e-9), label
    assert timings["first_step"] <= timings["train"]                    # the first step is part of training
    assert by_label[steps_label] <= timings["train"] - timings["first_step"] + 0.001
    assert out[heading + len(table)] == (f"trace of steps 12-21 of epoch 2: {run / 'trace.json'} "
                                         "(open in https://ui.perfetto.dev or chrome://tracing)")
    assert out[heading + len(table) + 1] == f"the table and the top operators: {run / 'profile.txt'}"

    report = (run / "profile.txt").read_text().splitlines()
    assert report[:len(table)] == table                  # the file holds the table printed
    assert report[len(table) + 1].startswith("operators of steps 12-21 of epoch 2, by self cpu time total")
    assert any("aten::addmm" in line for line in report)
    trace = json.loads((run / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::addmm" in names          # the dense layers' products, recorded by the profiler
    if native.load("f32")[0] is not None:  # the book's LeNet trains with the kernel: its C passes by name
        assert {"cnnlab::conv1_forward", "cnnlab::xent", "cnnlab::conv1_backward"} <= names


def test_every_run_reports_its_timings(fashion_dir):
    """Without --profile too: the phases the trainer times, the training time as train_seconds, and the
    phases timed inside training (steps, evaluation, epoch ends) within the run's own wall time."""
    config = TrainConfig(data_dir=str(fashion_dir), epochs=1, train_limit=1024, test_limit=500, batch_size=128,
                         device="cpu")
    result = train(config, progress=False, out=io.StringIO())
    t = result["timings"]
    assert set(t) == {"data", "build", "first_step", "train", "evaluate", "epoch_end"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in t.values())
    assert t["first_step"] <= t["train"] == result["train_seconds"]    # the first step is part of training
    # parts of one interval, each counted once (a busy machine stretches the parts and the whole alike)
    assert t["train"] + t["evaluate"] + t["epoch_end"] <= result["wall_seconds"]


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
