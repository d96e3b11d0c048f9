"""Training on several processes with ``torch.distributed`` and DistributedDataParallel.

The processes are started by ``torchrun`` (or ``cnnlab train --nproc N``, which runs torchrun's
own launcher), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every process.  From those this module joins the process group (NCCL on CUDA,
one process per GPU; gloo on the CPU), picks the process's device, and gives the engine what it
needs: a model wrapped in DDP, an all-reduce (sum) for the metric tensors, and whether this
process is rank 0 (the only one that prints, shows progress and writes files).

There is no communication code of our own: gradients are averaged by DDP, metrics summed by
``all_reduce``.  A peer that dies is noticed by torchrun, which stops the others at once; a peer
that hangs makes the others' next collective fail after ``timeout_s`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab import portable
from cnnlab.device import resolve_device
from cnnlab.errors import ConfigError, TrainingError

DEFAULT_TIMEOUT_S = 180.0
"""How long a process waits in a collective for its peers before giving up.  It must exceed the
longest gap between two collectives in a healthy run: loading the data at start-up, and rank 0
writing the run directory (plot + checkpoint) after an epoch while the others wait."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, shows progress and writes the run directory; the others only train."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place (the Trainer's ``reduce`` hook)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on this process's device): rank 0's
        parameters are broadcast to every process, then gradients are averaged in ``backward``."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def check_batch_size(self, batch_size: int) -> int:
        """The per-process batch for global batch ``batch_size``; refuses sizes that do not divide,
        because unequal per-process batches would weight examples unequally in DDP's average."""
        return split_batch_size(batch_size, self.world_size)


def split_batch_size(batch_size: int, world_size: int) -> int:
    """``batch_size // world_size``, or a ConfigError naming multiples that split equally (also
    checked by ``cnnlab train --nproc`` before it starts any process)."""
    if batch_size % world_size:
        below = batch_size - batch_size % world_size
        above = below + world_size
        hint = f"{below} or {above}" if below else f"{above}"
        raise ConfigError(f"batch size {batch_size} does not split equally over {world_size} processes; "
                          f"use a multiple of {world_size} such as {hint}")
    return batch_size // world_size


def check_timeout(timeout_s: float) -> float:
    """A usable wait for peers: a positive, finite number of seconds (inf overflows the timedelta)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise ConfigError(f"distributed timeout (--dist-timeout) must be a positive number of seconds, "
                          f"got {timeout_s!r}")
    return timeout_s


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when this process was not started by a launcher."""
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True unless this process is a non-zero rank of a torchrun launch (usable before and after setup)."""
    return _env_int("RANK", 0) == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; "
                          f"start distributed runs with torchrun") from None


def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext | None:
    """Join the process group described by torchrun's environment; None for a single process.

    ``device`` is the run's device setting: ``auto`` or ``cuda`` gives each process the GPU
    ``cuda:LOCAL_RANK`` and the NCCL backend; ``cpu`` (or no GPU) gives gloo.
    """
    world_size = world_size_from_env()
    if world_size <= 1:
        return None
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={world_size} is set but {name} is not; "
                              f"start distributed runs with torchrun or `cnnlab train --nproc N`")
    check_timeout(timeout_s)
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"start at most {torch.cuda.device_count()} processes per node (--nproc_per_node)")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    elif chosen.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not {chosen.type}; "
                          f"use --device cpu")
    _stop_on_sigterm(rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": chosen} if backend == "nccl" else {}))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen,
                              backend=backend, timeout_s=timeout_s)


_sigterm_handler = None   # the handler _stop_on_sigterm installed in this process
_left_process_group = False   # set by teardown: see end_process


def _stop_on_sigterm(rank: int) -> None:
    """torchrun stops the surviving processes with SIGTERM when one fails; say so, and exit through
    Python so ``finally`` blocks run (a half-written temporary file is removed, never renamed)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        print(f"rank {rank}: stopping: torchrun asked this process to stop (another process failed "
              f"or the launch was interrupted)", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    global _sigterm_handler
    signal.signal(signal.SIGTERM, stop)
    _sigterm_handler = stop


def _leaving_on_its_own() -> None:
    """A process that failed is on its way out with an error of its own: torchrun's SIGTERM to the
    survivors has nothing left to stop, and raised in the interpreter's exit it printed a traceback."""
    if (threading.current_thread() is threading.main_thread()
            and _sigterm_handler is not None and signal.getsignal(signal.SIGTERM) is _sigterm_handler):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def teardown(wait_for_peers: bool = False) -> None:
    """Leave the process group (safe to call when none was joined).

    ``wait_for_peers`` (after a run that ended normally) first meets the other processes at a
    barrier, so no process closes its gloo connections while a peer still uses them: a rank that
    left early made a peer abort now and then ("terminate called without an active exception").
    After a failure there is no barrier: a dead peer would never reach it.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        else:
            _leaving_on_its_own()
        global _left_process_group
        _left_process_group = True
        dist.destroy_process_group()


def end_process(status: int) -> None:
    """End this process now with ``status`` if it was in a process group; else return.

    gloo frees a collective on one of its own threads after the collective is done, and a collective
    that failed (a peer died or hung, torchrun's SIGTERM came mid-step) may still be running there.
    Even the barrier at the end of a good run is freed after ``barrier()`` has returned.  Freeing one
    releases tensors, which needs the GIL; during the interpreter's finalization that ends the thread,
    inside a destructor that may not throw: "terminate called without an active exception", SIGABRT,
    and the launcher reports that abort as the run's failure.  So a training process skips finalization:
    by now its lines are printed and its files closed and renamed; the exit handlers run and the
    standard streams are flushed here, as a normal exit would."""
    if not _left_process_group:
        return
    atexit._run_exitfuncs()   # what the interpreter's exit would run first (the book's figures, logging)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):   # none (pythonw), closed, reader gone
            stream.flush()
    os._exit(status)


def lost_peer_error(ctx: DistributedContext, exc: BaseException) -> TrainingError | None:
    """A one-line TrainingError for a collective that failed because a peer died or hung; None
    for any other exception (a bug, which keeps its traceback)."""
    if not isinstance(exc, (dist.DistError, RuntimeError)):
        return None
    text = str(exc)
    markers = ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset",
               "broken pipe", "peer")
    if not isinstance(exc, dist.DistError) and not any(m in text.lower() for m in markers):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return TrainingError(f"rank {ctx.rank} of {ctx.world_size} lost contact with the other processes "
                         f"({first[:160]}); a peer died or hung for over {ctx.timeout_s:g}s; "
                         f"the last checkpoint is kept: continue with --resume")


def describe_failure(exc: BaseException, run_dir: str | None = None) -> str:
    """One line naming the failed rank of a torchrun ``ChildFailedError`` that caused the others to stop:
    the first one killed by a signal, else the first to exit with an error of its own, else the first
    to fail.  (A killed rank's peers exit with an error of their own moments later; torchrun's "first
    failure" is by the time it noticed each, and on a busy machine it could name a peer instead of the
    rank that died.)  A death by SIGTERM is torchrun stopping a survivor: a running worker turns SIGTERM
    into an exit of its own (``_stop_on_sigterm``), so only one already on its way out dies of it."""
    def first(failures):
        rank = min(failures, key=lambda r: failures[r].timestamp)
        return rank, failures[rank]

    killed = {r: f for r, f in exc.failures.items() if f.exitcode < 0 and f.exitcode != -signal.SIGTERM}
    own = {r: f for r, f in exc.failures.items() if f.exitcode > 0}
    if killed:
        rank, failure = first(killed)
    elif own:
        rank, failure = first(own)
    else:
        rank, failure = exc.get_first_failure()
    if failure.exitcode < 0:
        how = f"was killed by {portable.signal_name(-failure.exitcode)}"
    else:
        how = f"exited with status {failure.exitcode}"
    if run_dir is not None and os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        after = f"the last checkpoint in {run_dir} is kept: continue with --resume {run_dir}"
    else:
        after = "no checkpoint had been written yet: start the run again"
    return f"training process rank {rank} (pid {failure.pid}) {how}; torchrun stopped the others; {after}"


def check_launch(device: str) -> None:
    """Refuse, in one line and before any process starts, a ``--nproc`` run that this PyTorch cannot make
    with ``device``: no ``torch.distributed`` at all, CUDA without NCCL (PyTorch for Windows and macOS),
    a device with no distributed backend (MPS).  Otherwise each worker would fail with the same error."""
    if not dist.is_available():
        raise ConfigError(f"--nproc needs torch.distributed, which this PyTorch {torch.__version__} was built without; "
                          f"train in one process (leave out --nproc)")
    chosen = resolve_device(device)
    if chosen.type == "cuda" and not dist.is_nccl_available():
        raise ConfigError(f"--nproc on CUDA needs NCCL, which PyTorch {torch.__version__} on {portable.SYSTEM} "
                          f"does not have; use --device cpu to train on the CPU with gloo")
    if chosen.type == "cpu" and not dist.is_gloo_available():
        raise ConfigError(f"--nproc on the CPU needs gloo, which this PyTorch {torch.__version__} was built without; "
                          f"train in one process (leave out --nproc)")
    if chosen.type not in ("cuda", "cpu"):
        raise ConfigError(f"--nproc trains on CUDA GPUs (NCCL) or the CPU (gloo); {chosen.type} has no distributed "
                          f"backend: use --device cpu")


def launch(nproc: int, cli_args: list[str], run_dir: str | None = None) -> int:
    """Run ``cnnlab <cli_args>`` in ``nproc`` processes on this machine through torchrun's launcher
    (``--standalone``: a local rendezvous on a free port).  Returns 0, or raises TrainingError
    naming the first process that failed.

    When OMP_NUM_THREADS is unset, each process gets an equal share of the CPU cores (torchrun's
    own default is one thread per process)."""
    # torchrun's launcher costs ~25-60 ms of a start: only --nproc pays it, not every command.
    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415  launcher only
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415  launcher only
    from torch.distributed.run import parse_args, run  # noqa: PLC0415  launcher only

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {nproc!r}")
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        # A stopped worker (SIGSTOP, a debugger) cannot act on the SIGTERM torchrun sends it once a peer has
        # failed: torchrun waited 30 s before its SIGKILL, and the kill was reported as the run's cause.
        # Continued when a peer exits, it stops at once through its SIGTERM handler.
        with portable.local_rendezvous() as (rendezvous, env), _quiet_launcher(), \
                portable.waking_stopped_children():
            os.environ.update(env)   # read by torchrun here and by the workers, which inherit it
            run(parse_args([*rendezvous, f"--nproc_per_node={nproc}", "-m", "cnnlab", *cli_args]))
    except ChildFailedError as exc:
        raise TrainingError(describe_failure(exc, run_dir)) from None
    except SignalException as exc:  # torchrun passed the signal on to the workers and waited for them
        raise LaunchInterrupted(int(exc.sigval)) from None
    return 0


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """torchrun's warnings (each signal it passes on, each process it stops) only repeat what the one
    line cnnlab prints for a failure or an interrupt says."""
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.startswith("torch.distributed.elastic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.CRITICAL))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class LaunchInterrupted(Exception):
    """The ``--nproc`` launcher got a signal (Ctrl-C: SIGINT) and stopped its workers."""

    def __init__(self, signum: int):
        super().__init__(portable.signal_name(signum))
        self.signum = signum
