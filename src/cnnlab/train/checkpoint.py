"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only=True``.

A checkpoint records the model's registry name and options, so it can be rebuilt without the
run's code, and the training state (optimizer, epoch, step inside the epoch, metric
accumulators, curve history, RNG states) so an interrupted run continues exactly.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError
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
    return read_checked(run_reference(path, "the checkpoint").checkpoint, map_location=map_location)[0]


def read_checked(path: Path, *, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], TrainConfig | None]:
    """The checkpoint file ``path``, loaded and checked, and its saved settings as read by the check."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a checkpoint.pt file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:   # the file is the user's, whatever it holds: torch.load's readers raise KeyError,
        # struct.error, IndexError, EOFError, ... on a file that is not a checkpoint (text, an image)
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
    config = check_fields(data, path)
    data["path"] = str(path)
    return data, config


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


def check_fields(data: dict[str, Any], path: str | Path) -> TrainConfig | None:
    """The types and ranges of the fields cnnlab reads, where present (a crafted or damaged file otherwise
    ends in a TypeError deep inside evaluate, predict or a resumed run).  Returns the saved settings, read
    and checked (None without them); :class:`cnnlab.trained.TrainedRun` requires the model's fields."""
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
        config = saved_config(data["config"], f"checkpoint {path}")
        groups = data.get("optimizer_state", {}).get("param_groups", [])
        mark = OPTIMIZER_MARKS[config.optimizer]
        if not all(mark in g for g in groups):
            raise CheckpointError(f"checkpoint {path}: its optimizer state is not {config.optimizer}'s, the "
                                  f"optimizer its config names; the file is damaged: use another checkpoint or retrain")
        return config
    return None


def saved_config(value: Any, source: str) -> TrainConfig:
    """A checkpoint's (or exported file's) saved settings, checked: CheckpointError if they are not cnnlab's."""
    if isinstance(value, TrainConfig):
        return value
    try:
        return TrainConfig.from_dict(value, source=f"{source}, field 'config'")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; the file is damaged or was not written by cnnlab: use another "
                              f"checkpoint or retrain") from None


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error when the checkpoint is for another network."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {source} does not fit this model ({detail[:160]}); "
                              f"was it saved from another model or options?") from exc
