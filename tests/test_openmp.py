"""How a run's CPU threads wait for work (cnnlab.openmp): spinning on an idle machine, sleeping at once
beside other busy programs, and whatever the user set, named in the run's ``speed`` line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab import openmp

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO / "tests" / "data" / "fashion-mnist"


@pytest.mark.parametrize("busy, env, cores, policy", [
    (1.0, {}, 2, "passive"),                              # one busy program on a 2-core machine: 2 + 1 > 2.5
    (0.3, {}, 2, "spin"),                                 # a program waking now and then is not worth 30 %
    (0.6, {}, 8, "passive"),                              # 8 threads on 8 cores and a little more elsewhere
    (1.0, {"OMP_NUM_THREADS": "1"}, 2, "spin"),           # one thread leaves a core to the other program
    (3.0, {"OMP_NUM_THREADS": "4,2"}, 8, "spin"),         # the outer level's count is this run's threads
    (3.0, {"OMP_NUM_THREADS": "6"}, 8, "passive"),
    (1.0, {"OMP_NUM_THREADS": "many"}, 2, "passive"),     # a count OpenMP would not take: one per core
    (None, {}, 2, "spin"),                                # unknown: OpenMP's default
    (0.0, {}, 1, "spin"),                                 # one core: nothing waits
])
def test_threads_wait_passively_only_where_the_machine_would_be_oversubscribed(busy, env, cores, policy):
    choice = openmp.decide(busy, env, cores)
    assert choice.policy == policy
    if busy is not None and cores > 1:
        assert choice.reason == f"{busy:.1f} of {cores} cores busy elsewhere at the start"


@pytest.mark.parametrize("name", openmp.USER_SETTINGS)
def test_a_wait_the_user_set_is_kept(name):
    choice = openmp.decide(2.0, {name: "5"}, 2)
    assert choice.describe() == f"{name}=5 (set in the environment)"


@contextlib.contextmanager
def busy_program():
    """One CPU-bound process for the length of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in openmp.USER_SETTINGS + ("OMP_NUM_THREADS",)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


def test_beside_a_busy_program_the_wait_is_chosen_before_pytorch_loads():
    """OpenMP reads its wait policy once, as PyTorch loads: the choice is made and set before."""
    code = ("import os, sys; from cnnlab import openmp; choice = openmp.choose(); "
            "print(choice.policy, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    with busy_program():
        out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cores = os.cpu_count() or 1
    # The busy program keeps one core (or a share of it, and the rest of the machine only adds): with one
    # thread per core this run would oversubscribe the machine.
    assert out.stdout.split() == (["passive", "PASSIVE", "False"] if cores > 1 else ["spin", "None", "False"])


def test_a_process_that_loaded_pytorch_first_keeps_what_it_loaded_with():
    env: dict[str, str] = {}
    assert sys.modules["torch"] is torch     # imported above, as a script imports it before cnnlab
    choice = openmp.choose(env)
    assert (choice.policy, env) == ("spin", {})
    assert "loaded before cnnlab could choose" in choice.reason


def _speed_line(**extra: str) -> str:
    cmd = [sys.executable, "-m", "cnnlab", "train", "--epochs", "1", "--train-limit", "512", "--test-limit", "256",
           "--no-progress", "--no-verify", "--device", "cpu", "--data-dir", str(FASHION)]
    proc = subprocess.run(cmd, env=_env(**extra), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stderr.splitlines() if line.startswith("speed: "))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: OpenMP has no idle thread to wait")
def test_cnnlab_train_beside_a_busy_program_waits_passively_and_says_so():
    with busy_program():
        line = _speed_line()
    assert "; threads=" in line and ", omp_wait=passive (" in line and "cores busy elsewhere at the start)" in line


def test_cnnlab_train_keeps_the_users_wait_and_says_so():
    line = _speed_line(OMP_WAIT_POLICY="active")
    assert line.endswith(", omp_wait=OMP_WAIT_POLICY=active (set in the environment)")
