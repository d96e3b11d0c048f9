"""Runs side by side: a table of what each run is and what it reached, and its curves overlaid.

Everything comes from the files a run directory already holds: ``config.json`` (the settings),
``metrics.csv`` (the curves, written every epoch) and ``summary.json`` (written when training ends).
A run without a final ``summary.json`` for all its epochs is shown as in progress (still training,
or interrupted and waiting for ``--resume``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cnnlab.errors import ConfigError
from cnnlab.fileio import check_figure_path, check_output_file, save_figure
from cnnlab.text import display_width, pad
from cnnlab.train.callbacks import read_metrics_csv, read_summary
from cnnlab.train.config import TrainConfig
from cnnlab.viz import use_cjk_fonts

IGNORED_SETTINGS = ("data_dir", "model", "epochs", "model_options")
"""Settings not shown as differences: where the data lay says nothing about the run; the model and the
epochs have columns of their own; model options are shown one by one (``option.NAME``)."""


@dataclass
class RunInfo:
    label: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, float | None]]
    summary: dict[str, Any] | None
    params: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def held_out(self) -> str:
        """What each epoch was scored on: "val" for a run with a validation split, else "test"."""
        return "val" if any(p["val_acc"] is not None for p in self.history) else "test"

    @property
    def epochs_done(self) -> int:
        return len(self.accs)

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 0))

    @property
    def done(self) -> bool:
        return self.summary is not None and self.epochs_done >= self.epochs

    @property
    def accs(self) -> list[float]:
        """The accuracy each epoch measured on the held-out split (:attr:`held_out`)."""
        key = f"{self.held_out}_acc"
        return [p[key] for p in self.history if p[key] is not None]

    def curve(self, key: str) -> list[tuple[float, float]]:
        return [(p["epoch"], p[key]) for p in self.history if p[key] is not None]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); the run directory is damaged") from exc


def read_run(path: Path, label: str) -> RunInfo:
    raw = _read_json(path / "config.json")
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise ConfigError(f"{path / 'config.json'} holds no run settings; is {path} a cnnlab run directory?")
    summary = read_summary(path)
    params = raw.get("params")   # the network as it trained, sized for its data (recorded by training)
    params = params if isinstance(params, int) and not isinstance(params, bool) else None
    return RunInfo(label, path, raw["config"], read_metrics_csv(path / "metrics.csv"), summary, params)


def find_runs(paths: Sequence[str | Path]) -> list[RunInfo]:
    """Every run named: a run directory itself, or the runs directly inside a folder (a sweep root)."""
    runs = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; give run directories or a folder of runs")
        if (path / "config.json").exists():
            runs.append(read_run(path, str(path)))
            continue
        inside = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
        if not inside:
            raise ConfigError(f"{path} is neither a run directory (no config.json) nor a folder of runs")
        runs.extend(read_run(p, str(p)) for p in inside)
    return runs


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def differing_settings(runs: Sequence[RunInfo]) -> list[str]:
    """Setting names whose values differ between the runs (model options as ``option.NAME``)."""
    defaults = TrainConfig().to_dict()   # what a setting saved before it existed meant
    for run in runs:
        flat = {k: v for k, v in {**defaults, **run.config}.items() if k not in IGNORED_SETTINGS}
        flat.update({f"option.{k}": v for k, v in (run.config.get("model_options") or {}).items()})
        run.settings = flat
    names = sorted({k for r in runs for k in r.settings})
    return [n for n in names if len({_shown(r.settings.get(n, "")) for r in runs}) > 1]


def table_rows(runs: Sequence[RunInfo]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows.  Final and best accuracy are of what each epoch measured; where a run
    holds out a validation split, the columns "held out" (val or test) and "test acc" (the test split,
    scored once at the end) say which is which."""
    differ = differing_settings(runs)
    validated = any(r.held_out == "val" for r in runs)
    header = ["run", "model", "params", *differ, "epochs", *(["held out"] if validated else []), "final acc",
              "best acc", *(["test acc"] if validated else []), "train s", "examples/s", "status"]
    rows = []
    for r in runs:
        accs = r.accs
        s = r.summary if r.done else None
        test = s.get("test_acc") if s else None
        rows.append([
            r.label, str(r.config.get("model", "?")), "" if r.params is None else f"{r.params:,d}",
            *(_shown(r.settings.get(n, "")) for n in differ),
            f"{r.epochs_done}/{r.epochs}", *([r.held_out] if validated else []),
            f"{accs[-1]:.4f}" if accs else "", f"{max(accs):.4f}" if accs else "",
            *([f"{test:.4f}" if isinstance(test, (int, float)) else ""] if validated else []),
            f"{s['train_seconds']:.1f}" if s else "",
            f"{s['examples_per_sec']:.0f}" if s and math.isfinite(s.get("examples_per_sec", math.nan)) else "",
            "done" if r.done else "in progress",
        ])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(display_width(h), *(display_width(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(pad(c, w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[c.replace(",", "") if i == 2 else c for i, c in enumerate(row)] for row in rows])
    return buffer.getvalue()


def plot_runs(runs: Sequence[RunInfo]):
    """Held-out accuracy (validation, else test) and train loss of every run against epoch, overlaid
    (one colour per run)."""
    from matplotlib.figure import Figure  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    fig = Figure(figsize=(10.0, 4.0))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for r in runs:
        tests = r.curve(f"{r.held_out}_acc")
        losses = r.curve("train_loss")
        label = (r.label if r.held_out == "test" else f"{r.label} (val)") + ("" if r.done else " (in progress)")
        line, = acc_ax.plot(*zip(*tests), marker="o", label=label) if tests else acc_ax.plot([], [], label=label)
        if losses:
            loss_ax.plot(*zip(*losses), color=line.get_color(), label=label)
    validated = any(r.held_out == "val" for r in runs)
    acc_ax.set(xlabel="epoch", ylabel="held-out acc" if validated else "test acc",
               title="held-out accuracy (validation, else test)" if validated else "test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="train loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(True, alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare(paths: Sequence[str | Path], *, csv_output: bool = False, figure: str | Path | None = None) -> str:
    """The comparison table (Markdown, or CSV); with ``figure``, the curves are drawn into that file."""
    if figure is not None:
        check_figure_path(figure, "--out")
        check_output_file(figure)
    runs = find_runs(paths)
    header, rows = table_rows(runs)
    if figure is not None:
        save_figure(figure, plot_runs(runs), dpi=120)
    return csv_table(header, rows) if csv_output else markdown_table(header, rows)
