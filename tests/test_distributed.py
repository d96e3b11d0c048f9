"""Distributed training with real processes: torchrun, gloo on the CPU, loopback.

The reference for a 2-process run is a single-process run with the same global batch, seed and
order: DDP averages the ranks' mean gradients, which equals the single process's mean gradient
only if the ranks' k-th batches together are exactly the single process's k-th batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.data.loader import BatchIterator, epoch_permutation
from cnnlab.errors import ConfigError
from platforms import simulated_env

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")


# ---- sharding (no processes) -------------------------------------------------------------------

def _iterators(n: int, per_rank_batch: int, world_size: int, seed: int = 5):
    images = torch.arange(n, dtype=torch.int64).to(torch.uint8).view(n, 1, 1, 1)
    labels = torch.arange(n)
    return [BatchIterator(images, labels, per_rank_batch, shuffle=True, seed=seed, rank=r, world_size=world_size)
            for r in range(world_size)]


@pytest.mark.parametrize("n,per_rank_batch,world_size", [(2048, 128, 2), (2001, 128, 2), (1000, 7, 3),
                                                           (10, 4, 2), (97, 5, 4)])
def test_ranks_kth_batches_together_are_the_single_process_kth_batch(n, per_rank_batch, world_size):
    seed, epoch = 5, 3
    global_batch = per_rank_batch * world_size
    used = epoch_permutation(n, seed, epoch)[:n - n % world_size]  # the tail past a multiple of W is skipped
    expected = [used[i:i + global_batch] for i in range(0, used.shape[0], global_batch)]
    ranks = [list(it.batches(epoch)) for it in _iterators(n, per_rank_batch, world_size, seed)]
    assert all(len(batches) == len(expected) for batches in ranks)
    for k, want in enumerate(expected):
        got = torch.cat([ranks[r][k][1] for r in range(world_size)])
        assert torch.equal(got, want)
        sizes = {ranks[r][k][1].shape[0] for r in range(world_size)}
        assert len(sizes) == 1  # equal per-rank batches, so DDP's average is the global mean


def test_single_process_order_is_unchanged_by_the_sharding_code():
    (it,) = _iterators(1000, 64, 1)
    got = torch.cat([y for _, y in it.batches(2)])
    assert torch.equal(got, epoch_permutation(1000, 5, 2))


def test_evaluation_shards_cover_every_example_once():
    n, world_size = 1003, 4
    images, labels = torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n)
    seen = torch.cat([y for r in range(world_size)
                      for _, y in BatchIterator(images, labels, 100, rank=r, world_size=world_size,
                                                even_shards=False)])
    assert torch.equal(seen.sort().values, torch.arange(n))


def test_a_global_batch_that_does_not_divide_is_refused_with_the_fix():
    from cnnlab.distributed import DistributedContext

    ctx = DistributedContext(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"), backend="gloo",
                             timeout_s=10)
    assert ctx.check_batch_size(255) == 85
    with pytest.raises(ConfigError, match=r"batch size 256 does not split equally over 3 processes.*255 or 258"):
        ctx.check_batch_size(256)


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    from cnnlab import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        distributed.setup("cpu")


# ---- real processes ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


# fp32 and NCHW, so that two processes' halves of a batch sum to the one process's gradient to rounding.
RUN_ARGS = ["--device", "cpu", "--epochs", "1", "--train-limit", "1000", "--test-limit", "256",
            "--batch-size", "256", "--seed", "3", "--no-progress", "--precision", "fp32", "--channels-last", "off"]


def test_two_processes_train_and_resume_to_the_same_parameters_as_one(tmp_path, fashion_subset):
    from cnnlab.train import TrainConfig, train
    from cnnlab.train.checkpoint import load_checkpoint

    run_dir, logs, cwd = tmp_path / "ddp", tmp_path / "logs", tmp_path / "cwd"
    logs.mkdir(), cwd.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(logs),
           "train", *RUN_ARGS, "--data-dir", str(fashion_subset), "--no-verify", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1:") == 1  # only rank 0 prints
    assert proc.stdout.count(f"run directory: {run_dir}") == 1
    writes = {rank: [Path(p) for p in (logs / f"writes-rank{rank}.txt").read_text().split("\n") if p]
              for rank in (0, 1)}
    assert not [p for p in writes[1] if tmp_path in p.parents]  # rank 1 wrote nothing: no run dir, no cwd files
    assert {p.name for p in writes[0] if p.parent == run_dir} >= {"checkpoint.pt", "config.json", "metrics.csv",
                                                                   "curves.png", "summary.json"}
    assert not list(cwd.iterdir())
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2

    # A second epoch by resuming, launched the convenient way.
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--nproc", "2", "--resume", str(run_dir),
                           "--epochs", "2", "--no-progress"], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2:") == 1

    # The reference: one process, same global batch, seed and order.  1000 = 3 * 256 + 232, so the
    # last, partial global batch is split too (116 per rank).  PyTorch's layers in fp32, as DDP runs
    # them (the fused LeNet kernel is single-process only).
    train(TrainConfig(device="cpu", epochs=2, train_limit=1000, test_limit=256, batch_size=256, seed=3,
                      data_dir=str(fashion_subset), verify=False, kernel="off", precision="fp32", channels_last="off"),
          run_dir=tmp_path / "single", progress=False, out=io.StringIO())
    ddp, single = load_checkpoint(run_dir), load_checkpoint(tmp_path / "single")
    assert ddp["model_state"].keys() == single["model_state"].keys()
    for name, value in single["model_state"].items():
        torch.testing.assert_close(ddp["model_state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    ddp_summary = json.loads((run_dir / "summary.json").read_text())
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    # All-reduced metrics describe the whole global batch and the whole test set.
    assert ddp_summary["train_loss"] == pytest.approx(single_summary["train_loss"], rel=1e-4)
    assert ddp_summary["train_acc"] == pytest.approx(single_summary["train_acc"], abs=3.5 / 1000)
    assert ddp_summary["test_acc"] == pytest.approx(single_summary["test_acc"], abs=3.5 / 256)


@pytest.mark.parametrize("noticed_first", [0, 1])
def test_the_failure_named_is_the_rank_that_was_killed(tmp_path, noticed_first):
    """Rank 1 is killed; rank 0 then exits with its own error.  Whichever torchrun noticed first, the
    message names the killed rank (the cause), not its peer."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from cnnlab.distributed import describe_failure

    failures = {0: ProcessFailure(0, 100, 2, str(tmp_path / "none")),
                1: ProcessFailure(1, 101, -signal.SIGKILL, str(tmp_path / "none"))}
    failures[noticed_first].timestamp, failures[1 - noticed_first].timestamp = 1000, 1001
    message = describe_failure(ChildFailedError("cnnlab", failures))
    assert message.startswith("training process rank 1 (pid 101) was killed by SIGKILL; torchrun stopped the others")


@pytest.mark.parametrize("noticed_first", [0, 1])
def test_a_survivor_that_torchrun_stopped_is_not_named_as_the_cause(tmp_path, noticed_first):
    """Rank 0 exits with its own error; rank 1, already on its way out, dies of the SIGTERM with which
    torchrun stops the survivors.  The message names rank 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from cnnlab.distributed import describe_failure

    failures = {0: ProcessFailure(0, 100, 2, str(tmp_path / "none")),
                1: ProcessFailure(1, 101, -signal.SIGTERM, str(tmp_path / "none"))}
    failures[noticed_first].timestamp, failures[1 - noticed_first].timestamp = 1000, 1001
    message = describe_failure(ChildFailedError("cnnlab", failures))
    assert message.startswith("training process rank 0 (pid 100) exited with status 2; torchrun stopped the others")


def _workers(launcher: subprocess.Popen) -> dict:
    """The training processes of a ``cnnlab train --nproc N`` launcher by their RANK: its direct
    children (torchrun runs inside the launcher); anything a worker starts in turn inherits RANK too."""
    import psutil

    workers = {}
    for child in psutil.Process(launcher.pid).children():
        with contextlib.suppress(psutil.Error):
            workers[child.environ().get("RANK")] = child
    assert set(workers) >= {"0", "1"}, workers
    return workers


def test_a_killed_rank_stops_the_run_with_an_error_naming_it(tmp_path):
    from cnnlab.train.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    proc = _start_subset_run(tmp_path, run_dir, "--dist-timeout", "30")
    try:
        workers = _workers(proc)
        workers["1"].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() - killed_at < 60
    assert proc.returncode != 0
    assert f"training process rank 1 (pid {workers['1'].pid}) was killed by SIGKILL" in stderr, stderr
    assert f"continue with --resume {run_dir}" in stderr
    assert not workers["0"].is_running()
    ckpt = load_checkpoint(run_dir)  # intact: atomic writes, never half a file
    assert ckpt["state"]["epoch"] >= 1 and ckpt["state"]["step"] == 0


def _start_subset_run(tmp_path, run_dir, *flags) -> subprocess.Popen:
    """``cnnlab train --nproc 2`` on the committed subset in its own process group (as a terminal's
    foreground job), returned once its first checkpoint is on disk."""
    cmd = [sys.executable, "-m", "cnnlab", "train", "--nproc", "2", "--device", "cpu", "--epochs", "500",
           "--train-limit", "1024", "--test-limit", "256", "--no-progress", "--no-verify", *flags,
           "--data-dir", str(REPO / "tests" / "data"), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint from {cmd}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc


def test_ctrl_c_on_the_launcher_exits_130_with_one_true_line(tmp_path, capsys):
    """Ctrl-C in a terminal signals the launcher and its workers (one process group): torchrun's
    launcher printed a 30-line traceback and exited 1, and the workers said "checkpoint saved" at a
    mid-epoch position while the file on disk was the last epoch's.  Meanwhile the launcher holds the
    run directory's lock for all its workers."""
    from cnnlab.cli.main import main
    from cnnlab.train.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    proc = _start_subset_run(tmp_path, run_dir)
    try:
        assert main(["train", "--run-dir", str(run_dir), "--epochs", "1", "--no-progress"]) == 2
        refused = capsys.readouterr().err
        time.sleep(0.5)  # into a later epoch than the one saved, most likely mid-epoch
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert refused.startswith(f"error: run directory {run_dir} is in use by pid {proc.pid} (cnnlab train --nproc 2")
    assert proc.returncode == 130, stderr
    epoch = load_checkpoint(run_dir)["state"]["epoch"]
    assert load_checkpoint(run_dir)["state"]["step"] == 0
    stderr = "".join(l for l in stderr.splitlines(keepends=True) if not l.startswith("speed: "))  # rank 0's step
    assert stderr == (f"interrupted; the checkpoint in {run_dir} (after epoch {epoch}) is kept: "
                      f"continue with `cnnlab train --resume {run_dir}`\n")
    assert not (run_dir / ".cnnlab-lock").exists()


_LEAVE_AND_FAIL = """
import atexit, sys
import torch.distributed as dist
from cnnlab import distributed
from cnnlab.cli.main import main

class Finalized:
    def __del__(self):
        print("finalized", flush=True)

kept = Finalized()   # freed only by the interpreter's finalization
atexit.register(print, "exit handlers ran")
if sys.argv[1] != "never-joined":
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
distributed.teardown(wait_for_peers=sys.argv[1] == "after-success")
sys.stdout.write("buffered, ")   # a pipe is block-buffered: written out only by a flush
sys.argv[1:] = ["evaluate", "no such run"]
raise SystemExit(main())
"""


@pytest.mark.parametrize("ending", ["after-failure", "after-success", "never-joined"])
def test_a_training_process_of_a_distributed_run_skips_finalization(ending):
    """gloo frees a collective on its own thread after it is done (a failed one may still be running
    there), even the barrier of a good run's end; freed during finalization it aborted the process
    (SIGABRT: "terminate called without an active exception"), and the launcher blamed that abort.  A
    process that was in a process group ends before finalization, with its status, its exit handlers run
    and its output flushed; every other process ends as Python does."""
    proc = subprocess.run([sys.executable, "-c", _LEAVE_AND_FAIL, ending], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: the run to evaluate no such run: no such run directory"), proc.stderr
    if ending != "never-joined":
        assert proc.stdout == "buffered, exit handlers ran\n"
    else:
        assert proc.stdout == "buffered, exit handlers ran\nfinalized\n"


def test_a_hung_rank_ends_the_run_when_its_peer_gives_up_and_is_not_blamed_on_sigkill(tmp_path):
    """A worker that stops responding (here: SIGSTOP) makes its peer give up after --dist-timeout; the
    stopped worker could not act on torchrun's SIGTERM, so torchrun waited 30 s more, killed it with
    SIGKILL and the launcher blamed that kill.  Now the launcher continues it, it stops through its
    SIGTERM handler, and the lines say what happened."""
    run_dir = tmp_path / "run"
    proc = _start_subset_run(tmp_path, run_dir, "--dist-timeout", "10")
    try:
        workers = _workers(proc)
        workers["1"].send_signal(signal.SIGSTOP)
        _, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2
    assert "SIGKILL" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("speed: ")]   # rank 0's chosen step
    assert lines[0].startswith("error: rank 0 of 2 lost contact with the other processes (")
    assert lines[0].endswith("; a peer died or hung for over 10s; the last checkpoint is kept: continue with --resume")
    # Continued, rank 1 either meets torchrun's SIGTERM first or finds rank 0 gone first: both say so.
    rank1 = [line for line in lines if line.startswith(("rank 1: ", "error: rank 1 "))]
    assert len(rank1) == 1, stderr
    assert rank1[0].startswith(("rank 1: stopping: torchrun asked this process to stop",
                                "error: rank 1 of 2 lost contact with the other processes (")), stderr
    assert lines[-1] == (f"error: training process rank 0 (pid {workers['0'].pid}) exited with status 2; torchrun "
                         f"stopped the others; the last checkpoint in {run_dir} is kept: continue with --resume {run_dir}")


@pytest.mark.parametrize("system", ["macos", "windows"])
def test_a_launch_ends_cleanly_on_macos_and_windows(tmp_path, fashion_subset, system):
    """macOS: the launcher's watch for stopped workers called os.waitid, which Python there lacks, and a
    finished run exited 1 with an AttributeError.  Windows: torchrun's standalone rendezvous asked for a
    libuv TCP store, which PyTorch there lacks, and no worker started."""
    env = simulated_env(system, OMP_NUM_THREADS="1")   # tests/simulated_os: the system as cnnlab meets it
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--nproc", "2", *RUN_ARGS,
                           "--data-dir", str(fashion_subset), "--no-verify", "--run-dir", str(run_dir)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1:") == 1 and f"run directory: {run_dir}" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
