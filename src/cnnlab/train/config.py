"""Every setting of a training run in one dataclass, checked before any work starts.

The defaults are the book's recipe: LeNet on Fashion-MNIST, batch 256, SGD with lr 0.9,
10 epochs, Xavier-uniform initialisation, cross-entropy.

The config is a leaf: it imports nothing from cnnlab but its errors, so every other module may
read it.  Checks that need a model or a dataset live where a run is prepared
(:func:`cnnlab.train.run.check_run`).  A field declared with :func:`setting` (a help text, and
choices or a parser where plain ``int``/``float``/``str`` will not do) is also a flag of
``cnnlab train``, ``sweep`` and ``lr-find``: the command line builds its flags from these fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cnnlab.errors import ConfigError

INITS = ("xavier", "default")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
AUGMENTATIONS = ("crop", "flip", "erase")
TTA_CHOICES = ("none", "flip", "flip-shift")
COMPILE_CHOICES = ("auto", "on", "off")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
KERNEL_CHOICES = ("auto", "on", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")

FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: rates and factors are float32 on the device, larger ones overflow to inf."""
MAX_EPOCHS = 1_000_000
"""Far beyond any useful run, and small enough that every epoch and curve point is an exact number in
metrics.csv and on the plot's axis (a run of 10^20 epochs trained, then failed drawing its curves)."""
MAX_INT = 2 ** 63 - 1
"""Counts (batch sizes, limits, steps) must fit the int64 of a tensor index."""
MAX_IMAGE_SIDE = 1024
"""The largest image side in pixels a run, a checkpoint or ``cnnlab summary`` takes."""


def positive_int(value: Any, limit: int | None = None) -> bool:
    """Whether ``value`` is an int from 1 to ``limit`` (no limit: None); a bool is not a count."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and (limit is None or value <= limit)


def parse_list(text: str) -> list[str]:
    """``"crop,flip"`` -> ``["crop", "flip"]``; ``""`` or ``"none"`` -> ``[]``."""
    return [] if text.strip().lower() in ("", "none") else [t.strip() for t in text.split(",") if t.strip()]


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, label: str | None = None,
            parse: Callable[[str], Any] | None = None, metavar: str | None = None):
    """A field that is also a command-line flag: ``--name-with-dashes`` (a True default gives
    ``--no-name``, a False one a switch ``--name``), with ``help``, ``choices`` and ``parse`` (the
    text-to-value function; default: the type of ``default``).  ``label`` names the setting in errors."""
    meta = {"help": help, "choices": choices, "label": label, "parse": parse, "metavar": metavar}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are flags, in the order ``--help`` lists them."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("help")]


def flag_name(f: dataclasses.Field) -> str:
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def label(name: str) -> str:
    """How messages name a setting: its ``label``, else its name in words."""
    f = _FIELDS.get(name)
    return (f.metadata.get("label") if f is not None else None) or name.replace("_", " ")


@dataclass
class TrainConfig:
    model: str = setting("lenet", "model name (see `cnnlab models`)")
    model_options: dict[str, Any] = field(default_factory=dict)
    """Options of the model's factory (``cnnlab train --option KEY=VALUE``)."""
    dataset: str = setting("fashion-mnist", "dataset name (see `cnnlab data info --help` for the list)")
    data_dir: str | None = setting(None, "folder holding the dataset's files (IDX files, or CIFAR-10's tarball or "
                                         "cifar-10-batches-py/); else $CNNLAB_DATA, the user "
                                         "cache, system copies, then a download")
    verify: bool = setting(True, "trust the data files instead of checking their checksums against the registry "
                                 "(then they may hold any number of examples: a subset); a trained run's data is "
                                 "checked as the run's was")
    """Check the data files against the registry's checksums; False trusts them, and then they may hold
    any number of examples in the dataset's format (a subset, such as the tests' own)."""
    data: str | None = setting(None, "your own data instead of --dataset: an image folder (one sub-folder per "
                                     "class, optionally under train/ and test/ or val/), a .npz file (x_train, "
                                     "y_train, x_test, y_test) or a folder of IDX files (see docs/data.md)",
                               metavar="PATH")
    image_size: int | None = setting(None, "side the images are converted to (default: the size most images "
                                           "share, else 28)", parse=int, metavar="PIXELS")
    channels: int | None = setting(None, "1 (gray) or 3 (colour) (default: 1 if every image is gray, else 3)",
                                   parse=int)
    val_fraction: float = setting(0.0, "hold out this part of the training data (seeded, stratified) for "
                                       "validation: the epochs report validation accuracy, the test split is "
                                       "scored once at the end", metavar="F", label="validation fraction")
    skip_bad_images: bool = setting(False, "leave out (and count) unreadable or corrupt images instead of "
                                           "stopping at the first")
    epochs: int = setting(10, "training epochs")
    batch_size: int = setting(256, "training batch size")
    eval_batch_size: int = setting(1024, "batch size for test accuracy")
    lr: float = setting(0.9, "learning rate (the peak, with a schedule)", label="learning rate")
    optimizer: str = setting("sgd", "sgd (the book), adamw (decoupled weight decay, not on biases/norms) or adam",
                             choices=OPTIMIZERS)
    momentum: float = setting(0.0, "SGD momentum")
    weight_decay: float = setting(0.0, "weight decay")
    init: str = setting("xavier", "weight initialisation: Xavier-uniform (the book) or PyTorch's default",
                        choices=INITS)
    seed: int = setting(0, "random seed (same seed, same run)")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    train_limit: int | None = setting(None, "use only the first N training images", parse=int)
    test_limit: int | None = setting(None, "use only the first N test images", parse=int)
    resize: int | None = None
    """Input side in pixels; None uses the model's own input size."""
    nesterov: bool = setting(False, "Nesterov momentum (SGD with --momentum > 0)")
    schedule: str = setting("constant", "learning-rate schedule, stepped every batch", choices=SCHEDULES)
    """Learning-rate schedule, stepped every batch: constant (the book), cosine, onecycle or step."""
    warmup_epochs: float = setting(0.0, "linear warm-up length in epochs (onecycle: its rising part, default a "
                                        "quarter of the run)")
    """Linear warm-up from lr/100 to lr over this many epochs (onecycle: the rising part)."""
    lr_step_epochs: int = setting(3, "step schedule: epochs between rate drops")
    lr_gamma: float = setting(0.1, "step schedule: factor of each drop")
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing")
    augment: list[str] = setting([], f"comma-separated on-device augmentations from {', '.join(AUGMENTATIONS)} "
                                     f"(or none)", parse=parse_list, metavar="LIST", label="augmentation")
    """Batched on-device augmentations, applied in order: crop, flip, erase."""
    crop_padding: int = setting(2, "random crop: zero padding in pixels")
    erase_prob: float = setting(0.5, "random erasing: probability per image")
    preset: str | None = None
    """Name of the preset the run started from (informational; the fields above are what count)."""
    compile: str = setting("auto", "torch.compile the training step (auto: off, since a cold compile costs the "
                                   "10-epoch recipe more than it saves on CPU and GPU alike; on: compile, with CUDA "
                                   "graphs on GPUs); falls back to plain PyTorch if it cannot compile",
                           choices=COMPILE_CHOICES, label="compile setting")
    precision: str = setting("auto", "precision (auto: bf16 on CUDA GPUs that support it, and for the LeNet kernel "
                                     "on CPUs with native bf16; else fp32)", choices=PRECISION_CHOICES)
    kernel: str = setting("auto", "hand-fused CPU training step for LeNet-shaped networks (auto: wherever it "
                                  "applies; off: PyTorch's own layers)", choices=KERNEL_CHOICES,
                          label="kernel setting")
    tta: str = setting("none", "test-time augmentation of the run's test evaluations and later of `cnnlab "
                               "evaluate` (a validation split is scored by the plain network): flip scores each "
                               "image with its mirror image too, flip-shift adds both moved a pixel up-left and "
                               "down-right", choices=TTA_CHOICES,
                       label="test-time augmentation")
    channels_last: str = setting("auto", "NHWC convolutions (auto: on CPUs, where they measured 1.3-1.9x faster "
                                         "per step, except with batch norm over fewer than 16 channels)",
                           choices=CHANNELS_LAST_CHOICES, label="channels-last setting")
    tensorboard: bool = setting(False, "also write TensorBoard event files into the run directory's tb/ "
                                       "(needs the tensorboard extra)")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, naming the setting) for values no run can use; returns self.
        (Whether the model builds for the dataset is :func:`cnnlab.train.run.check_run`'s question.)"""
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
        _check_positive_int("epochs", self.epochs, MAX_EPOCHS, "what metrics.csv and the curves can hold")
        for name in ("batch_size", "eval_batch_size", "lr_step_epochs"):
            _check_positive_int(name, getattr(self, name))
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.resize is not None:
            _check_positive_int("resize", self.resize, MAX_IMAGE_SIDE, "pixels")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "lr_gamma", "label_smoothing", "erase_prob"):
            # NaN slips through every range test below (all its comparisons are false) and fails later
            # as something else: a divergence blamed on the learning rate, int(nan) in the schedule.
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{label(name)} must be a finite number, got {value!r}")
            if abs(value) > FLOAT32_MAX:
                raise ConfigError(f"{label(name)} must be at most {FLOAT32_MAX:.7g} (the largest float32), "
                                  f"got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.momentum < 0 or self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"unknown {label(f.name)} {getattr(self, f.name)!r}; "
                                  f"choose one of {', '.join(choices)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("Nesterov momentum needs --optimizer sgd and a --momentum above 0")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(f"warm-up epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr gamma must be in (0, 1], got {self.lr_gamma!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)}")
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) \
                or not 0 <= self.crop_padding <= MAX_IMAGE_SIDE:
            raise ConfigError(f"crop padding must be a non-negative integer, got {self.crop_padding!r}")
        if not 0 <= self.erase_prob <= 1:
            raise ConfigError(f"erase probability must be in [0, 1], got {self.erase_prob!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be an integer from 0 to {2 ** 32 - 1}, got {self.seed!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the training settings") -> "TrainConfig":
        """The config of a saved mapping (a run's config.json, a checkpoint), validated; ``source`` names it in
        errors.  Runs saved before --tta had more than one choice said ``tta_flip: true/false``; runs saved
        before the curve's points per epoch became the book's fixed five say ``points_per_epoch``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a mapping of setting names to values, got {_shown(data)}")
        data = {k: v for k, v in data.items() if k not in RETIRED}
        if "tta_flip" in data:
            data = {**{k: v for k, v in data.items() if k != "tta_flip"},
                    "tta": data.get("tta") or ("flip" if data["tta_flip"] else "none")}
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown training settings {', '.join(map(str, unknown))} in {source}; "
                              f"this cnnlab knows: {', '.join(sorted(_FIELDS))}")
        try:
            return cls(**data).validate()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "TrainConfig":
        """The settings a run directory saved (its config.json), checked as flags are: one line for a file
        that is missing, not JSON, or holds settings no run can use."""
        path = Path(run_dir) / "config.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{run_dir} has no config.json; give the directory of an earlier run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); the run cannot be used") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from exc
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ConfigError(f"{path} holds no 'config' mapping of training settings (got {_shown(saved)}); "
                              f"it was not written by cnnlab train: give the directory of an earlier run")
        return cls.from_dict(saved["config"], source=str(path))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
RETIRED = frozenset({"points_per_epoch"})
"""Settings that runs saved by earlier versions hold and this one ignores."""

_KINDS = {"str": (str, "text"), "bool": (bool, "true or false"), "dict": (dict, "a mapping"),
          "list": (list, "a list")}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_type(f: dataclasses.Field, value: Any) -> None:
    """Text, switch, mapping and list settings hold what their annotation says (numbers have their own
    range checks); a saved config.json may hold anything."""
    annotation = str(f.type)
    base = annotation.split("|")[0].split("[")[0].strip()
    if base not in _KINDS or (value is None and "None" in annotation):
        return
    kind, words = _KINDS[base]
    if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)) \
            or (kind is dict and not all(isinstance(k, str) for k in value)):
        words = {"model_options": "a mapping of names to values", "augment": "a list of names"}.get(f.name, words)
        raise ConfigError(f"{label(f.name)} must be {words}, got {_shown(value)}")


def _check_positive_int(name: str, value: Any, limit: int = MAX_INT, why: str = "an int64") -> None:
    if not positive_int(value):
        raise ConfigError(f"{label(name)} must be a positive integer, got {value!r}")
    if not positive_int(value, limit):
        raise ConfigError(f"{label(name)} must be at most {limit} ({why}), got {value!r}")
