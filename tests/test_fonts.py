"""Figures draw Chinese, Japanese and Korean class names and titles (not empty boxes): matplotlib says
"Glyph ... missing from font(s)" for every character it cannot draw, and cnnlab's figures give it none to
say, while the same figure with matplotlib's DejaVu Sans alone does."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from conftest import require

from cnnlab import viz
from cnnlab.sweep import results_chart

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["卷积", "ねこ", "고양이", "cat"]
TITLE = "混淆矩阵 · 混同行列 · 혼동 행렬"
NO_CJK_FONT = "install a CJK font: apt-get install fonts-noto-cjk"


def confusion():
    return viz.plot_confusion(np.eye(4, dtype=int), CLASSES, title=TITLE)


def grid():
    return viz.show_images(np.zeros((4, 8, 8), np.uint8), CLASSES, 1, 4)


def sweep_chart():
    return results_chart([{"activation": name, "test_acc": 0.8} for name in CLASSES], ["activation"])


def missing_glyphs(build, fmt: str, caplog) -> list[str]:
    """What matplotlib warns while ``build`` makes a figure and it is saved as ``fmt``."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="matplotlib"):
        warnings.simplefilter("always")
        build().savefig(io.BytesIO(), format=fmt)
    found = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    return [m for m in found if "missing from font" in m or "findfont" in m]


@pytest.fixture(autouse=True)
def own_rc_params():
    """Each test starts from and leaves matplotlib's settings as they were."""
    with matplotlib.rc_context():
        yield


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
@pytest.mark.parametrize("build", [confusion, grid, sweep_chart])
def test_figures_draw_cjk_text(build, fmt, caplog):
    require(bool(viz.installed_cjk_fonts()), "a font with Chinese, Japanese and Korean glyphs", NO_CJK_FONT)
    assert missing_glyphs(build, fmt, caplog) == []


def test_dejavu_sans_alone_cannot_draw_them(monkeypatch, caplog):
    """The check above can fail: without the fallbacks every CJK character is a missing glyph."""
    monkeypatch.setattr(viz, "installed_cjk_fonts", lambda: ())
    matplotlib.rcParams["font.family"] = ["DejaVu Sans"]
    messages = missing_glyphs(confusion, "png", caplog)
    drawn = {c for c in "".join(CLASSES) + TITLE if not c.isascii() and c not in " ·"}
    assert {m.split("(\\N{")[0].split()[1] for m in messages} == {str(ord(c)) for c in drawn}


def test_the_fallbacks_follow_the_users_fonts_once():
    require(bool(viz.installed_cjk_fonts()), "a font with Chinese, Japanese and Korean glyphs", NO_CJK_FONT)
    matplotlib.rcParams["font.family"] = ["serif"]
    viz.use_cjk_fonts()
    viz.use_cjk_fonts()
    assert matplotlib.rcParams["font.family"] == ["serif", *viz.installed_cjk_fonts()]
    assert set(viz.installed_cjk_fonts()) <= set(viz.CJK_FONTS)


@pytest.mark.parametrize("cache", ["fresh", "stale"])
def test_a_font_installed_after_matplotlib_listed_the_fonts_is_found(cache, tmp_path):
    """Matplotlib keeps its list of the system's fonts in its cache folder: a fresh one is built at start,
    a stale one (written before the CJK font was installed) lacks it, and cnnlab looks again."""
    require(bool(viz.installed_cjk_fonts()), "a font with Chinese, Japanese and Korean glyphs", NO_CJK_FONT)
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if cache == "stale":
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True, timeout=300)
        (listing,) = tmp_path.glob("fontlist-*.json")
        fonts = json.loads(listing.read_text())
        cjk_files = {f["fname"] for f in fonts["ttflist"] if f["name"] in viz.CJK_FONTS}
        fonts["ttflist"] = [f for f in fonts["ttflist"] if f["fname"] not in cjk_files]   # as before installing
        listing.write_text(json.dumps(fonts))
    draw = f"""
import io, warnings
import numpy as np
from matplotlib import font_manager
from cnnlab import viz
known = set(font_manager.fontManager.get_font_names()) & set(viz.CJK_FONTS)
print("known before:", bool(known))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    viz.plot_confusion(np.eye(4, dtype=int), {CLASSES!r}, title={TITLE!r}).savefig(io.BytesIO(), format="png")
print("warnings:", [str(w.message) for w in caught])
"""
    done = subprocess.run([sys.executable, "-c", draw], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [f"known before: {cache == 'fresh'}", "warnings: []"]
