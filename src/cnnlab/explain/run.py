"""A trained run as ``cnnlab explain`` serves it: the model, its test data, and the answers of the API.

Every answer is a plain dict ready for JSON.  Bad values raise :class:`cnnlab.errors.ConfigError`
(the server answers 400 with its one line).  The checkpoint is read again when the training process
replaces it, so a run still training shows its latest epoch.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.loader import to_float
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.explain import compute
from cnnlab.explain.compute import whole_number
from cnnlab.images import read_image
from cnnlab.inference import evaluate, fit_image
from cnnlab.train.callbacks import read_metrics_csv
from cnnlab.trained import TrainedRun

MAX_UPLOAD_PIXELS = 16_000_000
"""Most pixels an uploaded picture may have (a 4000x4000 photo); larger ones are refused from the header."""

MAX_CHANNELS = 512
"""Most feature maps one answer sends per layer (the page asks for 16 and more on demand)."""

CELL_IMAGES = 60
"""Most images a confusion-matrix cell answer holds."""

CONFUSION_CLASSES = 100
"""Most classes whose whole confusion matrix the evaluation answer sends (100 x 100 cells is a table a
person can read; 10,000 classes would be 200 MB of JSON)."""

TOP_CONFUSIONS = 200
"""With more classes, how many of the most frequent confusions (off-diagonal cells) are sent instead."""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rows(t: torch.Tensor) -> list:
    """A tensor as nested lists of floats, non-finite values (JSON has none) as None."""
    flat = [_finite(v) for v in t.reshape(-1).tolist()]
    for size in reversed(t.shape[1:]):
        flat = [flat[k:k + size] for k in range(0, len(flat), size)]
    return flat


def confusion_answer(confusion: torch.Tensor) -> dict[str, Any]:
    """The confusion matrix as the evaluation answer sends it: whole (``confusion``) up to
    :data:`CONFUSION_CLASSES` classes; beyond, ``confusion`` is None and ``confused`` lists the
    :data:`TOP_CONFUSIONS` most frequent off-diagonal cells (most first, then by true and predicted
    class), with ``confused_cells``, how many off-diagonal cells are not zero."""
    k = confusion.shape[0]
    if k <= CONFUSION_CLASSES:
        return {"confusion": confusion.tolist()}
    off = confusion.clone()
    off.fill_diagonal_(0)
    cells = off.nonzero()
    counts = off[cells[:, 0], cells[:, 1]]
    order = torch.sort(counts, descending=True, stable=True).indices[:TOP_CONFUSIONS].tolist()   # ties: row-major
    return {"confusion": None, "confused_cells": len(counts),
            "confused": [{"true": int(cells[n, 0]), "predicted": int(cells[n, 1]), "count": int(counts[n])}
                         for n in order]}


class ExplainedRun:
    """The run directory ``run_dir``, loaded: one line of error for a missing or unfinished run."""

    def __init__(self, run_dir: str | Path, data_dir: str | None = None, verify: bool | None = None):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise ConfigError(f"run directory {self.run_dir} does not exist; pass a folder written by cnnlab train")
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self._data_dir, self._verify = data_dir, verify
        self._lock = threading.RLock()
        self._stamp = None
        self._load()

    # ---- loading ------------------------------------------------------------------------------
    def _file_stamp(self):
        try:
            st = self.checkpoint_path.stat()
        except OSError:
            return self._stamp
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        stamp = self._file_stamp()
        run = TrainedRun.open(self.run_dir, "the run to explain")
        model = run.build_model()
        if getattr(self, "images", None) is None:
            self.split = run.scoring_split
            self.images, self.labels = run.load_split(self.split, self._data_dir, self._verify)
        self.run, self.model, self.layers = run, model, compute.network_layers(model)
        self.classes = list(run.classes)
        self.input_size = run.input_size
        self.normalize = run.normalize   # a run on its own data: per-channel (mean, std)
        self._evaluation = None
        self._stamp = stamp

    def refresh(self) -> None:
        """Read the checkpoint again if training replaced it (a damaged one keeps the last good model)."""
        with self._lock:
            if self._file_stamp() != self._stamp:
                try:
                    self._load()
                except CheckpointError:
                    self._stamp = self._file_stamp()

    @property
    def epochs_done(self) -> int:
        return self.run.epoch

    @property
    def epochs_planned(self) -> int | None:
        return self.run.config.epochs if self.run.config is not None else None

    @property
    def complete(self) -> bool:
        return self.run.complete

    # ---- inputs ---------------------------------------------------------------------------------
    def image(self, source: Any) -> tuple[torch.Tensor, int | None]:
        """The uint8 image (C, H, W) a request names, with its true class when it is a test image.

        ``{"test": N}`` is test image N; ``{"pixels": [[...]]}`` an H x W picture of 0..255 values (what
        :meth:`upload` returns, or the book's example for the playground)."""
        if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in ("test", "pixels"):
            raise ConfigError('the input must be {"test": INDEX} or {"pixels": [[0..255, ...], ...]}')
        channels, height, width = self.images.shape[1:]
        if "test" in source:
            index = whole_number(source["test"], "test image", 0, len(self.labels) - 1)
            return self.images[index], int(self.labels[index])
        rows = source["pixels"]
        if (not isinstance(rows, list) or len(rows) != height
                or not all(isinstance(r, list) and len(r) == width for r in rows)):
            raise ConfigError(f"pixels must be {height} rows of {width} values, as the test images are")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for r in rows for v in r):
            raise ConfigError("pixels must be whole numbers from 0 to 255")
        gray = torch.tensor(rows, dtype=torch.uint8)
        return gray.expand(channels, height, width).clone(), None

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """The float input (1, C, H, W) the network receives for a uint8 image, as predict makes it."""
        return to_float(image.unsqueeze(0), resize=self.input_size, normalize=self.normalize)

    def upload(self, data: bytes) -> dict[str, Any]:
        """An uploaded PNG or JPEG (bytes, never stored), converted as ``cnnlab predict`` converts files."""
        height = self.images.shape[2]
        gray = read_image(data, channels=1, name="the uploaded image", max_pixels=MAX_UPLOAD_PIXELS)
        tensor, inverted = fit_image(gray, "auto", height)
        if tensor.shape[-1] != self.images.shape[3]:
            raise ConfigError("this run's images are not square; uploads are fitted to squares")
        return {"pixels": tensor[0].tolist(), "inverted": inverted, "size": [gray.width, gray.height]}

    # ---- answers --------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        with self._lock:
            x = self.network_input(self.images[0])
            outputs = compute.run_layers(self.layers, x)
            return {
                "run": str(self.run_dir), "model": self.run.model_name, "dataset": self.run.dataset,
                "classes": self.classes, "test_images": len(self.labels),
                "image_shape": list(self.images.shape[1:]), "input_shape": list(x.shape[1:]),
                "epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned, "complete": self.complete,
                "layers": [{"index": layer.index, "name": layer.name, "parts": layer.parts, "kind": layer.kind,
                            "shape": list(out.shape[1:]), "modules": 1 + len(layer.tail),
                            "explained": layer.kind in ("conv", "pool", "dense"),
                            **compute.layer_geometry(layer, inp.shape[1:], out.shape[1:])}
                           for layer, inp, out in zip(self.layers, [x, *outputs], outputs)],
            }

    def forward(self, source: Any, max_channels: Any = 16) -> dict[str, Any]:
        """Every layer's output for the input (its first ``max_channels`` maps) and the class probabilities."""
        limit = whole_number(max_channels, "max_channels", 1, MAX_CHANNELS)
        with self._lock:
            image, label = self.image(source)
            x = self.network_input(image)
            outputs = compute.run_layers(self.layers, x)
            probabilities = torch.softmax(outputs[-1][0].float(), dim=0)
            layers = []
            for layer, out in zip(self.layers, outputs):
                values = out[0]
                shown = values[:limit] if values.dim() == 3 else values
                finite = values[torch.isfinite(values)]
                layers.append({"index": layer.index, "name": layer.name, "kind": layer.kind,
                               "shape": list(values.shape), "values": _rows(shown),
                               "min": float(finite.min()) if finite.numel() else 0.0,
                               "max": float(finite.max()) if finite.numel() else 0.0})
            return {"input": _rows(x[0]), "image": image[0].tolist(), "label": label,
                    "logits": [_finite(v) for v in outputs[-1][0].float().tolist()],
                    "probabilities": [_finite(p) for p in probabilities.tolist()],
                    "predicted": int(probabilities.argmax()), "layers": layers}

    def explain(self, source: Any, layer: Any, unit: Any) -> dict[str, Any]:
        with self._lock:
            index = whole_number(layer, "layer", 0, len(self.layers) - 1)
            image, _ = self.image(source)
            x = self.network_input(image)
            layer_input = x if index == 0 else compute.run_layers(self.layers[:index], x)[-1]
            return compute.explain_unit(self.layers[index], layer_input, unit)

    def playground(self, source: Any, kernel: Any, padding: Any, stride: Any) -> dict[str, Any]:
        if isinstance(source, dict) and "pixels" in source and len(source) == 1:
            rows = source["pixels"]
            ok = (isinstance(rows, list) and 1 <= len(rows) <= 64 and all(isinstance(r, list) for r in rows)
                  and 1 <= len(rows[0]) <= 64 and all(len(r) == len(rows[0]) for r in rows)
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for r in rows for v in r))
            if not ok:
                raise ConfigError("playground pixels must be 1 to 64 equal rows of 1 to 64 finite numbers")
            image = torch.tensor(rows, dtype=torch.float32)
        else:
            with self._lock:
                image = self.network_input(self.image(source)[0])[0, 0]
        return compute.playground(image, kernel, padding, stride)

    def evaluation(self) -> dict[str, Any]:
        """Per-class accuracy and the confusion matrix on the whole test set (computed once per checkpoint)."""
        with self._lock:
            if self._evaluation is None:
                found = evaluate(self.model, self.images, self.labels, self.classes, input_size=self.input_size,
                                 normalize=self.normalize)
                self._evaluation = {
                    "predicted": found.predicted,
                    "answer": {"accuracy": found.accuracy, "per_class": found.per_class, "classes": self.classes,
                               "epochs_done": self.epochs_done, "split": self.split,
                               **confusion_answer(found.confusion)},
                }
            return self._evaluation

    def find(self, kind: Any, after: Any = -1, cls: Any = None) -> dict[str, Any]:
        """The first test image after index ``after`` of class ``cls`` (kind ``class``) or that the network
        gets wrong (kind ``misclassified``), wrapping around."""
        n = len(self.labels)
        after = whole_number(after, "after", -1, n - 1)
        if kind == "class":
            wanted = self.labels == whole_number(cls, "class", 0, len(self.classes) - 1)
        elif kind == "misclassified":
            wanted = self.evaluation()["predicted"] != self.labels
        else:
            raise ConfigError(f"kind must be class or misclassified, not {kind!r}")
        hits = wanted.nonzero().flatten()
        if hits.numel() == 0:
            raise ConfigError("no test image matches" if kind == "class" else "the network classifies every test image correctly")
        later = hits[hits > after]
        return {"index": int(later[0] if later.numel() else hits[0]), "count": int(hits.numel())}

    def cell(self, true: Any, predicted: Any) -> dict[str, Any]:
        """The test images of one confusion-matrix cell: true class ``true``, predicted ``predicted``."""
        k = len(self.classes)
        t, p = whole_number(true, "true", 0, k - 1), whole_number(predicted, "predicted", 0, k - 1)
        with self._lock:
            hits = ((self.labels == t) & (self.evaluation()["predicted"] == p)).nonzero().flatten()
            shown = hits[:CELL_IMAGES]
            return {"true": t, "predicted": p, "count": int(hits.numel()), "indices": shown.tolist(),
                    "images": [self.images[int(i), 0].tolist() for i in shown]}

    def training(self) -> dict[str, Any]:
        """The run's curves from metrics.csv (rewritten after every epoch while it trains)."""
        path = self.run_dir / "metrics.csv"
        try:
            updated = path.stat().st_mtime
        except OSError:
            updated = None
        points = [{name: None if value is None else _finite(value) for name, value in point.items()}
                  for point in read_metrics_csv(path)]
        return {"points": points, "finished": self.complete, "epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned,
                "seconds_since_update": None if updated is None else max(0.0, time.time() - updated),
                "tta": self.run.tta}
