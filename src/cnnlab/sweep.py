"""A grid of training runs over model and training options, and its results table and chart.

``run_sweep(base, axes, root)`` trains one ordinary run directory per cell of the grid
(``root/<cell>``), resuming a cell that was interrupted and skipping one that finished (either only
if it trained the settings asked now: a cell trained otherwise is refused, not reported as this sweep's), then
writes ``results.md``, ``results.csv`` and ``results.png`` in ``root``.  An axis names a
TrainConfig field (``optimizer``, ``lr``, ...) or else a model option (``pooling``, ``activation``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from cnnlab import portable, runlock
from cnnlab.errors import ConfigError
from cnnlab.fileio import save_figure, write_text
from cnnlab.train.callbacks import DamagedSummary, read_summary
from cnnlab.train.config import TrainConfig, label
from cnnlab.train.run import check_run, check_writable, run_config, train
from cnnlab.viz import use_cjk_fonts

RESULT_FIELDS = ("val_acc", "test_acc", "train_acc", "train_loss", "train_seconds", "params")
"""What each cell's row reports; ``val_acc`` only where a cell held out a validation split."""


def result_fields(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in RESULT_FIELDS if k != "val_acc" or score_key(rows) == "val_acc"]


def score_key(rows: list[dict[str, Any]]) -> str:
    """What the cells are compared by: the validation accuracy where cells held out a validation split
    (choosing settings by the test split would tune them to it), else the test accuracy."""
    return "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"


def _score_name(key: str) -> str:
    return "validation accuracy" if key == "val_acc" else "test accuracy"


LIST_SETTINGS = ("augment",)
"""Settings whose value is a list of names: in a grid, one value joins them with ``+``
(``augment=crop+flip,flip,none``)."""


def split_values(text: str) -> list[str]:
    """``"a,[1,2],{"k":1}"`` -> ``["a", "[1,2]", '{"k":1}']``: commas inside brackets, braces or
    quotes belong to the value."""
    values, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return values


def parse_axis(spec: str) -> tuple[str, list[Any]]:
    """``"pooling=avg,max"`` -> ``("pooling", ["avg", "max"])``; values are read as JSON when they parse
    (``channels=[8,16],[16,32]`` is two lists), and a list setting's names are joined by ``+``
    (``augment=crop+flip,none`` -> ``[["crop", "flip"], []]``)."""
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
        raise ConfigError(f"sweep axis {spec!r} is not NAME=V1,V2,... (e.g. --grid pooling=avg,max)")
    key = key.replace("-", "_")
    parsed = []
    for text in split_values(values):
        if not text.strip():
            raise ConfigError(f"sweep axis {spec!r} has an empty value; separate values with single commas")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        if key in LIST_SETTINGS and isinstance(value, str):
            value = [] if value.lower() == "none" else [v.strip() for v in value.split("+") if v.strip()]
        parsed.append(value)
    return key, parsed


def cell_name(cell: dict[str, Any]) -> str:
    """A directory name for a cell: ``pooling-avg_activation-relu`` (a list of names: ``augment-crop+flip``),
    valid on every system (``device-cuda:0`` becomes ``device-cuda-0``), so the sweep copies to Windows."""
    def text(v):
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return "+".join(v) or "none"
        return json.dumps(v, separators=(",", "")) if isinstance(v, (list, dict)) else str(v)
    return portable.portable_name("_".join(f"{k}-{text(v)}" for k, v in cell.items()).replace(" ", ""))


def cell_config(base: TrainConfig, cell: dict[str, Any]) -> TrainConfig:
    """``base`` with the cell's values: config fields set directly, anything else as a model option."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = base.to_dict()
    options = dict(settings["model_options"])
    for key, value in cell.items():
        if key in fields:
            settings[key] = value
        else:
            options[key] = value
    settings["model_options"] = options
    return TrainConfig.from_dict(settings)


def grid_cells(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep axes repeat a name: {names}")
    return [dict(zip(names, values)) for values in itertools.product(*(vals for _, vals in axes))]


def _recorded_params(run_dir: Path) -> int | None:
    """The parameters of the cell's network as it trained, sized for the data (its config.json's
    ``params``); None for a cell trained before runs recorded it."""
    try:
        params = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("params")
    except (OSError, ValueError, AttributeError):
        return None
    return params if isinstance(params, int) else None


WHERE_SETTINGS = ("data_dir", "device")
"""Settings that say where a cell's data was and where it trained, not what it trained: a cell found
earlier may have found its data elsewhere (``data_dir`` records the folder) or trained on another device."""


def _start_again(run_dir: Path) -> str:
    return f"sweep into another --root, or delete {run_dir} to train the cell again"


def _recorded_config(run_dir: Path) -> dict[str, Any]:
    """The settings a cell trained with (its config.json), as a dict; a one-line error naming the file
    when they cannot be read, since then nothing says whether the cell is the one asked for."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError("it holds no 'config' mapping of training settings")
        return TrainConfig.from_dict(saved["config"], source=path.name).to_dict()
    except FileNotFoundError:
        problem = "it has no config.json"
    except (OSError, ValueError) as exc:   # not UTF-8, not JSON, not settings (ConfigError is a ValueError)
        problem = f"its {path.name} is damaged ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
    raise ConfigError(f"sweep cell {run_dir} has trained, but {problem}, so what it trained is unknown; "
                      f"{_start_again(run_dir)}")


def check_cell(run_dir: Path, config: TrainConfig) -> None:
    """Refuse a cell that trained (or began to) with settings other than ``config``: skipping or resuming
    it would report another run's numbers under this sweep's settings."""
    if not ((run_dir / "checkpoint.pt").exists() or (run_dir / "summary.json").exists()):
        return   # nothing trained yet: the cell starts afresh with the settings asked now
    recorded, asked = _recorded_config(run_dir), run_config(config).to_dict()
    differ = [k for k in asked if k not in WHERE_SETTINGS and recorded.get(k) != asked[k]]
    if differ:
        shown = ", ".join(f"{label(k)} {recorded.get(k)!r} (asked: {asked[k]!r})" for k in differ)
        raise ConfigError(f"sweep cell {run_dir} trained other settings than this sweep asks: {shown}; "
                          f"{_start_again(run_dir)}")


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The cell's summary.json, or None if it has not finished.  A damaged one (not one training wrote)
    counts as not finished: the cell is resumed from its checkpoint, which holds every epoch it trained,
    so its numbers are computed again without training again."""
    try:
        return read_summary(run_dir)
    except DamagedSummary as exc:
        print(f"note: {exc}; the cell's numbers are taken again from its run", file=sys.stderr, flush=True)
        return None


def run_sweep(base: TrainConfig, axes: Sequence[tuple[str, list[Any]]], root: str | Path, *,
              progress: bool = False, out: TextIO | None = None) -> list[dict[str, Any]]:
    """Train every cell not yet finished, then write the results table and chart; returns the rows.
    A cell found in ``root`` is skipped (finished) or resumed (interrupted) only if it trained the
    settings asked now (:func:`check_cell`)."""
    root = Path(root)
    cells = grid_cells(axes)
    folders: dict[str, dict[str, Any]] = {}
    for cell in cells:
        other = folders.setdefault(cell_name(cell), cell)
        if other is not cell:
            raise ConfigError(f"sweep cells {other} and {cell} would share the folder {cell_name(cell)}; "
                              f"give the axes values that differ in more than spaces and <>:\"/\\|?*")
    configs = [check_run(cell_config(base, cell)) for cell in cells]  # fail before any training
    for cell, config in zip(cells, configs):
        check_cell(root / cell_name(cell), config)
    check_writable(root, flag="--root")
    rows = []
    for cell, config in zip(cells, configs):
        run_dir = root / cell_name(cell)
        with runlock.hold(run_dir, fix="wait for it to finish, or sweep into another --root"):
            check_cell(run_dir, config)   # again, now that no other sweep can write the cell
            summary = _finished(run_dir)
            if summary is None:
                resume = run_dir if (run_dir / "checkpoint.pt").exists() else None
                print(f"== {cell_name(cell)}" + (" (resuming)" if resume else ""), file=out, flush=True)
                summary = train(None if resume else config, run_dir=run_dir, resume=resume, progress=progress,
                                out=out)
            else:
                print(f"== {cell_name(cell)}: finished earlier, skipped", file=out, flush=True)
        params = _recorded_params(run_dir)
        rows.append({**cell, **{k: summary.get(k) for k in RESULT_FIELDS if k != "params"}, "params": params,
                     "run_dir": str(run_dir)})
    write_results(rows, [name for name, _ in axes], root)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def results_markdown(rows: list[dict[str, Any]], axis_names: Sequence[str]) -> str:
    """One row per cell; with exactly two axes, also the accuracy the cells are compared by
    (:func:`score_key`) as a first-axis x second-axis table."""
    columns = [*axis_names, *result_fields(rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    if len(axis_names) == 2:
        a, b = axis_names
        a_vals = list(dict.fromkeys(str(r[a]) for r in rows))
        b_vals = list(dict.fromkeys(str(r[b]) for r in rows))
        key = score_key(rows)
        acc = {(str(r[a]), str(r[b])): r.get(key) for r in rows}
        lines += ["", f"{_score_name(key)} ({a} down, {b} across)", "",
                  f"| {a} \\ {b} | " + " | ".join(b_vals) + " |", "|" + "---|" * (len(b_vals) + 1)]
        lines += [f"| {va} | " + " | ".join(_fmt(acc[(va, vb)]) for vb in b_vals) + " |" for va in a_vals]
    return "\n".join(lines) + "\n"


def results_csv(rows: list[dict[str, Any]], axis_names: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*axis_names, *result_fields(rows), "run_dir"], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    return buf.getvalue()


def results_chart(rows: list[dict[str, Any]], axis_names: Sequence[str]):
    """A horizontal bar per cell: its final accuracy of :func:`score_key` (a cell without one: no bar)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    key = score_key(rows)
    labels = [", ".join(f"{k}={r[k]}" for k in axis_names) for r in rows]
    accs = [r.get(key) for r in rows]
    fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.4 * len(rows)))
    ax.barh(range(len(rows)), [0.0 if acc is None else acc for acc in accs], color="C2")
    ax.set_yticks(range(len(rows)), labels=labels)
    ax.invert_yaxis()
    ax.set_xlabel(_score_name(key))
    measured = [acc for acc in accs if acc is not None]
    left = max(0.0, min(measured, default=0.0) - 0.05)
    ax.set_xlim(left, 1.0)
    for i, acc in enumerate(accs):
        ax.text(left if acc is None else acc, i, " none" if acc is None else f" {acc:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def write_results(rows: list[dict[str, Any]], axis_names: Sequence[str], root: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    write_text(root / "results.md", results_markdown(rows, axis_names))
    write_text(root / "results.csv", results_csv(rows, axis_names))
    fig = results_chart(rows, axis_names)
    save_figure(root / "results.png", fig, dpi=120)
    plt.close(fig)
