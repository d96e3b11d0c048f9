"""Fuzzing the command line: hostile flags, run directories, data files and images never reach a traceback.

Every example runs ``cnnlab.cli.main(argv)`` in this process and accepts exactly three outcomes: success
(exit 0), cnnlab's own error (exit 2, the last line on stderr ``error: ...`` and no other error line),
or argparse's usage error (SystemExit 2).  Anything else (an exception, another exit status) fails the
test and hypothesis shrinks it to the smallest argv and files that show it.

Each test runs a bounded number of examples so the file stays well under a minute; maintainers run
more with ``CNNLAB_FUZZ_EXAMPLES=2000`` (see docs/robustness.md).

Flags get non-finite and out-of-range numbers (``--lr 1e39``, ``--epochs 1e20``, ``nan`` anywhere), and
a run's config.json and checkpoint.pt get crafted fields (a list for config.json, ``state.sums`` a
string, a huge ``input_size``) as well as random bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO / "tests" / "data"
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

PENDING: dict[str, str] = {}
"""Strategies held back (name -> what they would fuzz) while the checks that make them pass are missing:
none are."""

MAINTAINER_EXAMPLES = int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(examples: int):
    """``examples`` per test in CI, or ``$CNNLAB_FUZZ_EXAMPLES``; no deadline (a training takes seconds),
    no example database (nothing written into the checkout)."""
    return settings(max_examples=MAINTAINER_EXAMPLES or examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``'s exit status and stderr; fails unless the outcome is one of the three accepted."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:   # argparse: --help (0) or a usage error (2)
            assert exc.code in (0, 2), f"SystemExit({exc.code!r}) from {argv}"
            return int(exc.code), err.getvalue()
    text = err.getvalue()
    assert "Traceback" not in text, f"{argv}:\n{text}"
    if code == 2:
        lines = text.rstrip("\n").splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert lines and lines[-1].startswith("error: ") and len(errors) == 1, f"{argv}:\n{text}"
    else:
        assert code == 0, f"exit {code} from {argv}:\n{text}"
    return code, text


@contextlib.contextmanager
def scratch():
    """A fresh folder, also the working directory (default run directories land in it)."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)


@pytest.fixture(autouse=True)
def forget_loaded_data():
    from cnnlab.data.sources import forget_loaded

    forget_loaded()
    yield
    forget_loaded()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    code, err = run_cli(["train", "--data-dir", str(SUBSET), "--no-verify", "--run-dir", str(run), "--epochs", "1",
                         "--train-limit", "128", "--test-limit", "64", "--batch-size", "64", "--device", "cpu",
                         "--no-progress"])
    assert code == 0, err
    return run


# ---- values ---------------------------------------------------------------------------------------

def enabled(name: str) -> bool:
    """Whether the strategies of ``name`` (a key of PENDING while held back) run."""
    return name not in PENDING

# Hostile numbers join the ordinary ones unless PENDING holds "flag numbers" back.
hostile_numbers = st.sampled_from(["nan", "inf", "-inf", "1e39", "1e20", "-0.0", "1e308", "9" * 30, "0x10", "1_0"])
small_ints = st.integers(-3, 300).map(str)
small_floats = st.floats(-2.0, 10.0, allow_nan=False, allow_infinity=False).map(repr)
if enabled("flag numbers"):
    small_ints = st.one_of(small_ints, hostile_numbers)
    small_floats = st.one_of(small_floats, hostile_numbers)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
model_names = st.sampled_from(["lenet", "lenet_bn", "lenet_wide", "vgg_mini", "resnet_mini", "nin_mini",
                               "alexnet_mini", "googlenet_mini", "densenet_mini", "no-such-model", ""])


def flag(name, values) -> st.SearchStrategy:
    return st.tuples(name if isinstance(name, st.SearchStrategy) else st.just(name), values)


NUMBER_FLAGS = ["--epochs", "--lr", "--momentum", "--weight-decay", "--warmup-epochs", "--lr-gamma",
                "--label-smoothing", "--erase-prob", "--batch-size", "--train-limit", "--dist-timeout"]
TRAIN_FLAGS = st.one_of(
    *([flag(st.sampled_from(NUMBER_FLAGS), hostile_numbers)] if enabled("flag numbers") else []),
    flag("--train-limit", st.integers(-3, 200).map(str)),
    flag("--test-limit", st.integers(-3, 200).map(str)),
    flag("--batch-size", st.integers(-2, 200).map(str)),
    flag("--eval-batch-size", st.integers(-2, 300).map(str)),
    flag("--lr", st.floats(-1.0, 5.0, allow_nan=False).map(repr)),
    flag("--optimizer", st.sampled_from(["sgd", "adam", "adamw", "lion"])),
    flag("--momentum", small_floats),
    flag("--nesterov", st.just(None)),
    flag("--weight-decay", small_floats),
    flag("--schedule", st.sampled_from(["constant", "cosine", "onecycle", "step", "linear"])),
    flag("--warmup-epochs", small_floats),
    flag("--lr-step-epochs", small_ints),
    flag("--lr-gamma", small_floats),
    flag("--label-smoothing", small_floats),
    flag("--augment", st.sampled_from(["crop", "flip", "erase", "crop,flip", "none", "", "bogus", "crop,,flip"])),
    flag("--crop-padding", st.integers(-2, 6).map(str)),
    flag("--erase-prob", small_floats),
    flag("--init", st.sampled_from(["xavier", "default", "he"])),
    flag("--seed", st.integers(-5, 2**63).map(str)),
    flag("--model", model_names),
    flag("--option", st.sampled_from(["activation=relu", "activation=tanh", "pooling=max", "pooling=avg",
                                      "channels=[4,8]", "bogus=1", "activation=", "=1", "x", "width=-1",
                                      "dropout=0.5", "dropout=2"])),
    flag("--kernel", st.sampled_from(["auto", "on", "off"])),
    flag("--precision", st.sampled_from(["auto", "fp32", "bf16"])),
    flag("--channels-last", st.sampled_from(["auto", "on", "off"])),
    flag("--tta", st.sampled_from(["none", "flip", "flip-shift"])),
    flag("--dataset", st.sampled_from(["fashion-mnist", "mnist", "cifar10", ""])),
    flag("--name", st.sampled_from(["a", "..", "x/y", "", " ", "ok-name"])),
    flag("--run-dir", st.sampled_from(["", "r1", "r1/sub", "/dev/null/x"])),
    flag("--resume", st.sampled_from(["", "nowhere", "r1"])),
    flag("--nproc", st.sampled_from(["1", "0", "-1"])),
    flag("--bogus-flag", st.just(None)),
)


def flatten(pairs) -> list[str]:
    return [part for name, value in pairs for part in ([name] if value is None else [name, value])]


# ---- flags ----------------------------------------------------------------------------------------

@fuzz_settings(4)
@given(extra=st.lists(TRAIN_FLAGS, max_size=5))
def test_train_with_random_flags(extra):
    with scratch():
        base = ["train", "--data-dir", str(SUBSET), "--no-verify", "--epochs", "1", "--train-limit", "96",
                "--test-limit", "64", "--device", "cpu", "--no-progress"]
        run_cli(base + flatten(extra))


OTHER_COMMANDS = st.one_of(
    st.tuples(st.just(["summary"]), st.lists(st.one_of(
        flag("--model", model_names), flag("--input-size", st.integers(-2, 160).map(str)),
        flag("--in-channels", st.integers(-1, 4).map(str)), flag("--num-classes", st.integers(-1, 20).map(str)),
        flag("--option", st.sampled_from(["activation=relu", "bogus=1", "channels=[1]", "x"]))), max_size=4)),
    st.tuples(st.just(["models", "--compact"]),   # the full list builds the 224-pixel models: seconds each
              st.lists(flag("--family", st.sampled_from(["lenet", "vgg", "nope", ""])), max_size=1)),
    st.tuples(st.just(["data", "info", "--data-dir", str(SUBSET)]), st.lists(st.one_of(
        flag("--no-verify", st.just(None)), flag("--dataset", st.sampled_from(["mnist", "fashion-mnist", "x"]))),
        max_size=2)),
    st.tuples(st.just(["data", "show", "--data-dir", str(SUBSET), "--no-verify"]), st.lists(st.one_of(
        flag("--split", st.sampled_from(["train", "test", "val"])), flag("--n", st.integers(-2, 40).map(str)),
        flag("--start", st.integers(-3, 2100).map(str)), flag("--ncols", st.integers(-1, 12).map(str)),
        flag("--scale", st.floats(-1.0, 3.0, allow_nan=False).map(repr)),
        flag("--out", st.sampled_from(["g.png", "g.svg", "g.xyz", "", "sub/g.png", "/dev/null/g.png"]))),
        max_size=4)),
)


@fuzz_settings(20)
@given(command=OTHER_COMMANDS)
def test_other_commands_with_random_flags(command):
    base, extra = command
    with scratch():
        argv = base + flatten(extra)
        if argv[:2] == ["data", "show"] and "--out" not in argv:
            argv += ["--out", "grid.png"]
        run_cli(argv)


RUN_COMMANDS = st.one_of(
    st.tuples(st.just("evaluate"), st.lists(st.one_of(
        flag("--split", st.sampled_from(["train", "test"])), flag("--out", st.sampled_from(["c.png", "c.bad", ""])),
        flag("--device", st.sampled_from(["cpu", "tpu", "cuda:99"]))), max_size=2)),
    st.tuples(st.just("predict"), st.lists(st.one_of(
        flag("--index", st.integers(-2, 70).map(str)), flag("--top-k", st.integers(-1, 12).map(str)),
        flag("--invert", st.sampled_from(["auto", "yes", "no"]))), min_size=1, max_size=3)),
    st.tuples(st.just("inspect"), st.lists(st.one_of(
        flag("--classes", st.sampled_from(["coat,pullover", "0,1", "99", "nope", ",", ""])),
        flag("--test-limit", st.integers(-1, 70).map(str)),
        flag("--max-misclassified", st.integers(-1, 30).map(str))), max_size=2)),
    st.tuples(st.just("train"), st.lists(st.one_of(
        flag("--epochs", st.integers(-1, 2).map(str)), flag("--lr", st.just("0.1")),
        flag("--device", st.sampled_from(["cpu", "cuda:7"])), flag("--no-progress", st.just(None))), max_size=2)),
)


def run_argv(command: str, run: Path, extra) -> list[str]:
    if command == "train":
        return ["train", "--resume", str(run), "--no-progress", *flatten(extra)]
    return [command, str(run), "--no-verify", *(["--device", "cpu"] if command != "inspect" else []),
            *flatten(extra)]


@fuzz_settings(10)
@given(command=RUN_COMMANDS)
def test_trained_run_commands_with_random_flags(trained_run, command):
    with scratch() as folder:
        run = folder / "run"
        shutil.copytree(trained_run, run)
        run_cli(run_argv(*command[:1], run, command[1]))


# ---- files ----------------------------------------------------------------------------------------

@st.composite
def broken_bytes(draw, original: bytes) -> bytes:
    """Random bytes, a truncation, a few flipped bytes, or random bytes gzipped."""
    how = draw(st.sampled_from(["random", "truncate", "flip", "gzip"]))
    if how == "random":
        return draw(st.binary(max_size=2048))
    if how == "truncate":
        return original[:draw(st.integers(0, len(original)))]
    if how == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    return gzip.compress(draw(st.binary(max_size=512)))


@st.composite
def idx_files(draw, original: bytes) -> bytes:
    """Broken bytes, or a well-formed IDX header with random type, rank and dimensions over random data."""
    if draw(st.booleans()):
        return draw(broken_bytes(gzip.decompress(original) if original[:2] == b"\x1f\x8b" else original))
    type_code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]))
    dims = draw(st.lists(st.integers(0, 40), min_size=0, max_size=4))
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return header + draw(st.binary(max_size=4096))


@fuzz_settings(30)
@given(data=st.data(), stem=st.sampled_from(STEMS), command=st.sampled_from(["info", "show", "train"]))
def test_random_idx_files(data, stem, command):
    with scratch() as folder:
        copy = folder / "fm"
        shutil.copytree(SUBSET / "fashion-mnist", copy)
        target = copy / f"{stem}.gz"
        payload = data.draw(idx_files(target.read_bytes()))
        plain = data.draw(st.booleans())
        target.unlink()
        if plain:
            (copy / stem).write_bytes(payload)
        else:
            target.write_bytes(payload)
        argv = {"info": ["data", "info", "--data-dir", str(copy), "--no-verify"],
                "show": ["data", "show", "--data-dir", str(copy), "--no-verify", "--out", "g.png", "--n", "4",
                         "--split", "train" if stem.startswith("train") else "test"],
                "train": ["train", "--data-dir", str(copy), "--no-verify", "--epochs", "1", "--train-limit", "64",
                          "--test-limit", "32", "--device", "cpu", "--no-progress"]}[command]
        run_cli(argv)


IMAGE_MODES = ["1", "L", "P", "I;16", "I", "F", "RGB", "RGBA", "CMYK", "LA", "PA", "YCbCr", "HSV", "I;16B"]


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """A real image of a random mode, size and format (maybe then broken), or random bytes."""
    from PIL import Image

    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(["x.png", "x.jpg", "x"])), draw(st.binary(max_size=1024))
    mode = draw(st.sampled_from(IMAGE_MODES))
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    image = Image.new(mode, size)
    raw = draw(st.binary(min_size=len(image.tobytes()), max_size=len(image.tobytes())))
    with contextlib.suppress(ValueError):
        image.frombytes(raw)
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot hold: PNG can hold it after RGB
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        fmt = "PNG"
    data = buffer.getvalue()
    if draw(st.booleans()):
        data = draw(broken_bytes(data))
    return f"x.{fmt.lower()}", data


@fuzz_settings(30)
@given(image=image_files(), invert=st.sampled_from(["auto", "yes", "no"]))
def test_random_images_to_predict(trained_run, image, invert):
    name, data = image
    with scratch() as folder:
        (folder / name).write_bytes(data)
        run_cli(["predict", str(trained_run), str(folder / name), "--invert", invert, "--device", "cpu"])


@st.composite
def checkpoint_files(draw, original: bytes) -> bytes:
    """Broken bytes of a real checkpoint, or torch.save of something that is not a checkpoint dict."""
    if draw(st.booleans()):
        return draw(broken_bytes(original))
    obj = draw(st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
                         st.just(torch.zeros(3)), st.dictionaries(st.text(max_size=6), st.integers(), max_size=3)))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)


@st.composite
def crafted(draw, original):
    """``original`` (a config or checkpoint, nested dicts) with one field replaced, removed or added."""
    import copy

    data = copy.deepcopy(original)
    node, keys = data, []
    while isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)))
        if not isinstance(node[key], dict):
            break
        node, keys = node[key], keys + [key]
    if not isinstance(node, dict) or not node:
        return draw(json_values)
    key = draw(st.sampled_from(sorted(node, key=str)))
    how = draw(st.sampled_from(["replace", "remove", "add"]))
    if how == "remove":
        del node[key]
    elif how == "add":
        node[draw(st.text(max_size=6))] = draw(json_values)
    else:
        node[key] = draw(json_values | st.just(torch.zeros(2)))
    return data


@fuzz_settings(20)
@given(data=st.data(), command=st.sampled_from(["evaluate", "predict", "inspect", "train"]),
       config_bytes=st.one_of(st.none(), st.binary(max_size=64)))
def test_random_checkpoint_and_config_files(trained_run, data, command, config_bytes):
    """Random bytes as checkpoint.pt and config.json; with PENDING's checks in, crafted fields in both."""
    with scratch() as folder:
        run = folder / "run"
        shutil.copytree(trained_run, run)
        original = (trained_run / "checkpoint.pt").read_bytes()
        if enabled("crafted checkpoint") and data.draw(st.booleans()):
            buffer = io.BytesIO()
            torch.save(data.draw(crafted(torch.load(io.BytesIO(original), weights_only=True))), buffer)
            (run / "checkpoint.pt").write_bytes(buffer.getvalue())
        else:
            (run / "checkpoint.pt").write_bytes(data.draw(checkpoint_files(original)))
        if enabled("crafted config") and data.draw(st.booleans()):
            config = json.loads((trained_run / "config.json").read_text())
            config_bytes = json.dumps(data.draw(crafted(config)), default=str).encode()
        if config_bytes is not None:
            if not enabled("crafted config"):
                with contextlib.suppress(UnicodeDecodeError, ValueError):
                    json.loads(config_bytes)   # valid JSON is a crafted config: held back
                    config_bytes = b"{" + config_bytes
            (run / "config.json").write_bytes(config_bytes)
        extra = [("--index", "0")] if command == "predict" else []
        run_cli(run_argv(command, run, extra))
