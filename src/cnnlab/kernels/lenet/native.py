"""The LeNet kernel's passes in C (``lenet_native.c``): compiled once per machine, loaded with ctypes.

The kernel's work outside its matrix products (conv1 whole, computed directly; conv2's activation and
pooling; the loss) is loops over a few MB that in PyTorch take several operators and several passes
each.  ``lenet_native.c`` is C99 (GNU vector extensions, which GCC and Clang share) with OpenMP
pragmas and no Python or PyTorch headers, so the system C compiler builds it in a few seconds.  The shared
library is cached under ``$CNNLAB_CACHE/native`` (default ``native/`` in ``$XDG_CACHE_HOME/cnnlab`` or
``~/.cache/cnnlab``),
keyed by the source, the compiler, its flags and this CPU's instruction-set flags, and written
atomically (temporary file, then rename), so concurrent runs and machines sharing a home directory
are safe.

Threads: on Linux, PyTorch's CPU wheels run their intra-op threads on libgomp (``libgomp.so.1``).
The library is built with ``-fopenmp`` there, so its parallel loops join the same OpenMP runtime
and thread pool as PyTorch's operators instead of competing with them.  Elsewhere, and with a
compiler that cannot link libgomp (clang without its own OpenMP runtime), it is built without OpenMP
and runs on one thread.

Systems: on macOS the compiler is usually Apple's clang, which has no OpenMP runtime (PyTorch's macOS
wheels do not run on libgomp either, so none is asked for) and on Apple silicon takes ``-mcpu=native``
for this CPU's instruction set; the library is a ``.dylib``.  Windows usually has no C compiler on
PATH, so the kernel takes PyTorch's passes; MinGW's gcc or clang builds a ``.dll`` (clang for MSVC
exports none of the functions, so loading fails, in one line, and PyTorch's passes run).  The loaders
do not care about the suffix (ctypes is given the full path): it is for people looking in the cache.

Everything is optional: no compiler or a failed build leaves :func:`load` returning None with the
reason, and the kernel computes the same passes with PyTorch operators (``kernel.TorchPasses``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.profiler import record_function

from cnnlab import portable
from cnnlab.portable import user_cache_dir

SOURCE = Path(__file__).with_name("lenet_native.c")
ABI_VERSION = 4


def _flags() -> list[str]:
    """The flags of every build (Windows' DLLs are position-independent without -fPIC, which clang
    refuses there)."""
    return ["-O3", "-fno-math-errno", "-shared", *([] if portable.WINDOWS else ["-fPIC"]), "-std=gnu99"]


def _arch_flags() -> tuple[list[str], ...]:
    """Instruction-set flags tried in turn: this CPU's own (AVX-512 on CPUs that have it), then the
    compiler's portable default.  Apple's clang takes -mcpu=native on Apple silicon (older versions
    refuse -march=native there)."""
    if portable.MACOS and platform.machine() == "arm64":
        return ["-mcpu=native"], []
    return ["-march=native"], []


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


def _labelled(label: str, function):
    """``function`` wrapped so a profiler's trace and table show its calls under ``label``, instead of
    as unexplained time between PyTorch's operators (``record_function`` costs ~8 us a call without a
    profiler: ~1 % of the kernel's step, ``benchmarks/fast_paths.py``)."""
    def call(*args):
        with record_function(label):
            return function(*args)

    return call


def cache_dir() -> Path:
    """``$CNNLAB_CACHE/native``, else ``native/`` in cnnlab's user cache."""
    return Path(os.environ.get("CNNLAB_CACHE") or user_cache_dir()) / "native"


def _compiler() -> str | None:
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _torch_uses_libgomp() -> bool:
    """True where PyTorch's intra-op threads are libgomp's (Linux wheels), so the library can share them.
    (PyTorch's macOS and Windows wheels run on other OpenMP runtimes, which the system does not list.)"""
    libraries = portable.loaded_libraries()
    if libraries is None or "OpenMP" not in torch.__config__.parallel_info():
        return False
    return any("libgomp" in library for library in libraries)


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
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    blocked = portable.compiler_blocked(cc)
    if blocked is not None:
        return None, blocked
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"C compiler {cc} does not run ({type(exc).__name__})"
    flag_set = portable.cpu_flags()
    cpu_id = " ".join(sorted(flag_set)) if flag_set is not None else platform.machine() + platform.processor()
    # In order of preference: this CPU's instruction set (see _arch_flags: the AVX-512/bf16 forms), then a
    # portable build; with OpenMP where PyTorch runs on libgomp, then without it (one thread: compilers
    # that cannot link libgomp's runtime, e.g. clang without libomp).
    threading = [["-fopenmp"], ["-Wno-unknown-pragmas"]] if _torch_uses_libgomp() else [["-Wno-unknown-pragmas"]]
    source, candidates, suffix = SOURCE.read_text(encoding="utf-8"), [], portable.shared_library_suffix()
    for threads in threading:
        for arch in _arch_flags():
            build_flags = _flags() + threads + arch
            key = hashlib.sha256("\0".join([source, cc, version, " ".join(build_flags), cpu_id]).encode())
            candidates.append((build_flags, cache_dir() / f"lenet_native-{key.hexdigest()[:16]}{suffix}"))
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


def load(storage: str) -> tuple["CPasses | None", str | None]:
    """The C passes for ``storage`` ("bf16" or "f32") and None, or None and why they are unavailable."""
    if storage not in ("bf16", "f32"):
        return None, f"no C passes for {storage}"
    library, reason = _load_library()
    if library is None:
        return None, reason
    return CPasses(library, storage), None


STORAGE = {torch.bfloat16: "bf16", torch.float32: "f32"}
"""The C passes' name for each activation dtype they store."""


class CPasses:
    """The kernel's passes outside its matrix products as the C library's loops, for one storage type
    (``bf16`` or ``f32``); the same interface as ``kernel.TorchPasses``.  They take float32 parameters.
    The pooled map they hand on is the map itself, so the first dense layer carries no extra factor."""

    name = "c"
    dense_scale = 1.0

    def __init__(self, library: ctypes.CDLL, suffix: str):
        self.library, self.suffix = library, suffix
        self._functions = {}
        for name in _SIGNATURES:
            short = name[len("lenet_"):]
            self._functions[short] = _labelled(f"cnnlab::{short}", getattr(library, f"{name}_{suffix}"))

    def fn(self, name: str):
        """The library's function ``name`` (``conv1_forward``, ``act_pool``, ...) for this storage type,
        labelled ``cnnlab::name`` for profilers."""
        return self._functions[name]

    def matrix(self, k, conv, index, scale: float) -> torch.Tensor:
        cout, width = conv.out_channels, 36 * conv.in_channels + 1
        out = torch.empty(4 * cout, width, dtype=k.dtype)
        weight, bias = conv.weight.detach().contiguous(), conv.bias.detach().contiguous()
        self.fn("conv_matrix")(weight.data_ptr(), bias.data_ptr(), cout, conv.in_channels, scale, out.data_ptr())
        return out

    def fold(self, grad, conv, index, scale: float):
        weight, bias = torch.empty_like(conv.weight), torch.empty_like(conv.bias)
        self.fn("conv_fold")(grad.contiguous().data_ptr(), conv.out_channels, conv.in_channels, scale,
                              weight.data_ptr(), bias.data_ptr())
        return weight, bias

    def buffers(self, k, batch: int) -> dict[str, torch.Tensor]:
        dt, c1, c2 = k.dtype, k.c1, k.c2
        padded = -(-batch // 16) * 16     # the C passes work on 16 images at a time
        buf = {"Q": torch.empty(36 * c1 + 1, 25 * batch, dtype=dt),
               "xpad": torch.zeros(padded // 16, 32, 32, 16), "Z1": torch.empty(4 * c1, 196 * batch, dtype=dt),
               "Z2": torch.empty(4 * c2, 25 * batch, dtype=dt), "f": torch.empty(c2 * 25, batch, dtype=dt),
               "scratch": torch.empty(c1 * 196 * batch)}
        buf["Q"][-1] = 1      # the bias row
        return buf

    def backward_buffers(self, k, buf, batch: int) -> None:
        if "gQ" not in buf:
            buf.update(gz2=torch.empty(4 * k.c2, 25 * batch, dtype=k.dtype),
                       gQ=torch.empty(36 * k.c1, 25 * batch, dtype=k.dtype))

    def conv_forward(self, k, X, W2, buf):
        B, c1, c2 = X.shape[0], k.c1, k.c2
        X = X.reshape(B, 784).to(torch.float32).contiguous()
        w1, b1 = k.conv1.weight.detach().contiguous(), k.conv1.bias.detach().contiguous()
        S1, Q = buf["Z1"], buf["Q"]
        self.fn("conv1_forward")(X.data_ptr(), B, w1.data_ptr(), b1.data_ptr(), c1, k.relu, buf["xpad"].data_ptr(),
                                  S1.data_ptr(), buf["scratch"].data_ptr(), Q.data_ptr())
        Z2 = torch.mm(W2, Q, out=buf["Z2"])
        f = buf["f"]     # the pooled map itself (the C pass applies the 1/4)
        self.fn("act_pool")(Z2.data_ptr(), c2 * 25 * B, k.relu, 0.25, f.data_ptr())
        return f, (None, Q, S1.view(4, c1 * 196 * B), Z2.view(4, c2 * 25 * B))

    def xent(self, k, h, y):
        K, B = h.shape
        h, y = h.contiguous(), y.to(torch.int64).contiguous()
        g, bias_grad = torch.empty(K, B, dtype=k.dtype), torch.empty(K)
        loss, correct = torch.empty(()), torch.empty((), dtype=torch.int64)
        if self.fn("xent")(h.data_ptr(), y.data_ptr(), K, B, g.data_ptr(), bias_grad.data_ptr(), loss.data_ptr(),
                            correct.data_ptr()):
            raise ValueError(f"a label is outside 0..{K - 1}, the classes this network outputs")
        return loss, correct, g, bias_grad

    def conv2_backward(self, k, g, s2, buf, batch: int) -> torch.Tensor:
        g, gz2 = g.contiguous(), buf["gz2"]
        self.fn("pool_act_backward")(g.data_ptr(), s2.data_ptr(), k.c2 * 25 * batch, k.relu, 0.25, gz2.data_ptr())
        return gz2

    def conv1_backward(self, k, W2t, gz2, saved, buf, batch: int):
        gQ = torch.mm(W2t, gz2, out=buf["gQ"])
        weight, bias = torch.empty_like(k.conv1.weight), torch.empty_like(k.conv1.bias)
        self.fn("conv1_backward")(gQ.data_ptr(), saved[2].data_ptr(), buf["xpad"].data_ptr(), k.c1, batch, k.relu,
                                   weight.data_ptr(), bias.data_ptr())
        return [(k.conv1.weight, weight), (k.conv1.bias, bias)]
