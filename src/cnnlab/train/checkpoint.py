"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only=True``.

A checkpoint records the model's registry name and options, so it can be rebuilt without the
run's code, and the training state (optimizer, epoch, step inside the epoch, metric
accumulators, curve history, RNG states) so an interrupted run continues exactly.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError
from cnnlab.fileio import write_bytes

FORMAT = "cnnlab-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write the bytes atomically: a failed write (a full disk) is the
    writer's one-line error and leaves the previous checkpoint intact.  (``torch.save`` straight to
    the file would turn the disk's OSError into an opaque RuntimeError from its zip writer.)"""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; never unpickles arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
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
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {data['version']}; "
                              f"this cnnlab reads up to {VERSION}: upgrade cnnlab")
    data["path"] = str(path)
    return data


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
    from cnnlab.models import create

    try:
        name, options = ckpt["model"], dict(ckpt.get("model_options", {}))
        num_classes, in_channels = int(ckpt["num_classes"]), int(ckpt["in_channels"])
        state = ckpt["model_state"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.get('path')} lacks {exc}; it is incomplete") from exc
    model = create(name, num_classes=num_classes, in_channels=in_channels, **options)
    load_model_state(model, state, ckpt.get("path", "?"))
    return model.eval()
