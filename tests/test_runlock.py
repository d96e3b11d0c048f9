"""One writer per run directory: train, resume, sweep cells, evaluate and inspect refuse a run another
process is writing, in one line naming that process; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import runlock
from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError

REPO = Path(__file__).resolve().parents[1]
SUBSET = str(REPO / "tests" / "data")
TINY = ["--data-dir", SUBSET, "--no-verify", "--train-limit", "256", "--test-limit", "128", "--batch-size", "64",
        "--device", "cpu", "--no-progress", "--kernel", "off"]   # no C passes to compile in each new process


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY]) == 0
    return run


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_second_training_into_a_run_being_trained_is_refused_naming_the_first(tmp_path, capsys):
    """The reproduction: two `cnnlab train --run-dir R` at once both went ahead, and the second's files
    replaced the first's without a word."""
    run = tmp_path / "R"
    first = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--run-dir", str(run), "--seed", "1",
                              "--epochs", "200", *TINY], cwd=tmp_path, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "config.json", first)
        code = main(["train", "--run-dir", str(run), "--seed", "2", "--epochs", "1", *TINY])
        line = one_error_line(capsys.readouterr().err)
        resume_code = main(["train", "--resume", str(run), "--no-progress"])
        resume_line = one_error_line(capsys.readouterr().err)
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    assert code == 2 and resume_code == 2
    assert line.startswith(f"error: run directory {run} is in use by pid {first.pid} (cnnlab train --run-dir")
    assert line.endswith("; wait for it to finish, or choose another --name/--run-dir")
    assert "wait for it to finish before resuming it" in resume_line
    assert first.returncode == 130, first_err
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 1   # the first run's files
    assert not (run / runlock.LOCK_NAME).exists()   # released on its exit (Ctrl-C)
    with runlock.hold(run):   # free again
        pass


def test_a_lock_left_by_a_killed_process_is_noticed_and_taken_over(tmp_path, capsys):
    run = tmp_path / "R"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cnnlab import runlock\n"
                               f"with runlock.hold({str(run)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(runlock.RunInUseError, match=f"is in use by pid {holder.pid} "):
        with runlock.hold(run):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / runlock.LOCK_NAME).exists()  # SIGKILL runs no clean-up: the file still names its holder
    with runlock.hold(run):
        assert json.loads((run / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err == (f"note: {run} was locked by pid {holder.pid} (python -c) since " + err.split(" since ")[1])
    assert err.endswith(", which is no longer running; taking the lock over\n")


def test_the_lock_is_released_on_any_exit_and_an_unused_run_directory_removed(tmp_path):
    run = tmp_path / "new" / "R"
    with pytest.raises(KeyboardInterrupt):
        with runlock.hold(run):
            assert (run / runlock.LOCK_NAME).is_file()
            raise KeyboardInterrupt
    assert not run.exists()   # created for the lock, nothing written: gone again
    with runlock.hold(run):
        (run / "metrics.csv").write_text("epoch\n")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]
    with runlock.hold(run):   # an existing run directory stays, even when empty
        pass
    assert run.is_dir()


def test_a_second_holder_in_the_same_process_is_refused_too(tmp_path):
    with runlock.hold(tmp_path):
        with pytest.raises(runlock.RunInUseError, match=f"in use by pid {os.getpid()} "):
            with runlock.hold(tmp_path):
                pass


def test_a_failed_training_leaves_no_empty_run_directory(tmp_path, capsys):
    """The data are found missing after the run directory was made for the run: it is removed again."""
    run, empty = tmp_path / "R", tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY, "--data-dir", str(empty)]) == 2
    assert f"--data-dir {empty}: no " in one_error_line(capsys.readouterr().err)
    assert not run.exists()


def test_evaluate_and_inspect_do_not_write_into_a_run_being_trained(trained, tmp_path, capsys):
    with runlock.hold(trained):   # as a training of that run does
        assert main(["evaluate", str(trained), "--no-verify", "--device", "cpu"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: run directory {trained} is in use by pid {os.getpid()} ")
        assert line.endswith("; wait for it to finish, or write elsewhere with --out")
        assert not (trained / "confusion.png").exists()
        assert main(["inspect", str(trained), "--no-verify"]) == 2
        assert one_error_line(capsys.readouterr().err).endswith("or write elsewhere with --out-dir")
        assert not (trained / "inspect").exists()
        # Elsewhere, reading the run is fine.
        assert main(["evaluate", str(trained / "checkpoint.pt"), "--no-verify", "--device", "cpu",
                     "--out", str(tmp_path / "c.png")]) == 0
        assert main(["inspect", str(trained), "--no-verify", "--out-dir", str(tmp_path / "i")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--no-verify", "--device", "cpu"]) == 0
    assert (trained / "confusion.png").is_file() and not (trained / runlock.LOCK_NAME).exists()


def test_a_sweep_cell_being_written_elsewhere_is_refused(tmp_path):
    from cnnlab.sweep import cell_name, run_sweep
    from cnnlab.train.config import TrainConfig

    base = TrainConfig(data_dir=SUBSET, verify=False, train_limit=256, test_limit=128, batch_size=64, epochs=1,
                       device="cpu")
    cell = tmp_path / "sweep" / cell_name({"lr": 0.1})
    with runlock.hold(cell):
        with pytest.raises(runlock.RunInUseError, match="or sweep into another --root"):
            run_sweep(base, [("lr", [0.1])], tmp_path / "sweep")
        assert not (cell / "config.json").exists()
    assert issubclass(runlock.RunInUseError, CnnlabError)
