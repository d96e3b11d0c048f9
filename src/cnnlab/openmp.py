"""How the CPU threads of a run wait for work: chosen for the machine as it is when the run starts.

PyTorch's CPU operators and the LeNet kernel's C passes share one OpenMP thread pool.  Between two
parallel regions its idle threads spin for a while (libgomp: about 300,000 polls) so that the next
region starts at once.  On an idle machine that is the fastest.  When another program keeps a core
busy, a spinning thread takes the core from it and from this run's own working thread, which then
waits for a time slice at the end of every region: on a 2-core machine with one other CPU-bound
process the book's recipe ran at a fifth of its idle speed, against about half (a fair share) with
threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``), which on the idle machine costs about 30 %
(``benchmarks/busy_machine.py``, ``benchmarks/RESULTS.md``).

So a command that trains measures, before PyTorch loads (OpenMP reads its wait policy once, as it
loads), how many cores other programs keep busy over 50 ms, and asks for passive waiting when they
would leave this run's threads fewer cores than it has threads.  A policy the user set
(``OMP_WAIT_POLICY``, libgomp's ``GOMP_SPINCOUNT``, Intel's and LLVM's ``KMP_BLOCKTIME``) is kept.
The run's ``speed`` line says what was chosen and why.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping, MutableMapping

from cnnlab import portable

USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Environment variables by which a user sets how OpenMP's threads wait (OpenMP's own, libgomp's, and
the Intel and LLVM runtimes' that PyTorch uses on Windows and macOS)."""

MARGIN_CORES = 0.5
"""How far the machine may be oversubscribed (this run's threads plus the cores busy elsewhere, against
its cores) before threads wait passively: a program that wakes now and then is not worth 30 %."""

SAMPLE_S = 0.05
"""How long the machine is watched before a run (a few hundredths of its start-up)."""


@dataclass(frozen=True)
class WaitChoice:
    """How OpenMP's idle threads wait in this process, and why."""

    policy: str          # "passive", "spin" (OpenMP's default) or the user's setting, as set
    reason: str

    def describe(self) -> str:
        return f"{self.policy} ({self.reason})"


def decide(busy_elsewhere: float | None, env: Mapping[str, str], cores: int) -> WaitChoice:
    """The wait policy for a run about to start, from the cores other programs keep busy (None: unknown)
    and the environment (a user's setting wins; ``OMP_NUM_THREADS`` is this run's thread count, else one
    thread per core)."""
    user = _user_setting(env)
    if user is not None:
        return user
    if cores <= 1:
        return WaitChoice("spin", "one core: no thread waits for another")
    if busy_elsewhere is None:
        return WaitChoice("spin", "OpenMP's default: how busy the CPUs are is not known here")
    threads = _threads(env, cores)
    seen = f"{busy_elsewhere:.1f} of {cores} cores busy elsewhere at the start"
    if threads + busy_elsewhere > cores + MARGIN_CORES:
        return WaitChoice("passive", seen)
    return WaitChoice("spin", seen)


def _user_setting(env: Mapping[str, str]) -> WaitChoice | None:
    name = next((name for name in USER_SETTINGS if env.get(name)), None)
    return None if name is None else WaitChoice(f"{name}={env[name]}", "set in the environment")


def _threads(env: Mapping[str, str], cores: int) -> int:
    value = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else cores


_chosen: WaitChoice | None = None


def choose(env: MutableMapping[str, str] = os.environ, sample_s: float = SAMPLE_S) -> WaitChoice:
    """Decide how this process's OpenMP threads wait, and ask for it (``OMP_WAIT_POLICY``) if PyTorch has not
    loaded yet; a process that already loaded it keeps what it loaded with.  Returns the choice, which
    :func:`chosen` returns later."""
    global _chosen
    if "torch" in sys.modules:
        _chosen = _user_setting(env) or WaitChoice("spin", "OpenMP's default: PyTorch was loaded before cnnlab "
                                                           "could choose")
        return _chosen
    cores = os.cpu_count() or 1
    _chosen = decide(portable.busy_cores_elsewhere(sample_s) if cores > 1 else 0.0, env, cores)
    if _chosen.policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return _chosen


def chosen() -> WaitChoice:
    """How this process's OpenMP threads wait (chosen now if no command chose before PyTorch loaded)."""
    return _chosen or choose()
