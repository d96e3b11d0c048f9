"""Every setting of a training run in one dataclass, validated before any work starts.

The defaults are the seed's recipe: LeNet on Fashion-MNIST, batch 256, SGD with lr 0.9,
10 epochs, Xavier-uniform initialisation, cross-entropy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import ConfigError


@dataclass
class TrainConfig:
    model: str = "lenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    verify: bool = True
    """Check the data files against the registry's checksums; False trusts them, and then they may hold
    any number of examples in the dataset's format (a subset, such as the tests' own)."""
    data: str | None = None
    """Your own data instead of --dataset: an image folder (one sub-folder per class, optionally under
    train/ and test/ or val/), a .npz file (x_train, y_train, x_test, y_test) or a folder of IDX files."""
    image_size: int | None = None
    """Side in pixels the images are converted to; None: the size most images share (else 28)."""
    channels: int | None = None
    """1 (gray) or 3 (colour) channels; None: 1 if every image is gray, else 3."""
    val_fraction: float = 0.0
    """Part of the training data held out (seeded, stratified) for validation; the test split is then
    evaluated once, at the end."""
    skip_bad_images: bool = False
    """Leave out (and count) unreadable or corrupt image files instead of stopping at the first."""
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1024
    lr: float = 0.9
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    init: str = "xavier"
    seed: int = 0
    device: str = "auto"
    points_per_epoch: int = 5
    """Curve points per epoch, as the book's Animator (train loss and accuracy so far)."""
    train_limit: int | None = None
    """Train on the first N training examples only (quick runs, tests)."""
    test_limit: int | None = None
    resize: int | None = None
    """Input side in pixels; None uses the model's own input size."""
    nesterov: bool = False
    schedule: str = "constant"
    """Learning-rate schedule, stepped every batch: constant (the book), cosine, onecycle or step."""
    warmup_epochs: float = 0.0
    """Linear warm-up from lr/100 to lr over this many epochs (onecycle: the rising part)."""
    lr_step_epochs: int = 3
    """For the step schedule: multiply the rate by lr_gamma every this many epochs."""
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: list[str] = field(default_factory=list)
    """Batched on-device augmentations, applied in order: crop, flip, erase."""
    crop_padding: int = 2
    """Zero padding (pixels) around the image before a random crop back to its size."""
    erase_prob: float = 0.5
    """Probability that random erasing blanks a rectangle in an image."""
    preset: str | None = None
    """Name of the preset the run started from (informational; the fields above are what count)."""
    compile: str = "auto"
    """torch.compile the training step: auto (off: a cold compile costs the recipe more than it saves), on, off."""
    precision: str = "auto"
    """Precision: auto (bf16 on CUDA GPUs that have it, and for the LeNet kernel on CPUs with native
    bf16; else fp32), fp32, bf16."""
    kernel: str = "auto"
    """The hand-fused LeNet step on CPU (cnnlab.kernels.lenet): auto (where it applies), on, off."""
    tta: str = "none"
    """Test-time augmentation of every test evaluation: none, flip (the image and its mirror image)
    or flip-shift (those two, plus both moved a pixel up-left and down-right; cnnlab.inference)."""
    channels_last: str = "auto"
    """NHWC convolutions: auto (on CPUs, for networks the LeNet kernel does not run), on, off."""
    tensorboard: bool = False
    """Also write TensorBoard event files into the run directory's tb/ (needs cnnlab[tensorboard])."""

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, naming the setting) for values no run can use."""
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "points_per_epoch"):
            positive_int(name)
        for name in ("train_limit", "test_limit", "resize"):
            if getattr(self, name) is not None:
                positive_int(name)
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "lr_gamma", "label_smoothing", "erase_prob"):
            # NaN slips through every range test below (all its comparisons are false) and fails later
            # as something else: a divergence blamed on the learning rate, int(nan) in the schedule.
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                label = "learning rate" if name == "lr" else name.replace("_", " ")
                raise ConfigError(f"{label} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.momentum < 0 or self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("Nesterov momentum needs --optimizer sgd and a --momentum above 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(f"warm-up epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs!r}")
        if isinstance(self.lr_step_epochs, bool) or not isinstance(self.lr_step_epochs, int) \
                or self.lr_step_epochs <= 0:
            raise ConfigError(f"lr step epochs must be a positive integer, got {self.lr_step_epochs!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr gamma must be in (0, 1], got {self.lr_gamma!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)}")
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ConfigError(f"crop padding must be a non-negative integer, got {self.crop_padding!r}")
        if not 0 <= self.erase_prob <= 1:
            raise ConfigError(f"erase probability must be in [0, 1], got {self.erase_prob!r}")
        from cnnlab.models import get_model_info

        size = self.resize or get_model_info(self.model).input_size
        from cnnlab.data.dataset import check_data_settings

        check_data_settings(self.image_size, self.channels, self.val_fraction)
        if self.data is not None and not isinstance(self.data, str):
            raise ConfigError(f"data must be a path, got {self.data!r}")
        if self.resize is None and self.image_size is not None:
            size = self.image_size
        if self.crop_padding > size:
            raise ConfigError(f"crop padding {self.crop_padding} is more than the {size}-pixel image it pads; "
                              f"use at most {size} (a few pixels is usual)")

        from cnnlab.inference import check_tta
        from cnnlab.train.steps import check_speed_settings

        check_speed_settings(compile=self.compile, precision=self.precision, kernel=self.kernel,
                             channels_last=self.channels_last)
        check_tta(self.tta)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be an integer from 0 to {2 ** 32 - 1}, got {self.seed!r}")
        self.check_model()
        return self

    def check_model(self) -> None:
        """The model and its options must build for the dataset's images (checked on the meta device:
        no weights, no time), so a bad --option fails before any data is read."""
        from cnnlab.data import get_spec
        from cnnlab.models.registry import check_model

        if not isinstance(self.model_options, dict):
            raise ConfigError(f"model options must be a mapping of names to values, got {self.model_options!r}")
        if self.data is not None:   # classes and channels are known once the data is read
            check_model(self.model, self.model_options, num_classes=2, in_channels=self.channels or 1)
            return
        spec = get_spec(self.dataset)
        check_model(self.model, self.model_options, num_classes=len(spec.classes), in_channels=spec.image_shape[0])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if "tta_flip" in data:   # the setting's name before --tta had more than one choice
            from cnnlab.inference import run_tta

            data = {**{k: v for k, v in data.items() if k != "tta_flip"}, "tta": run_tta(data)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {', '.join(unknown)}; "
                              f"this cnnlab knows: {', '.join(sorted(known))}")
        return cls(**data)


INITS = ("xavier", "default")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
AUGMENTATIONS = ("crop", "flip", "erase")
