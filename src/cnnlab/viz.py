"""Pictures: image grids, training curves, confusion matrices.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``, so they
work headless (no display, no backend selection); save them with :func:`cnnlab.fileio.save_figure`.
The one setting they share is matplotlib's font list, which :func:`use_cjk_fonts` extends so that
Chinese, Japanese and Korean class names and titles are drawn, not shown as empty boxes.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

CJK_FONTS = (
    "Microsoft YaHei", "SimHei", "Malgun Gothic",                  # Windows (Malgun Gothic: Korean)
    "PingFang SC", "Hiragino Sans GB", "Apple SD Gothic Neo",      # macOS
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR",    # Linux (fonts-noto-cjk)
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
)
"""Font families with Chinese, Japanese or Korean glyphs, by preference; the installed ones become
fallbacks for the characters the main font (DejaVu Sans, matplotlib's own) lacks."""


@functools.cache
def installed_cjk_fonts() -> tuple[str, ...]:
    """The families of :data:`CJK_FONTS` matplotlib can use here, one per font file, found once.

    Matplotlib lists the system's fonts once and keeps the list in its cache folder; a font installed
    after that (a learner adding SimHei to fix empty boxes) is missing from it, so when none is known the
    system's font files are looked at again and the new ones added."""
    from matplotlib import font_manager  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    manager = font_manager.fontManager
    if not set(CJK_FONTS) & set(manager.get_font_names()):
        known = {entry.fname for entry in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):   # a file FreeType cannot read
                    continue
    files = {}
    for entry in manager.ttflist:
        files.setdefault(entry.name, entry.fname)
    chosen, seen = [], set()
    for family in CJK_FONTS:
        if family in files and files[family] not in seen:   # one .ttc holds Noto's SC, JP and KR alike
            chosen.append(family)
            seen.add(files[family])
    return tuple(chosen)


def use_cjk_fonts() -> None:
    """Let text in every figure fall back, glyph by glyph, to the installed CJK fonts.

    Matplotlib (3.6 and later) draws each character with the first family in ``font.family`` that has
    it, so the families the user chose stay first (by default ``sans-serif``: DejaVu Sans, which draws
    Latin text exactly as before) and :func:`installed_cjk_fonts` follow.  Only installed families go in
    the list: matplotlib logs a warning for each one it cannot find.  Every function here that builds
    a figure calls this; calling it again changes nothing."""
    import matplotlib  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    families = list(matplotlib.rcParams["font.family"])
    missing = [family for family in installed_cjk_fonts() if family not in families]
    if missing:
        matplotlib.rcParams["font.family"] = families + missing


def _as_displayable(image) -> tuple[np.ndarray, float]:
    """One image as (H, W) or (H, W, C) numpy, and the value that means white."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    white = 255.0 if array.dtype == np.uint8 else 1.0
    return array, white


def show_images(images, titles: Sequence[str] | None, nrows: int, ncols: int, scale: float = 1.5):
    """A grid of ``nrows`` x ``ncols`` images with optional titles, as d2l's ``show_images``.

    ``images`` is a sequence (or a batch tensor/array) of images shaped (H, W), (C, H, W) or
    (H, W, C); uint8 images are shown on 0..255, float ones on 0..1, in grey scale with one fixed
    range for all, so brightness compares across the grid.  Returns the Figure.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    if nrows < 1 or ncols < 1:
        raise ValueError(f"a grid needs at least one row and column, got {nrows} x {ncols}")
    fig = Figure(figsize=(ncols * scale, nrows * scale))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        array, white = _as_displayable(images[i])
        ax.imshow(array, cmap="gray", vmin=0.0, vmax=white, interpolation="nearest")
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[dict], epochs: int | None = None):
    """The book's figure: train loss, train acc and test acc against epoch (x from 1 to ``epochs``).

    ``history`` holds points ``{"epoch", "train_loss", "train_acc", "test_acc"}`` (and ``val_acc`` in a run
    with a validation split) with None where a
    series has no value at that point (as the book's ``Animator.add``).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.subplots()
    series = [("train_loss", "train loss", "-", "C0"), ("train_acc", "train acc", "--", "C1"),
              ("test_acc", "test acc", "-.", "C2"), ("val_acc", "val acc", ":", "C3")]
    for key, label, style, color in series:
        points = [(p["epoch"], p[key]) for p in history if p.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, color=color, label=label, marker="o" if key in ("test_acc", "val_acc") else None,
                    markersize=3)
    ax.set_xlabel("epoch")
    if epochs and epochs > 1:
        ax.set_xlim(1, epochs)
    ax.grid(True, alpha=0.4)
    ax.legend()
    fig.tight_layout()
    return fig


MAX_DRAWN_CLASSES = 30
"""The most classes a confusion figure draws: past that, the classes with the most errors.  A figure of
every class grows with their number squared (a 10,000-class matrix took over ten minutes to draw, as an
image no one could read); the counts themselves are the evaluation's, complete."""


def drawn_classes(confusion) -> list[int]:
    """The classes (indices, in their order) a confusion figure draws: all of them up to
    :data:`MAX_DRAWN_CLASSES`, else that many with the most errors (images of the class predicted as another, and images of other classes
    predicted as it), ties going to the earlier class."""
    cm = np.asarray(confusion)
    n, limit = cm.shape[0], MAX_DRAWN_CLASSES
    if n <= limit:
        return list(range(n))
    right = np.diagonal(cm)
    errors = (cm.sum(axis=1) - right) + (cm.sum(axis=0) - right)
    most = np.argsort(-errors, kind="stable")[:limit]
    return sorted(int(i) for i in most)


def drawn_note(shown: int, total: int) -> str:
    """What a confusion figure of ``shown`` of ``total`` classes leaves out, for its title and the command's
    output ("" when it draws them all)."""
    return "" if shown == total else f"the {shown} of {total:,} classes with the most errors"


def plot_confusion(confusion, classes: Sequence[str], title: str | None = None):
    """A confusion matrix (rows: true class, columns: predicted) with class names and counts; past
    :data:`MAX_DRAWN_CLASSES` classes, only those with the most errors (:func:`drawn_classes`), as the
    figure's title says."""
    from matplotlib.figure import Figure  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    cm = np.asarray(confusion)
    shown = drawn_classes(cm)
    note = drawn_note(len(shown), len(classes))
    if note:
        cm = cm[np.ix_(shown, shown)]
        classes = [classes[i] for i in shown]
    n = len(classes)
    fig = Figure(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    if title or note:
        ax.set_title("\n".join(t for t in (title, note) if t))
    fig.tight_layout()
    return fig
