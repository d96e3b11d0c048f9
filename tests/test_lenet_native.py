"""The LeNet kernel's C passes (cnnlab.kernels.lenet.native) compute what its PyTorch passes compute.

The reference is the kernel's own PyTorch path (itself checked against autograd in float64 in
test_lenet_kernel.py) and, for bf16, autograd in float32.  Where no C compiler exists the
comparisons are skipped with the reason; the fallback tests run everywhere.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from system_helpers import as_system
from torch import nn

from cnnlab import portable
from cnnlab.kernels.lenet import LeNetKernel, TorchPasses, native
from cnnlab.models import create
from cnnlab.train.engine import init_weights

VARIANTS = [{}, {"activation": "relu"}, {"channels": [8, 12], "dense": [50]}, {"dense": []}]


@functools.lru_cache(maxsize=None)
def _why_unavailable() -> str | None:
    """Why this machine has no C passes (None if it has them), looked up once in the test run's own
    environment."""
    return native.load("f32")[1]


def needs_native():
    reason = _why_unavailable()
    if reason is not None:
        pytest.skip(f"native passes unavailable: {reason}")


def model_and_batch(options, batch, seed=0):
    torch.manual_seed(seed)
    model = create("lenet", **options)
    init_weights(model)
    X = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return model, X, y


@pytest.fixture
def fresh_lookup(monkeypatch, tmp_path):
    """A fresh library lookup (``native.load`` remembers its result per process) building into its own
    cache folder, tmp_path/cache (a test may point CNNLAB_CACHE elsewhere); forgotten again afterwards.
    Yields the folder the libraries go to."""
    _why_unavailable()          # needs_native's answer comes from the test run's environment, not this one
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    native._load_library.cache_clear()
    yield tmp_path / "cache" / "native"
    native._load_library.cache_clear()


def fake_compiler(folder, script: str, monkeypatch) -> None:
    """CC = a shell script (its body after #!/bin/sh) in ``folder``; skips on Windows, which runs none."""
    if portable.WINDOWS:
        pytest.skip("the stand-in compiler is a POSIX shell script")
    compiler = folder / "cc"
    compiler.write_text("#!/bin/sh\n" + script)
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))


def passes_for(dtype, use_c: bool):
    """The C passes for ``dtype`` (which must load) or the PyTorch ones."""
    if not use_c:
        return TorchPasses()
    passes, why = native.load(native.STORAGE[dtype])
    assert passes is not None, why
    return passes


def step(model, X, y, dtype, use_native):
    kernel = LeNetKernel(model, dtype, passes_for(dtype, use_native))
    model.zero_grad(set_to_none=True)
    loss, correct = kernel.forward_backward(X, y)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return loss, correct, grads, kernel.logits(X)


def assert_c_step_equals_pytorch_step(options, batch):
    """float32: the step with the C passes (whichever library native.load finds now) gives the PyTorch
    passes' loss, correct count, gradients and logits."""
    model, X, y = model_and_batch(options, batch)
    loss_ref, correct_ref, grads_ref, logits_ref = step(model, X, y, torch.float32, False)
    loss, correct, grads, logits = step(model, X, y, torch.float32, True)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert int(correct) == int(correct_ref)
    for (name, _), got, want in zip(model.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "seed")
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_float32_native_passes_equal_the_pytorch_passes(options, batch):
    needs_native()
    assert_c_step_equals_pytorch_step(options, batch)


def test_a_profiler_sees_the_c_passes_by_name():
    """Under torch.profiler each C pass is a named range (else its time is an unexplained gap between
    operators), and the step computes the same."""
    needs_native()
    model, X, y = model_and_batch({}, 64)
    _, _, grads_plain, _ = step(model, X, y, torch.float32, True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _, _, grads_profiled, _ = step(model, X, y, torch.float32, True)
    names = {event.key for event in prof.key_averages()}
    assert {"cnnlab::conv1_forward", "cnnlab::act_pool", "cnnlab::xent", "cnnlab::pool_act_backward",
            "cnnlab::conv1_backward", "cnnlab::conv_matrix", "cnnlab::conv_fold"} <= names
    for got, want in zip(grads_profiled, grads_plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"activation": "relu"}], ids=["sigmoid", "relu"])
def test_bf16_native_passes_are_as_close_to_float32_autograd_as_the_pytorch_passes(options):
    """bf16 rounds differently in C (sums rounded once) than in PyTorch (after every add); both must sit
    within bf16's error of the float32 gradients, and the C one no further than 1.5x the PyTorch one."""
    needs_native()
    model, X, y = model_and_batch(options, 256)
    nn.CrossEntropyLoss()(model(X), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    errors = {}
    for use_native in (False, True):
        _, _, grads, _ = step(model, X, y, torch.bfloat16, use_native)
        errors[use_native] = [float((g - w).norm() / w.norm()) for g, w in zip(grads, want)]
    assert max(errors[True]) < 0.1
    assert sum(errors[True]) < 1.5 * sum(errors[False]), errors


@pytest.mark.parametrize("options", [{}, {"activation": "relu"}], ids=["sigmoid", "relu"])
def test_nan_weights_give_a_nan_loss(options):
    """A diverged network must look diverged: NaN goes through the C activation and its bf16 rounding."""
    needs_native()
    model, X, y = model_and_batch(options, 32)
    with torch.no_grad():
        model[0].weight[0, 0, 2, 2] = float("nan")
    for dtype in (torch.bfloat16, torch.float32):
        loss, _ = LeNetKernel(model, dtype, passes_for(dtype, True)).forward_backward(X, y)
        assert math.isnan(float(loss))


def test_library_is_cached_by_content(fresh_lookup, monkeypatch):
    """Built once into CNNLAB_CACHE; a second load reuses the file (no compiler call)."""
    needs_native()
    passes, reason = native.load("bf16")
    assert passes is not None, reason
    built = list(fresh_lookup.glob("lenet_native-*.so"))
    assert len(built) == 1 and not list(fresh_lookup.glob("*.tmp"))
    native._load_library.cache_clear()
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("rebuilt a cached library"))
    assert native.load("f32")[0] is not None
    assert built[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize("system", ["Linux", "Windows"])
def test_without_a_compiler_the_step_uses_the_pytorch_passes(fresh_lookup, monkeypatch, system):
    """Windows usually has no C compiler on PATH: the kernel runs on PyTorch's passes, and says why in one
    line."""
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.steps import choose_step

    as_system(monkeypatch, system)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    passes, why = native.load("bf16")
    assert passes is None and "no C compiler" in why
    model, X, y = model_and_batch({}, 16)
    step = choose_step(TrainConfig(precision="fp32"), model, torch.device("cpu"), loss_fn=nn.CrossEntropyLoss(),
                       batch_size=16)
    assert step.kernel.passes.name == "torch" and "no C compiler" in step.reason
    loss_sum, _ = step(X, y)
    assert math.isfinite(float(loss_sum))


def test_a_failing_compiler_is_reported_in_one_line(fresh_lookup, tmp_path, monkeypatch):
    fake_compiler(tmp_path, "echo 'cc: error: unrecognized command-line option -march=native' >&2\nexit 1\n",
                  monkeypatch)
    passes, why = native.load("f32")
    assert passes is None
    assert why == "building lenet_native.c failed: cc: error: unrecognized command-line option -march=native"
    assert not list(fresh_lookup.glob("*"))     # no half-written library left


def test_a_label_beyond_the_outputs_is_refused():
    """The C loss reads logits by label: a label the network has no output for must be an error, not a read
    out of bounds."""
    needs_native()
    model, X, y = model_and_batch({}, 8)
    y[3] = 10
    with pytest.raises(ValueError, match=r"label is outside 0\.\.9"):
        LeNetKernel(model, torch.bfloat16, passes_for(torch.bfloat16, True)).forward_backward(X, y)


def test_an_unwritable_cache_is_reported_not_raised(fresh_lookup, tmp_path, monkeypatch):
    """A cache folder that cannot be created (here: a file is in the way) leaves the kernel on PyTorch."""
    needs_native()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker))
    passes, why = native.load("bf16")
    assert passes is None
    assert why.startswith("building lenet_native.c failed: cannot write to") and "CNNLAB_CACHE" in why


def test_a_damaged_cached_library_is_rebuilt(tmp_path):
    """A cached file that does not load (e.g. damaged on disk) is rebuilt once.  Fresh processes: a
    library loaded in this one must never be rewritten under it."""
    needs_native()
    import os
    import subprocess
    import sys

    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path)}
    script = "from cnnlab.kernels.lenet import native; p, why = native.load('f32'); print(p is not None, why)"
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first.stdout.split() == ["True", "None"], first.stderr
    (built,) = (tmp_path / "native").glob("lenet_native-*.so")
    built.write_bytes(b"not a shared library")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert second.stdout.split() == ["True", "None"], second.stderr
    assert built.read_bytes() != b"not a shared library"


@pytest.fixture(scope="module")
def portable_cache(tmp_path_factory):
    """One cache folder for the module's portable builds: the library is compiled once."""
    return tmp_path_factory.mktemp("portable-cache")


def use_portable_build(portable_cache, monkeypatch) -> None:
    """Make the next lookup build (or reuse) the library without -march=native."""
    monkeypatch.setenv("CNNLAB_CACHE", str(portable_cache))
    monkeypatch.setattr(native, "_arch_flags", lambda: ([],))


def test_the_portable_build_computes_the_same(fresh_lookup, portable_cache, monkeypatch):
    """Compilers without -march=native (or other CPUs) get the library built for the baseline instruction
    set, where the vector code takes its generic paths (division, polynomial exp, integer bf16 rounding):
    same results as the PyTorch passes."""
    needs_native()
    use_portable_build(portable_cache, monkeypatch)
    assert native.load("f32")[0] is not None
    for options in ({}, {"activation": "relu"}):
        for batch in (7, 256):
            assert_c_step_equals_pytorch_step(options, batch)


@pytest.mark.parametrize("storage, dtype", [("f32", torch.float32), ("bf16", torch.bfloat16)])
def test_conv1_gradient_does_not_depend_on_the_thread_count(storage, dtype):
    """conv1's weight gradient sums fixed batch slices in a fixed order: the same bits on 1 and 2 threads."""
    needs_native()
    passes, _ = native.load(storage)
    torch.manual_seed(0)
    B, C1 = 200, 6
    X = torch.rand(B, 784)
    w, b = torch.randn(C1, 25) * 0.2, torch.randn(C1) * 0.1
    xpad = torch.zeros(-(-B // 16), 32, 32, 16)
    S1, p1 = torch.empty(4 * C1, 196 * B, dtype=dtype), torch.empty(C1 * 196 * B)
    Q = torch.empty(36 * C1 + 1, 25 * B, dtype=dtype)
    passes.fn("conv1_forward")(X.data_ptr(), B, w.data_ptr(), b.data_ptr(), C1, 0, xpad.data_ptr(), S1.data_ptr(),
                         p1.data_ptr(), Q.data_ptr())
    gQ = torch.randn(36 * C1, 25 * B).to(dtype)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            wgrad, bgrad = torch.empty(C1, 25), torch.empty(C1)
            passes.fn("conv1_backward")(gQ.data_ptr(), S1.data_ptr(), xpad.data_ptr(), C1, B, 0, wgrad.data_ptr(),
                                  bgrad.data_ptr())
            results.append((wgrad, bgrad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("build", ["native", "portable"])
@pytest.mark.parametrize("storage, dtype", [("f32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_c_sigmoid_saturates_like_torch(storage, dtype, build, portable_cache, monkeypatch, request):
    """Far-out pre-activations (a diverging run) must give 0 or 1 as torch.sigmoid does, not NaN: a NaN
    here would be reported as a diverged loss.  NaN stays NaN.  Both the AVX-512 build (scalef, reciprocal
    estimate) and the portable one (polynomial exp, division)."""
    needs_native()
    if build == "portable":
        request.getfixturevalue("fresh_lookup")
        use_portable_build(portable_cache, monkeypatch)
    passes, reason = native.load(storage)
    assert passes is not None, reason
    z = torch.tensor([-1e30, -200.0, -100.0, -89.0, -88.0, -50.0, -1.0, 0.0, 1.0, 50.0, 100.0, 1e30,
                      float("inf"), float("-inf"), float("nan"), 3.0])
    n = z.numel()
    Z = z.to(dtype).repeat(4).contiguous()
    pooled = torch.empty(n, dtype=dtype)
    passes.fn("act_pool")(Z.data_ptr(), n, 0, 0.25, pooled.data_ptr())
    want = torch.sigmoid(z.to(dtype).float())
    got = Z[:n].float()
    assert torch.isnan(got[14]) and torch.isnan(pooled[14])
    keep = torch.arange(n) != 14
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5 if dtype == torch.float32 else 8e-3, atol=1e-30)
    torch.testing.assert_close(pooled[keep].float(), got[keep], rtol=8e-3, atol=1e-30)


def test_a_compiler_without_openmp_gets_a_one_thread_build_once(fresh_lookup, tmp_path, monkeypatch):
    """A compiler that cannot link PyTorch's OpenMP runtime (clang without libomp) still gets the C passes,
    built without OpenMP; later starts load that build without retrying the failing ones."""
    needs_native()
    if not native._torch_uses_libgomp():
        pytest.skip("PyTorch does not run on libgomp here: the library is built without OpenMP anyway")
    fake_compiler(tmp_path, "for a in \"$@\"; do [ \"$a\" = -fopenmp ] && { echo 'ld: cannot find -lomp' >&2; "
                            f"exit 1; }}; done\nexec {native._compiler()} \"$@\"\n", monkeypatch)
    passes, why = native.load("f32")
    assert passes is not None, why
    assert len(list(fresh_lookup.glob("*.so"))) == 1
    assert_c_step_equals_pytorch_step({}, 7)
    native._load_library.cache_clear()
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("built again instead of loading the cached build"))
    assert native.load("bf16")[0] is not None


def recording_compiler(folder, monkeypatch, refuse=(), drop=(), add=()):
    """CC = a script in ``folder`` standing in for another system's compiler: it records each call's
    arguments (one line per call in the file it returns), fails on the flags in ``refuse`` with that
    compiler's message, and otherwise runs this machine's compiler without the flags in ``drop`` and
    with those in ``add``."""
    log = folder / "calls.txt"
    checks = "".join(f"    {flag}) echo \"{message}\" >&2; exit 1;;\n" for flag, message in refuse)
    keep = " && ".join(f'[ "$a" != {flag} ]' for flag in drop) or "true"
    fake_compiler(folder, f'echo "$@" >> {log}\n'
                          f'for a in "$@"; do\n  case "$a" in\n{checks}  esac\ndone\n'
                          f'for a in "$@"; do shift; {keep} && set -- "$@" "$a"; done\n'
                          f'exec {native._compiler()} {" ".join(add)} "$@"\n', monkeypatch)
    return log


def builds(log) -> list[list[str]]:
    """The compiler calls in ``log`` that built the library (not the --version question)."""
    return [line.split() for line in log.read_text().splitlines() if "-shared" in line.split()]


def test_on_apple_silicon_the_library_is_built_as_apple_clang_takes_it(fresh_lookup, tmp_path, monkeypatch):
    """Apple's clang has no OpenMP runtime (-fopenmp fails) and older versions refuse -march=native on
    Apple silicon: the library is built for this CPU with -mcpu=native, without OpenMP, as a .dylib,
    and computes what the PyTorch passes compute."""
    needs_native()
    log = recording_compiler(tmp_path, monkeypatch, drop=["-mcpu=native"], refuse=[
        ("-fopenmp", "clang: error: unsupported option '-fopenmp'"),
        ("-march=native", "clang: error: the clang compiler does not support '-march=native'")])
    as_system(monkeypatch, "Darwin", machine="arm64")
    passes, why = native.load("f32")
    assert passes is not None, why
    (built,) = builds(log)
    assert "-mcpu=native" in built and "-fPIC" in built and "-fopenmp" not in built
    assert [path.suffix for path in fresh_lookup.iterdir()] == [".dylib"]
    assert_c_step_equals_pytorch_step({}, 7)


def test_on_windows_a_gcc_builds_a_dll_without_fpic(fresh_lookup, tmp_path, monkeypatch):
    """MinGW's gcc or clang on Windows: no -fPIC (clang refuses it for Windows targets), no OpenMP (PyTorch
    does not run on libgomp there), and the library is a .dll."""
    needs_native()
    log = recording_compiler(tmp_path, monkeypatch, add=["-fPIC"],      # this machine's build needs it
                             refuse=[("-fPIC", "clang: error: unsupported option '-fPIC' for target "
                                               "'x86_64-pc-windows-msvc'")])
    as_system(monkeypatch, "Windows")
    passes, why = native.load("f32")
    assert passes is not None, why
    (built,) = builds(log)
    assert "-march=native" in built and "-fPIC" not in built and "-fopenmp" not in built
    assert [path.suffix for path in fresh_lookup.iterdir()] == [".dll"]
    assert_c_step_equals_pytorch_step({}, 7)


def test_a_mac_without_apples_command_line_tools_does_not_run_their_stub(fresh_lookup, monkeypatch):
    """/usr/bin/cc on a Mac without the command line tools opens an installer dialog: cnnlab does not run
    it, and the kernel takes PyTorch's passes saying why in one line."""
    as_system(monkeypatch, "Darwin", machine="arm64")
    monkeypatch.setenv("CC", "/usr/bin/cc")
    monkeypatch.setattr(native.shutil, "which", lambda name: name if name == "/usr/bin/cc" else None)
    monkeypatch.setattr(portable, "_command_output", lambda *command: None)     # xcode-select -p: no folder
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a[0]}"))
    passes, why = native.load("f32")
    assert passes is None
    assert why == "/usr/bin/cc needs Apple's command line tools, which are not installed (xcode-select --install)"


def test_openmp_is_asked_for_only_where_pytorch_runs_on_libgomp(monkeypatch):
    """The library joins PyTorch's libgomp threads where PyTorch has loaded libgomp (Linux wheels); where
    the system does not list the libraries loaded (macOS, Windows: other OpenMP runtimes), it does not."""
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch is built without OpenMP")
    monkeypatch.setattr(portable, "loaded_libraries", lambda: ["/usr/bin/python3", "/venv/torch/lib/libgomp.so.1"])
    assert native._torch_uses_libgomp()
    monkeypatch.setattr(portable, "loaded_libraries", lambda: ["/usr/bin/python3", "/venv/torch/lib/libiomp5.so"])
    assert not native._torch_uses_libgomp()
    monkeypatch.setattr(portable, "loaded_libraries", lambda: None)
    assert not native._torch_uses_libgomp()
