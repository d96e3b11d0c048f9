"""A trained run: the one reader of a run directory, a checkpoint file or an exported model's description.

``TrainedRun.open(path)`` reads the checkpoint once, checks every field a command needs (one-line errors
naming the file), and gives each optional field its one default, here, so runs written by earlier
versions stay loadable.  ``evaluate``, ``predict``, ``export``, ``explain``, ``inspect`` and ``--resume``
read runs through it; an exported ONNX file describes its run with the same :class:`RunDescription`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cnnlab.data import get_spec
from cnnlab.data.dataset import load_dataset, reconverted_images
from cnnlab.data.decode import convert
from cnnlab.data.sources import load_split
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.images import open_image
from cnnlab.inference import load_image, run_tta
from cnnlab.models import create
from cnnlab.train.checkpoint import RunReference, load_model_state, read_checked, run_reference, saved_config
from cnnlab.train.config import TrainConfig

DEFAULT_DATASET = "fashion-mnist"
"""The dataset of a run whose checkpoint does not name one (the first versions trained only it)."""

REQUIRED = ("model", "num_classes", "in_channels", "model_state")
"""What a checkpoint must hold to be a trained network at all."""

RESUMED = ("model", "model_state", "optimizer_state", "state", "rng", "config")
RESUMED_STATE = ("sums", "history", "train_seconds", "examples_seen")
"""What a checkpoint must hold besides, for a run to go on from it."""


@dataclass(frozen=True)
class RunDescription:
    """What a trained network was trained on and how its inputs are prepared: enough to score it or to
    prepare images for it, whether the network is a checkpoint's or an exported file's."""

    source: str
    """The file it was read from, as errors name it."""
    model_name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    """(C, H, W) of the images the run trained on, as its data stored them (before any resize)."""
    input_size: int
    """The side of the model's input (the loader resizes the data's images to it)."""
    normalize: list | None
    """Per-channel [means, stds] the run normalised its inputs with, or None (raw [0, 1] pixels)."""
    splits: tuple[str, ...]
    dataset: str
    config: TrainConfig | None
    """The run's settings (None for an exported file from before they were recorded)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def tta(self) -> str:
        """The test-time augmentation the run scored itself with."""
        return run_tta(self.config.to_dict()) if self.config is not None else "none"

    @property
    def own_data(self) -> bool:
        return self.config is not None and self.config.data is not None

    @property
    def scoring_split(self) -> str:
        """The split the run is checked on: ``test``, or ``val`` for data without a test split."""
        return "test" if "test" in self.splits else "val"

    def data_dir(self, data_dir: str | None = None) -> str | None:
        """The data folder for scoring: ``data_dir`` if given, else the folder the run trained on while it
        still exists, else None (the usual search: see Data in the README)."""
        if data_dir is not None:
            return data_dir
        saved = self.config.data_dir if self.config is not None else None
        return saved if saved and Path(saved).is_dir() else None

    def load_split(self, split: str, data_dir: str | None = None, verify: bool | None = None):
        """``(images, labels)`` of ``split`` (train, val or test) as the run saw them: read from
        :meth:`data_dir` (or, for a run on its own data, ``data_dir`` or its saved ``--data``) through the
        run's own conversion and validation split, checked as the run's data was unless ``verify`` says
        otherwise.  No limits: the whole split."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {split!r}; choose train, val or test")
        config = self.config or TrainConfig(dataset=self.dataset)
        verify = config.verify if verify is None else verify
        if config.data is not None or split == "val":
            config = dataclasses.replace(config, data=data_dir or config.data, data_dir=self.data_dir(data_dir),
                                         verify=verify, train_limit=None, test_limit=None)
            data = load_dataset(config, progress=False)
            found = {"train": data.train, "val": data.val, "test": data.test}[split]
            if found is None:
                held = "a validation split (--val-fraction)" if split == "val" else "a test split"
                raise DataError(f"{data.name} has no {split} split: the run trained without {held}; "
                                f"score its {self.scoring_split} split instead")
            return found
        images, labels = load_split(self.dataset, split, self.data_dir(data_dir), verify=verify)
        channels, side, _ = self.image_shape
        if (channels, side) != tuple(images.shape[1:3]):   # trained at another size or channel count
            images = reconverted_images(images, channels, side)
        return images, labels

    @property
    def photographs(self) -> bool:
        """Whether image files are read as the run's data were (its own data, or a registry dataset of
        colour photographs such as CIFAR-10), not as light-on-dark drawings to invert."""
        if self.own_data:
            return True
        try:
            return get_spec(self.dataset).image_shape[0] == 3
        except ConfigError:   # a dataset this cnnlab does not know
            return False

    def read_images(self, paths: Sequence[str | Path], invert: str = "auto") -> tuple[torch.Tensor, list[bool]]:
        """Image files of any size, mode and bit depth as the run's inputs: uint8 (N, C, H, W), and whether
        each was inverted (drawings with a light background, for data of light objects on black)."""
        channels, size, _ = self.image_shape
        images, inverted = [], []
        for path in paths:
            if self.photographs:   # the run's own conversion, colour kept where the run had it
                images.append(torch.from_numpy(convert(open_image(path), channels, size)))
                inverted.append(False)
                continue
            image, flipped = load_image(path, invert, size=size)
            if channels != 1:   # a registry run converted to colour (--channels 3) took the gray as RGB
                image = reconverted_images(image[None], channels, size)[0]
            images.append(image)
            inverted.append(flipped)
        return torch.stack(images), inverted

    @classmethod
    def from_fields(cls, fields: dict[str, Any], source: str) -> "RunDescription":
        """From a checkpoint's (checked) fields or an exported file's metadata, each missing field given its
        one default."""
        return cls(**_description(fields, source))


def _description(fields: dict[str, Any], source: str) -> dict[str, Any]:
    config = saved_config(fields["config"], source) if fields.get("config") else None
    num_classes = fields.get("num_classes") or len(fields.get("classes") or ())
    classes = tuple(fields.get("classes") or (str(k) for k in range(num_classes)))
    dataset = fields.get("dataset") or (config.dataset if config is not None else DEFAULT_DATASET)
    image_shape = fields.get("image_shape")
    if image_shape is None:   # before runs recorded it: the registry dataset's, or the model's input
        side = (int(fields.get("input_size") or 28) if config is not None and config.data
                else get_spec(dataset).image_shape[-1])
        image_shape = (int(fields.get("in_channels", 1)), side, side)
    return {"source": source, "model_name": fields.get("model", "?"), "classes": classes,
            "image_shape": tuple(int(n) for n in image_shape),
            "input_size": int(fields.get("input_size") or image_shape[-1]),
            "normalize": fields.get("normalize"), "splits": tuple(fields.get("splits") or ("train", "test")),
            "dataset": dataset, "config": config}


@dataclass(frozen=True)
class TrainedRun(RunDescription):
    """A run directory (or checkpoint file) whose network has trained at least one epoch."""

    folder: Path = Path(".")
    checkpoint: Path = Path("checkpoint.pt")
    model_options: dict = dataclasses.field(default_factory=dict)
    in_channels: int = 1
    ckpt: dict = dataclasses.field(default_factory=dict, repr=False)
    """The checked checkpoint itself: the model's weights and the training state a resume restores."""

    @classmethod
    def open(cls, target: str | Path | RunReference, flag: str = "the run", *, resumable: bool = False) -> "TrainedRun":
        """Read ``target`` (a run directory or its checkpoint file, as typed after ``flag``) once.  One-line
        errors for a folder that is not a run, a run without a checkpoint yet, a damaged checkpoint or one
        that lacks a field; ``resumable``: also the training state a resumed run restores."""
        ref = target if isinstance(target, RunReference) else run_reference(target, flag)
        if not ref.checkpoint.exists():
            if not ref.folder.is_dir():
                raise ConfigError(f"{flag} {target}: no such run directory or checkpoint; pass a folder "
                                  f"written by cnnlab train")
            raise CheckpointError(f"run {ref.folder} has no checkpoint.pt yet: its first epoch has not finished "
                                  f"(or it stopped before one); wait for that epoch or pass a trained run")
        ckpt, config = read_checked(ref.checkpoint)
        needed = RESUMED if resumable else REQUIRED
        missing = [f for f in needed if f not in ckpt]
        if resumable and isinstance(ckpt.get("state"), dict):
            missing += [f"state.{f}" for f in RESUMED_STATE if f not in ckpt["state"]]
        if missing and resumable:
            raise CheckpointError(f"checkpoint {ref.checkpoint} lacks {', '.join(missing)}, so the run cannot go on "
                                  f"from it; start a new run")
        if missing:
            raise CheckpointError(f"checkpoint {ref.checkpoint} lacks {', '.join(missing)}; it is incomplete: "
                                  f"use another checkpoint or retrain")
        fields = _description({**ckpt, "config": config}, f"checkpoint {ref.checkpoint}")
        return cls(**fields, folder=ref.folder, checkpoint=ref.checkpoint, ckpt=ckpt,
                   model_options=dict(ckpt.get("model_options") or {}),
                   in_channels=int(ckpt.get("in_channels") or fields["image_shape"][0]))

    @property
    def epoch(self) -> int:
        return int((self.ckpt.get("state") or {}).get("epoch", 0))

    @property
    def complete(self) -> bool:
        return bool(self.ckpt.get("complete", True))

    def build_model(self, device: torch.device | str | None = None) -> nn.Module:
        """The trained network, in eval mode (on ``device``, default the CPU)."""
        try:
            model = create(self.model_name, num_classes=int(self.ckpt["num_classes"]), in_channels=self.in_channels,
                           **self.model_options)
        except ConfigError as exc:
            raise CheckpointError(f"{self.source} describes a model this cnnlab cannot build ({exc}); "
                                  f"use another checkpoint or retrain") from exc
        load_model_state(model, self.ckpt["model_state"], str(self.checkpoint))
        model.eval()
        return model.to(device) if device is not None else model

