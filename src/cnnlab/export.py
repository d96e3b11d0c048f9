"""A trained run as one file to deploy: ONNX (run with ONNX Runtime) or TorchScript.

The file holds the network *with its preprocessing*: it takes images as the dataset stores them
(N, C, H, W; uint8, or float32 on the same 0-255 scale), scales them to [0, 1], resizes them to
the run's input size and, for a run on its own data (or CIFAR-10), normalises each channel with the
training split's statistics, exactly as training did (:func:`cnnlab.data.loader.to_float`), and
returns logits; the batch dimension is dynamic.  Test-time augmentation is built in only when
asked.  The class names and the run's settings travel in the file's metadata (ONNX ``metadata_props``,
TorchScript ``_extra_files``) under the key ``cnnlab``.

ONNX files come from PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
it is the exporter ``torch.onnx.export`` offers on every PyTorch cnnlab supports (2.4 and later; the
torch.export-based one starts at 2.6 and needs onnxscript).  Before a file is written, its bytes
are checked: ONNX Runtime (or TorchScript) on the CPU must give the trained model's top-1 class on
the whole test set (the validation split for data without one) and logits within :data:`TOLERANCE`.
A file that fails is not written.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import cnnlab
from cnnlab.data.loader import to_float
from cnnlab.errors import ConfigError, ExportError
from cnnlab.extras import require
from cnnlab.fileio import OutputExistsError, check_output_file, write_bytes
from cnnlab.inference import check_tta, predict_logits, tta_logits
from cnnlab.train.config import MAX_IMAGE_SIDE, TTA_CHOICES, TrainConfig
from cnnlab.trained import RunDescription, TrainedRun

FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = ("uint8", "float32")
DEFAULT_FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
METADATA_KEY = "cnnlab"
METADATA_FORMAT = "cnnlab-export"
METADATA_VERSION = 1
TOLERANCE = 1e-4
"""Largest absolute difference of an exported file's fp32 logits from the trained model's."""
OPSET = 17
CHECK_BATCH = 250


def require_onnx(feature: str = "--format onnx") -> None:
    require(["onnx", "onnxruntime"], "export", feature)


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): resizing along one axis as :func:`to_float` does (bilinear, antialiased),
    as a matrix, so the exported file resizes with two matrix products any runtime has."""
    # Image j is 1 on row j and 0 elsewhere; resized, its column is column j of the matrix.  Two columns,
    # not one: PyTorch's antialiased kernel mishandles images one pixel wide.
    basis = torch.eye(size_in).reshape(size_in, 1, size_in, 1).expand(size_in, 1, size_in, 2)
    resized = F.interpolate(basis, size=(size_out, 2), mode="bilinear", align_corners=False, antialias=True)
    return resized[:, 0, :, 0].t().contiguous()


class Deployed(nn.Module):
    """The trained network behind the training preprocessing: images (N, C, H, W) 0-255 -> logits.
    ``normalize`` is the run's per-channel (mean, std) (checkpoint ``normalize``), or None."""

    def __init__(self, model: nn.Module, image_shape: tuple[int, int, int], input_size: int, tta: str = "none",
                 normalize=None):
        super().__init__()
        self.model = model
        self.tta = tta
        _, h, w = image_shape
        self.resize = (h, w) != (input_size, input_size)
        if self.resize:
            self.register_buffer("rows", resize_matrix(h, input_size))
            self.register_buffer("cols_t", resize_matrix(w, input_size).t().contiguous())
        self.normalized = normalize is not None
        if self.normalized:
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in normalize)
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0
        if self.resize:
            x = torch.matmul(torch.matmul(self.rows, x), self.cols_t)
        if self.normalized:
            x = (x - self.mean) / self.std
        return tta_logits(self.model, x, self.tta)


def metadata(run: TrainedRun, input_dtype: str, tta: str) -> dict[str, Any]:
    return {
        "format": METADATA_FORMAT, "version": METADATA_VERSION,
        "model": run.model_name, "model_options": run.model_options,
        "dataset": run.dataset, "classes": list(run.classes), "splits": list(run.splits),
        "input": {"name": "images", "dtype": input_dtype, "shape": ["batch", *run.image_shape],
                  "layout": "NCHW", "pixel_range": [0, 255]},
        "input_size": run.input_size, "normalize": run.normalize, "tta": tta,
        "output": {"name": "logits", "shape": ["batch", run.num_classes]},
        "epoch": run.epoch, "complete": run.complete,
        "config": run.config.to_dict() if run.config is not None else {}, "cnnlab_version": cnnlab.__version__, "torch_version": torch.__version__,
    }


def _example(run: TrainedRun, input_dtype: str, batch: int = 2) -> torch.Tensor:
    x = torch.randint(0, 256, (batch, *run.image_shape), dtype=torch.uint8)
    return x if input_dtype == "uint8" else x.float()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _quiet_export(call):
    """Run an exporter call without the warnings PyTorch addresses to cnnlab's own code (deprecations,
    tracer notes) and the graph dump it prints on a failure, which would only puzzle a user: a failure
    is reported in one line naming the layer (:func:`failing_layer`)."""
    with warnings.catch_warnings(), _stdout_silenced():
        warnings.simplefilter("ignore")
        return call()


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 pointed at /dev/null: the exporter's C++ side prints there directly."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    _quiet_export(lambda: torch.onnx.export(
        module, (example,), buffer, input_names=["images"], output_names=["logits"], opset_version=OPSET,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **options))
    return buffer.getvalue()


def _torchscript_bytes(module: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    traced = _quiet_export(lambda: torch.jit.trace(module, (example,), check_trace=False))
    buffer = io.BytesIO()
    _quiet_export(lambda: torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)}))
    return buffer.getvalue()


def failing_layer(model: nn.Module, example: torch.Tensor, convert) -> str:
    """Which layer ``convert(module, inputs)`` fails on, and why: the innermost module (in the order
    forward passes finish) whose own export fails, e.g. ``layer 3 (SVDLayer): <the exporter's reason>``."""
    finished: list[tuple[str, nn.Module, tuple]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, args, out: finished.append((names[mod], mod, args)))
             for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        return f"its forward pass fails ({_first_line(exc)})"
    finally:
        for h in hooks:
            h.remove()
    seen = set()
    for name, module, args in finished:
        if id(module) in seen or not all(isinstance(a, torch.Tensor) for a in args):
            continue
        seen.add(id(module))
        try:
            convert(module, args)
        except Exception as exc:   # the exporter's own error types vary across PyTorch versions
            return f"layer {name or '(the whole network)'} ({type(module).__name__}): {_first_line(exc)}"
    return "the preprocessing around the network"


def export_bytes(run: TrainedRun, model: nn.Module, fmt: str, input_dtype: str = "uint8", tta: str = "none") -> bytes:
    """The exported file's bytes (not yet checked); ExportError naming the layer that cannot export."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"unknown input type {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}")
    check_tta(tta)
    if fmt == "onnx":
        require_onnx()
    meta = metadata(run, input_dtype, tta)
    module = Deployed(model, run.image_shape, run.input_size, tta, run.normalize).eval()
    example = _example(run, input_dtype)
    try:
        if fmt == "torchscript":
            return _torchscript_bytes(module, example, meta)
        data = _onnx_bytes(module, example)
    except Exception as exc:
        convert = ((lambda m, a: torch.jit.trace(m, a, check_trace=False)) if fmt == "torchscript"
                   else (lambda m, a: _onnx_bytes(m, *a)))
        floats = to_float(_example(run, "uint8"), resize=run.input_size,   # what the network itself receives
                          normalize=run.normalize)
        where = failing_layer(model, floats, lambda m, a: _quiet_export(lambda: convert(m, a)))
        raise ExportError(f"{run.model_name} cannot be exported to {fmt}: {where}; "
                          f"replace that layer or export another run") from exc
    import onnx  # noqa: PLC0415  optional extra (cnnlab[export])

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = f"cnnlab {meta['model']} trained on {meta['dataset']}: images (N, C, H, W) 0-255 -> logits"
    return proto.SerializeToString()


@dataclass
class Check:
    """How an exported file's logits compare with the trained model's on a test set."""

    runtime: str
    dataset: str
    split: str
    images: int
    top1_agree: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.top1_agree == self.images and self.max_abs_diff <= TOLERANCE

    def line(self) -> str:
        return (f"check: {self.runtime} on the CPU vs PyTorch on {self.dataset} {self.split} ({self.images} images): "
                f"top-1 agrees on {self.top1_agree}/{self.images}, max |logit difference| "
                f"{self.max_abs_diff:.2e} (limit {TOLERANCE:.0e})")


def onnx_session(source: bytes | str):
    """ONNX Runtime on the CPU for an ONNX file's bytes or path."""
    import onnxruntime as ort  # noqa: PLC0415  optional extra (cnnlab[export])

    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def onnx_logits(session, x) -> torch.Tensor:
    """The logits ``session`` computes for the array ``x`` given to its one input."""
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0])


def runner(data: bytes, fmt: str):
    """A function: images (N, C, H, W) as the file takes them -> logits (numpy-free torch tensor)."""
    if fmt == "onnx":
        import onnxruntime as ort  # noqa: PLC0415  optional extra (cnnlab[export])

        session = onnx_session(data)
        return (lambda x: onnx_logits(session, x.numpy())), f"ONNX Runtime {ort.__version__}"
    module = _quiet_export(lambda: torch.jit.load(io.BytesIO(data), map_location="cpu"))
    module.eval()

    def run_module(x):
        with torch.inference_mode():
            return module(x)
    return run_module, f"TorchScript (torch {torch.__version__})"


def check_export(run: TrainedRun, model: nn.Module, data: bytes, fmt: str, images: torch.Tensor,
                 input_dtype: str = "uint8", tta: str = "none", split: str = "test") -> Check:
    """Compare the file's logits with the trained model's through the training pipeline
    (:func:`cnnlab.inference.predict_logits`) on ``images`` (uint8, N, C, H, W)."""
    reference = predict_logits(model, images, input_size=run.input_size, device=torch.device("cpu"), tta=tta,
                               normalize=run.normalize)
    forward, runtime = runner(data, fmt)
    outputs = []
    for start in range(0, images.shape[0], CHECK_BATCH):
        x = images[start:start + CHECK_BATCH].contiguous()
        outputs.append(forward(x if input_dtype == "uint8" else x.float()).float())
    got = torch.cat(outputs)
    agree = int((got.argmax(dim=1) == reference.argmax(dim=1)).sum())
    diff = float((got - reference).abs().max()) if got.numel() else 0.0
    return Check(runtime, run.dataset, split, int(images.shape[0]), agree, diff)


def export_run(target: str | Path, fmt: str, out: str | Path | None = None, *, force: bool = False,
               input_dtype: str = "uint8", tta: str = "none", data_dir: str | None = None,
               verify: bool | None = None) -> tuple[Path, Check]:
    """Export the run ``target`` to ``out`` (default: ``model.onnx`` / ``model.torchscript.pt`` in the run
    directory), checked on the run's whole test set (or validation split) first; returns the path and
    the check."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    run = TrainedRun.open(target, "the run to export")
    model = run.build_model().float()   # fp32 whatever it trained in (bf16 runs save fp32 weights)
    path = Path(out) if out is not None else run.folder / DEFAULT_FILE_NAMES[fmt]
    if path.is_dir():
        raise ExportError(f"--out {path} is a folder; give a file name such as {path / DEFAULT_FILE_NAMES[fmt]}")
    if path.exists() and not force:
        raise _exists(path)
    check_output_file(path)
    split = run.scoring_split
    images, _ = run.load_split(split, data_dir, verify)
    data = export_bytes(run, model, fmt, input_dtype, tta)
    check = check_export(run, model, data, fmt, images, input_dtype, tta, split)
    if not check.ok:
        raise ExportError(f"the exported {fmt} file disagrees with the trained model ({check.line()}); "
                          f"nothing was written")
    try:   # without --force only a free name is taken: of two exports to one new --out, one wins
        write_bytes(path, data, replace=force)
    except OutputExistsError as exc:
        raise _exists(path) from exc
    return path, check


def _exists(path: Path) -> ExportError:
    return ExportError(f"{path} already exists; pass --force to replace it or choose another --out")


@dataclass
class OnnxModel:
    """An exported cnnlab ONNX file opened with ONNX Runtime: logits for images, and its metadata
    (checked by :func:`read_metadata`: every field the file's users read holds what export wrote)."""

    path: Path
    session: Any
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input"]["shape"][1:])

    @property
    def description(self) -> RunDescription:
        """The run the file was exported from, as its metadata describes it."""
        return RunDescription.from_fields({**self.meta, "image_shape": list(self.image_shape)},
                                          f"model file {self.path}")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 images (N, C, H, W) in the file's input layout."""
        dtype = self.meta["input"]["dtype"]
        return onnx_logits(self.session, images.contiguous().numpy() if dtype == "uint8" else images.float().numpy())


ONNX_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}
"""How ONNX Runtime names the input types of :data:`INPUT_DTYPES`."""
SPLITS = ("train", "val", "test")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(value: Any, least: int = 1, most: int = MAX_IMAGE_SIDE) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def _numbers(value: Any, length: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def read_metadata(raw: str, path: Path, session) -> dict[str, Any]:
    """The ``cnnlab`` metadata of the ONNX file ``path`` (opened as ``session``), every field checked once,
    here: against what export writes and against the graph itself (its input's type and image shape, its
    number of logits), so a damaged or crafted file is one ExportError naming the file and the field,
    never a failure later.  ``config`` is returned as a :class:`TrainConfig`; a field export always writes
    but an earlier version did not is left out, for :class:`RunDescription` to give its default."""
    fix = "the file is damaged or was not written by cnnlab: re-export the run with `cnnlab export RUN_DIR --format onnx`"

    def bad(field: str, expected: str, value: Any) -> ExportError:
        return ExportError(f"model file {path}: metadata field {field!r} must be {expected}, got {_shown(value)}; "
                           f"{fix}")

    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ExportError(f"model file {path}: its {METADATA_KEY!r} metadata is not JSON ({exc}); {fix}") from exc
    if not isinstance(meta, dict):
        raise ExportError(f"model file {path}: its {METADATA_KEY!r} metadata must be a mapping of fields, "
                          f"got {_shown(meta)}; {fix}")
    missing = [k for k in ("format", "classes", "input") if k not in meta]
    if missing or meta["format"] != METADATA_FORMAT:
        raise ExportError(f"model file {path}: its {METADATA_KEY!r} metadata lacks "
                          f"{', '.join(missing) or 'the format marker'}; {fix}")
    version = meta.get("version", 0)
    if not _count(version, least=0, most=2 ** 31):
        raise bad("version", "a whole number", version)
    if version > METADATA_VERSION:
        raise ExportError(f"model file {path} was exported by a newer cnnlab (metadata version {version}); "
                          f"upgrade cnnlab")
    for field in ("model", "dataset", "cnnlab_version", "torch_version"):
        if field in meta and not isinstance(meta[field], str):
            raise bad(field, "text", meta[field])
    if not isinstance(meta.get("model_options", {}), dict):
        raise bad("model_options", "a mapping of option names to values", meta["model_options"])
    if meta.get("tta", "none") not in TTA_CHOICES:
        raise bad("tta", f"one of {', '.join(TTA_CHOICES)}", meta["tta"])
    if "epoch" in meta and not _count(meta["epoch"], least=0, most=2 ** 31):
        raise bad("epoch", "a whole number", meta["epoch"])
    if not isinstance(meta.get("complete", True), bool):
        raise bad("complete", "true or false", meta["complete"])
    splits = meta.get("splits", ["train", "test"])
    if not (isinstance(splits, list) and splits and all(s in SPLITS for s in splits)
            and len(set(splits)) == len(splits)):
        raise bad("splits", f"a list of split names from {', '.join(SPLITS)}", splits)

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ExportError(f"model file {path}: the model takes {len(inputs)} inputs of shape "
                          f"{[i.shape for i in inputs]}, not one image batch (N, C, H, W); {fix}")
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ExportError(f"model file {path}: the model gives {len(outputs)} outputs of shape "
                          f"{[o.shape for o in outputs]}, not one batch of logits (N, classes); {fix}")
    given = meta["input"]
    if not isinstance(given, dict):
        raise bad("input", "a mapping with the input's dtype and shape", given)
    dtype = given.get("dtype")
    if dtype not in INPUT_DTYPES:
        raise bad("input.dtype", f"one of {', '.join(INPUT_DTYPES)}", dtype)
    if ONNX_TYPES[dtype] != inputs[0].type:
        raise bad("input.dtype", f"the model's input type ({inputs[0].type})", dtype)
    shape = given.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1] in (1, 3) and _count(shape[2])
            and shape[2] == shape[3] and not isinstance(shape[1], bool)):
        raise bad("input.shape", "[batch, channels (1 or 3), side, side]", shape)
    if any(isinstance(n, int) and n != m for n, m in zip(inputs[0].shape[1:], shape[1:])):
        raise bad("input.shape", f"the model's input shape ({inputs[0].shape})", shape)
    channels = shape[1]
    if "input_size" in meta and not _count(meta["input_size"]):
        raise bad("input_size", f"a side from 1 to {MAX_IMAGE_SIDE} pixels", meta["input_size"])
    normalize = meta.get("normalize")
    if normalize is not None and not (isinstance(normalize, list) and len(normalize) == 2
                                      and all(_numbers(v, channels) for v in normalize)
                                      and all(s > 0 for s in normalize[1])):
        raise bad("normalize", f"null or [means, standard deviations] of {channels} channel(s)", normalize)

    classes = meta["classes"]
    logits = outputs[0].shape[1]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a list of class names", classes)
    if isinstance(logits, int) and len(classes) != logits:
        raise ExportError(f"model file {path}: metadata field 'classes' names {len(classes)} classes, but the "
                          f"model gives {logits} logits; {fix}")
    config = meta.get("config") or None
    if config is not None:
        if not isinstance(config, dict):
            raise bad("config", "a mapping of setting names to values", config)
        try:
            config = TrainConfig.from_dict(config, source="config")
        except ConfigError as exc:
            raise ExportError(f"model file {path}: metadata field 'config' is not cnnlab's settings ({exc}); "
                              f"{fix}") from None
    return {**meta, "config": config}


def open_onnx(path: str | Path) -> OnnxModel:
    """Open an ONNX file exported by cnnlab, its metadata checked (:func:`read_metadata`); ExportError
    saying what is wrong for any other file."""
    require_onnx("--model-file")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model file {path} does not exist; export one with `cnnlab export RUN_DIR --format onnx`")
    try:
        session = onnx_session(str(path))
    except Exception as exc:   # ONNX Runtime raises its own exception classes for unreadable files
        raise ExportError(f"{path} is not an ONNX model ONNX Runtime can load ({_first_line(exc)[:120]}); "
                          f"give a file written by `cnnlab export --format onnx`") from exc
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ExportError(f"{path} is an ONNX model but not cnnlab's: its metadata has no {METADATA_KEY!r} entry "
                          f"(class names, input layout); export the run with `cnnlab export RUN_DIR --format onnx`")
    return OnnxModel(path, session, read_metadata(raw, path, session))
