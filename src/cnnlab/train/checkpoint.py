"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only=True``.

A checkpoint records the model's registry name and options, so it can be rebuilt without the
run's code, and the training state (optimizer, epoch, step inside the epoch, metric
accumulators, curve history, RNG states) so an interrupted run continues exactly.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.fileio import write_bytes
from cnnlab.train.config import MAX_IMAGE_SIDE, TrainConfig, positive_int

FORMAT = "cnnlab-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write the bytes atomically: a failed write (a full disk) is the
    writer's one-line error and leaves the previous checkpoint intact.  (``torch.save`` straight to
    the file would turn the disk's OSError into an opaque RuntimeError from its zip writer.)"""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class RunReference:
    """Where a trained run is: its folder and its checkpoint file."""

    folder: Path
    checkpoint: Path


def run_reference(text: str | Path, flag: str = "the run") -> RunReference:
    """A run directory or its checkpoint file, as typed after ``flag``; never an empty string (a script's
    empty variable would otherwise mean the current folder)."""
    if text is None or not str(text).strip():
        raise ConfigError(f"{flag} is empty; give a run directory or its checkpoint.pt")
    path = Path(text).expanduser()
    if path.is_dir():
        return RunReference(path, path / "checkpoint.pt")
    if path.is_file() or path.suffix == ".pt":
        return RunReference(path.parent, path)
    return RunReference(path, path / "checkpoint.pt")


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint (a file, or a run directory's); never unpickles arbitrary objects."""
    return read_checkpoint(run_reference(path, "the checkpoint").checkpoint, map_location=map_location)


def read_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check the checkpoint file ``path`` (see :func:`load_checkpoint`)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a checkpoint.pt file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a cnnlab checkpoint ({first[:120]}); "
                              f"use another checkpoint or retrain") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnnlab checkpoint (no '{FORMAT}' marker)")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        _bad_field(path, "version", "an integer", version)
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; "
                              f"this cnnlab reads up to {VERSION}: upgrade cnnlab")
    check_fields(data, path)
    data["path"] = str(path)
    return data


def _bad_field(path, field: str, expected: str, value: Any) -> None:
    shown = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    raise CheckpointError(f"checkpoint {path}: field {field!r} must be {expected}, got {shown[:60]}; "
                          f"the file is damaged or was not written by cnnlab: use another checkpoint or retrain")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _training_state(v: Any) -> bool:
    """The engine's TrainState: epoch, step and examples seen (counts), metric sums and seconds (numbers),
    the curve history (a list of points, each a mapping)."""
    return (isinstance(v, dict) and all(_count(v.get(k)) for k in ("epoch", "step"))
            and ("sums" not in v or (isinstance(v["sums"], list) and all(_number(x) for x in v["sums"])))
            and ("history" not in v or (isinstance(v["history"], list)
                                        and all(isinstance(p, dict) for p in v["history"])))
            and ("train_seconds" not in v or _number(v["train_seconds"]))
            and ("examples_seen" not in v or _count(v["examples_seen"])))


def _rng_states(v: Any) -> bool:
    """The generator states the engine restores: byte tensors, the CPU one of the size this torch keeps."""
    return (isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor) and v["torch"].dtype == torch.uint8
            and v["torch"].shape == torch.get_rng_state().shape
            and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1 for t in v.values()))


def _optimizer_state(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in v["param_groups"]))


OPTIMIZER_MARKS = {"sgd": "momentum", "adam": "betas", "adamw": "betas"}
"""A hyperparameter every parameter group of each optimizer's state holds (SGD's never has betas)."""


def check_fields(data: dict[str, Any], path: str | Path) -> None:
    """The types and ranges of the fields cnnlab reads, where present (a crafted or damaged file otherwise
    ends in a TypeError deep inside evaluate, predict or a resumed run).  ``build_model`` requires the
    model's fields."""
    checks = {
        "model": ("a model name", lambda v: isinstance(v, str)),
        "model_options": ("a mapping of option names to values",
                          lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)),
        "num_classes": ("a positive integer", positive_int),
        "in_channels": ("a positive integer", positive_int),
        "input_size": (f"a positive integer up to {MAX_IMAGE_SIDE}",
                       lambda v: positive_int(v, MAX_IMAGE_SIDE)),
        "image_shape": (f"[channels, height, width], positive integers up to {MAX_IMAGE_SIDE}",
                        lambda v: isinstance(v, list) and len(v) == 3
                        and all(positive_int(n, MAX_IMAGE_SIDE) for n in v)),
        "normalize": ("[means, stds] per channel, or null",
                      lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                              and all(isinstance(p, list) and p and all(map(_number, p)) for p in v)
                                              and all(n > 0 for n in v[1]))),
        "splits": ("a list of split names (train, val, test)",
                   lambda v: isinstance(v, list) and all(n in ("train", "val", "test") for n in v)),
        "dataset": ("a dataset name", lambda v: isinstance(v, str)),
        "classes": ("a list of class names", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
        "model_state": ("a mapping of parameter names to tensors",
                        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                              for k, t in v.items())),
        "config": ("a mapping of training settings", lambda v: isinstance(v, dict)),
        "state": ("a mapping with the epoch and step reached, metric sums, history and counts", _training_state),
        "rng": ("a mapping of random-generator states (byte tensors)", _rng_states),
        "optimizer_state": ("an optimizer's state (a mapping with state and param_groups)", _optimizer_state),
    }
    for field_name, (expected, ok) in checks.items():
        if field_name in data and not ok(data[field_name]):
            _bad_field(path, field_name, expected, data[field_name])
    if isinstance(data.get("classes"), list) and "num_classes" in data and len(data["classes"]) != data["num_classes"]:
        _bad_field(path, "classes", f"{data['num_classes']} names (num_classes)", data["classes"])
    if "config" in data:
        try:
            config = TrainConfig.from_dict(data["config"], source=f"checkpoint {path}, field 'config'")
        except ConfigError as exc:
            raise CheckpointError(f"{exc}; the file is damaged or was not written by cnnlab: use another "
                                  f"checkpoint or retrain") from None
        groups = data.get("optimizer_state", {}).get("param_groups", [])
        mark = OPTIMIZER_MARKS[config.optimizer]
        if not all(mark in g for g in groups):
            raise CheckpointError(f"checkpoint {path}: its optimizer state is not {config.optimizer}'s, the "
                                  f"optimizer its config names; the file is damaged: use another checkpoint or retrain")


def trained_data_dir(ckpt: dict[str, Any], data_dir: str | None = None) -> str | None:
    """The data folder for scoring a trained run: ``data_dir`` if given, else the folder the run trained on
    (its saved config) while it still exists, else None (the usual search: see Data in the README)."""
    if data_dir is not None:
        return data_dir
    saved = (ckpt.get("config") or {}).get("data_dir")
    return saved if isinstance(saved, str) and saved and Path(saved).is_dir() else None


def trained_image_shape(ckpt: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the images the run trained on, as its data stored them (before any resize to the
    model's input): saved by training; for older checkpoints, the registry dataset's size."""
    if ckpt.get("image_shape") is not None:   # checked by check_fields
        return tuple(ckpt["image_shape"])
    from cnnlab.data import get_spec

    config = ckpt.get("config") or {}
    side = (int(ckpt.get("input_size") or 28) if config.get("data")
            else get_spec(ckpt.get("dataset", "fashion-mnist")).image_shape[-1])
    return int(ckpt.get("in_channels", 1)), side, side


def scoring_split(ckpt: dict[str, Any]) -> str:
    """The split a trained run is checked on: ``test``, or ``val`` for data without a test split."""
    return "val" if "test" not in ckpt.get("splits", ["test"]) else "test"


def load_trained_split(ckpt: dict[str, Any], split: str, data_dir: str | None = None,
                       verify: bool | None = None):
    """``(images, labels)`` of ``split`` (``train``, ``val`` or ``test``) for scoring a trained run, as the run
    saw them: read from :func:`trained_data_dir` (or, for a run on its own data, ``data_dir`` or its saved
    ``--data``) through the run's own conversion and validation split, and checked as the run's data was
    (its saved ``verify``) unless ``verify`` says otherwise.  Limits are not applied: the whole split."""
    import dataclasses

    from cnnlab.data import load_split

    saved = ckpt.get("config") or {}
    if verify is None:
        verify = saved.get("verify", True) is not False
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r}; choose train, val or test")
    if saved.get("data") or split == "val":
        from cnnlab.data.dataset import load_dataset

        config = TrainConfig.from_dict(saved, source=f"checkpoint {ckpt.get('path', '?')}, field 'config'")
        config = dataclasses.replace(config, data=data_dir or config.data, data_dir=trained_data_dir(ckpt, data_dir),
                                verify=verify, train_limit=None, test_limit=None)
        data = load_dataset(config, progress=False)
        found = {"train": data.train, "val": data.val, "test": data.test}[split]
        if found is None:
            held = "a validation split (--val-fraction)" if split == "val" else "a test split"
            raise DataError(f"{data.name} has no {split} split: the run trained without {held}; choose another split")
        return found
    images, labels = load_split(ckpt.get("dataset", "fashion-mnist"), split, trained_data_dir(ckpt, data_dir),
                                verify=verify)
    channels, side, _ = trained_image_shape(ckpt)
    if (channels, side) != tuple(images.shape[1:3]):   # trained at another size or channel count
        from cnnlab.data.dataset import reconverted_images

        images = reconverted_images(images, channels, side)
    return images, labels


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error when the checkpoint is for another network."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {source} does not fit this model ({detail[:160]}); "
                              f"was it saved from another model or options?") from exc


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the checkpoint's network from the registry and load its weights (eval mode)."""
    from cnnlab.errors import ConfigError
    from cnnlab.models import create

    path = ckpt.get("path", "?")
    missing = [f for f in ("model", "num_classes", "in_channels", "model_state") if f not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete: "
                              f"use another checkpoint or retrain")
    check_fields(ckpt, path)
    try:
        model = create(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["in_channels"],
                       **ckpt.get("model_options", {}))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} describes a model this cnnlab cannot build ({exc}); "
                              f"use another checkpoint or retrain") from exc
    load_model_state(model, ckpt["model_state"], path)
    return model.eval()
