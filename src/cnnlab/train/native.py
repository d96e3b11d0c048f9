"""The LeNet kernel's fused C passes (``lenet_native.c``): compiled once per machine, loaded with ctypes.

The kernel's work outside its matrix products (conv1 whole, computed directly; conv2's activation and
pooling; the loss) is loops over a few MB that in PyTorch take several operators and several passes
each.  ``lenet_native.c`` is C99 (GNU vector extensions, which GCC and Clang share) with OpenMP
pragmas and no Python or PyTorch headers, so the system C compiler builds it in a few seconds.  The shared
library is cached under ``$CNNLAB_CACHE`` (default ``$XDG_CACHE_HOME/cnnlab`` or ``~/.cache/cnnlab``),
keyed by the source, the compiler, its flags and this CPU's instruction-set flags, and written
atomically (temporary file, then rename), so concurrent runs and machines sharing a home directory
are safe.

Threads: on Linux, PyTorch's CPU wheels run their intra-op threads on libgomp (``libgomp.so.1``).
The library is built with ``-fopenmp`` there, so its parallel loops join the same OpenMP runtime
and thread pool as PyTorch's operators instead of competing with them.  Elsewhere, and with a
compiler that cannot link libgomp (clang without its own OpenMP runtime), it is built without OpenMP
and runs on one thread.

Everything is optional: no compiler, a failed build or ``CNNLAB_NO_NATIVE=1`` leaves :func:`load`
returning None with the reason, and the kernel computes the same passes with PyTorch operators.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("lenet_native.c")
ABI_VERSION = 4
_FLAGS = ["-O3", "-fno-math-errno", "-shared", "-fPIC", "-std=gnu99"]

_ARCH_FLAGS = (["-march=native"], [])
"""Instruction-set flags tried in turn: this CPU's own (AVX-512 on CPUs that have it), then the compiler's
portable default."""

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "lenet_conv1_forward": [_P, _I64, _P, _P, _I64, _INT, _P, _P, _P, _P],
    "lenet_conv1_backward": [_P, _P, _P, _I64, _I64, _INT, _P, _P],
    "lenet_act_pool": [_P, _I64, _INT, ctypes.c_float, _P],
    "lenet_pool_act_backward": [_P, _P, _I64, _INT, ctypes.c_float, _P],
    "lenet_conv_matrix": [_P, _P, _I64, _I64, ctypes.c_float, _P],
    "lenet_conv_fold": [_P, _I64, _I64, ctypes.c_float, _P, _P],
    "lenet_xent": [_P, _P, _I64, _I64, _P, _P, _P, _P],
}


@dataclass(frozen=True)
class NativePasses:
    """The library's functions for one storage type (``bf16`` or ``f32``), by their names without prefix
    and suffix: ``conv1_forward``, ``conv1_backward``, ``act_pool``, ``pool_act_backward``, ``conv_matrix``,
    ``conv_fold``, ``xent``."""

    library: ctypes.CDLL
    suffix: str

    def __getattr__(self, name: str):
        function = getattr(self.library, f"lenet_{name}_{self.suffix}")
        return _labelled(f"cnnlab::{name}", function) if _profiling() else function


def _profiling() -> bool:
    """True while a torch.profiler records (a flag read; record_function itself costs ~8 us a call even
    with no profiler, 1 % of a step for the kernel's seven calls)."""
    return _profiler_enabled()()


@functools.lru_cache(maxsize=1)
def _profiler_enabled():
    import torch

    return getattr(torch._C._autograd, "_profiler_enabled", lambda: False)


def _labelled(label: str, function):
    """``function`` wrapped so a profiler's trace and table show its calls under ``label``, instead of
    as unexplained time between PyTorch's operators."""
    from torch.profiler import record_function

    def call(*args):
        with record_function(label):
            return function(*args)

    return call


def cache_dir() -> Path:
    """``$CNNLAB_CACHE/native``, else ``native/`` in cnnlab's user cache (cnnlab.data.sources.cache_dir)."""
    from cnnlab.data.sources import cache_dir as user_cache

    return Path(os.environ.get("CNNLAB_CACHE") or user_cache()) / "native"


def _compiler() -> str | None:
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _torch_uses_libgomp() -> bool:
    """True where PyTorch's intra-op threads are libgomp's (Linux wheels), so the library can share them."""
    if not sys.platform.startswith("linux"):
        return False
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _build(cc: str, flags: list[str], target: Path) -> str | None:
    """Compile SOURCE into ``target`` atomically; None on success, else the compiler's first error line."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write to {target.parent} ({exc.strerror or exc}); set CNNLAB_CACHE to a writable folder"
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            # The first line that names the problem: a compiler error, or the linker's (it comes before
            # the driver's "linker command failed").
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
                     if any(word in ln for word in ("error", "cannot find", "undefined reference"))] or \
                    (proc.stderr or proc.stdout or f"exit status {proc.returncode}").splitlines()
            return lines[0].strip() if lines else f"exit status {proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(cc: str, flags: list[str], target: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """The library at ``target``, built first if missing; a cached file that does not load (damaged,
    or from another version) is rebuilt once."""
    for attempt in range(2):
        if attempt or not target.exists():
            error = _build(cc, flags, target)
            if error is not None:
                return None, f"building {SOURCE.name} failed: {error}"
        try:
            library = ctypes.CDLL(str(target))
            if library.lenet_native_abi_version() == ABI_VERSION:
                return library, None
            error = f"{target} is a different version of the library"
        except (OSError, AttributeError) as exc:
            error = f"loading {target} failed: {exc}"
    return None, error


@functools.lru_cache(maxsize=None)
def _load_library() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("CNNLAB_NO_NATIVE", "") not in ("", "0"):
        return None, "CNNLAB_NO_NATIVE is set"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"C compiler {cc} does not run ({type(exc).__name__})"
    from cnnlab.train.lenet_kernel import cpu_flags

    flag_set = cpu_flags()
    cpu_id = " ".join(sorted(flag_set)) if flag_set is not None else platform.machine() + platform.processor()
    # In order of preference: this CPU's instruction set (-march=native: the AVX-512/bf16 forms), then a
    # portable build; with OpenMP where PyTorch runs on libgomp, then without it (one thread: compilers
    # that cannot link libgomp's runtime, e.g. clang without libomp).
    threading = [["-fopenmp"], ["-Wno-unknown-pragmas"]] if _torch_uses_libgomp() else [["-Wno-unknown-pragmas"]]
    source, candidates = SOURCE.read_text(), []
    for threads in threading:
        for arch in _ARCH_FLAGS:
            build_flags = _FLAGS + threads + arch
            key = hashlib.sha256("\0".join([source, cc, version, " ".join(build_flags), cpu_id]).encode())
            candidates.append((build_flags, cache_dir() / f"lenet_native-{key.hexdigest()[:16]}.so"))
    # Libraries earlier runs built come first (a compiler that rejects the preferred flags would
    # otherwise fail on them again at every start), then the rest in order of preference.
    errors = {}
    for build_flags, target in sorted(candidates, key=lambda candidate: not candidate[1].exists()):
        library, errors[target] = _open(cc, build_flags, target)
        if library is not None:
            break
    else:
        return None, errors[candidates[0][1]]      # why the preferred build failed
    for suffix in ("bf16", "f32"):
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(library, f"{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, (ctypes.c_int if name == "lenet_xent" else None)
    return library, None


def load(storage: str) -> tuple[NativePasses | None, str | None]:
    """The passes for ``storage`` ("bf16" or "f32") and None, or None and why they are unavailable."""
    if storage not in ("bf16", "f32"):
        return None, f"no native passes for {storage}"
    library, reason = _load_library()
    if library is None:
        return None, reason
    return NativePasses(library, storage), None
