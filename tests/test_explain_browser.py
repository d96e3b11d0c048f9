"""``cnnlab explain``'s page in a real headless Chromium, driven by Playwright: ``$CNNLAB_CHROMIUM``,
else Debian's ``/usr/bin/chromium``, else the one ``python -m playwright install chromium`` puts in
Playwright's folder (macOS, Windows).

Each test saves a screenshot in its temporary folder.  Without Chromium or Playwright the tests skip
with the command that installs them; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from explain_helpers import api, serving, train_run

SYSTEM_CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]


def chromium_path() -> Path | None:
    """The Chromium to drive: ``$CNNLAB_CHROMIUM``, Debian's, or None for Playwright's own."""
    if os.environ.get("CNNLAB_CHROMIUM"):
        return Path(os.environ["CNNLAB_CHROMIUM"])
    return SYSTEM_CHROMIUM if SYSTEM_CHROMIUM.exists() else None


def require_browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append('pip install -c constraints.txt -e ".[test]"  (for playwright)')
    else:
        chromium = chromium_path()
        if chromium is None:
            with sync_playwright() as p:
                chromium = Path(p.chromium.executable_path)
        if not chromium.exists():
            missing.append("apt-get update && apt-get install -y chromium (Debian, Ubuntu), or "
                           "python -m playwright install chromium (macOS, Windows), or set CNNLAB_CHROMIUM")
    if missing:
        message = "the browser tests need Chromium and Playwright: " + "; ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    require_browser()
    run = train_run(tmp_path_factory.mktemp("explain-browser") / "lenet_wide", "lenet_wide", "--lr", "0.1")
    with serving(run) as address:
        yield address


@pytest.fixture(scope="module")
def browser(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    yield page
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    context.close()
    assert not errors, errors
    assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in requests), requests   # offline


def probabilities_for(url, source):
    return api(url, "/api/forward", {"input": source})


def test_choose_a_test_image_and_see_its_prediction(page, url, tmp_path):
    page.fill("#test-index", "12")
    page.click("#show-test")
    page.wait_for_function("() => document.querySelector('#input-label').textContent.startsWith('test image 12')")
    expected = probabilities_for(url, {"test": 12})
    classes = api(url, "/api/run")["classes"]
    assert page.text_content("#predicted-class") == classes[expected["predicted"]]
    assert page.text_content("#input-label") == f"test image 12, true class: {classes[expected['label']]}"
    assert page.locator("#layers .layer").count() == 6
    assert page.locator("#layers .layer").first.locator("canvas.map").count() == 16     # the first 16 of 32 channels
    page.click("#more-channels")
    page.wait_for_function("() => document.querySelector('#layers .layer').querySelectorAll('canvas.map').length == 32")
    page.select_option("#class-select", "8")
    page.click("#next-class")
    page.wait_for_function("() => document.querySelector('#input-label').textContent.endsWith('true class: bag')")
    page.screenshot(path=str(tmp_path / "network.png"), full_page=True)


def test_click_a_conv_unit_and_see_how_its_number_is_made(page, url, tmp_path):
    first_map = page.locator("#layers .layer").nth(2).locator("canvas.map").nth(3)   # second conv, channel 3
    box = first_map.bounding_box()
    # the unit at row 4, column 6 of the 10x10 map
    page.mouse.click(box["x"] + (6.5 / 10) * box["width"], box["y"] + (4.5 / 10) * box["height"])
    page.wait_for_selector("#explain-sum")
    explained = api(url, "/api/explain", {"input": {"test": 0}, "layer": 2, "unit": [3, 4, 6]})
    assert page.text_content("#explanation h2") == "Layer 2 (conv 5x5, 64 channels + batch norm + relu), channel 3, row 4, column 6"
    assert float(page.text_content("#explain-sum")) == pytest.approx(explained["sum"], abs=1e-6)
    shown, in_map = float(page.text_content("#explain-value")), float(page.text_content("#explain-map-value"))
    assert shown == pytest.approx(in_map, abs=1e-6) and shown == pytest.approx(explained["value"], abs=1e-6)
    assert "the same number" in page.text_content(".final")
    assert page.locator(".channel").count() == 8                       # 8 of the 32 input channels shown
    assert page.locator(".channel").first.locator("table").first.locator("td").count() == 25
    page.screenshot(path=str(tmp_path / "number.png"), full_page=True)
    # padding drawn: a unit of the first conv at the corner reads zero padding
    page.click("nav button[data-tab=number]")
    page.select_option("#unit-layer", "0")
    page.fill("#unit-index", "0,0,0")
    page.click("#unit-show")
    page.wait_for_function("() => document.querySelector('#explanation h2').textContent.includes('row 0, column 0')")
    assert page.locator(".channel td.pad").count() == 25 - 9             # a 5x5 window, 2 rows and columns of padding
    assert "zero padding 2×2" in page.text_content("#input-note")
    page.screenshot(path=str(tmp_path / "padding.png"), full_page=True)


def test_draw_on_the_canvas_and_see_a_prediction(page, url, tmp_path):
    canvas = page.locator("#draw")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    for k in range(1, 11):                                            # a vertical stroke: a trouser leg, maybe
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * (0.15 + 0.07 * k))
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#input-label').textContent == 'your image'")
    pixels = page.evaluate("() => state.forward.image")
    assert sum(map(sum, pixels)) > 255 * 20                            # the stroke arrived, light on dark
    expected = probabilities_for(url, {"pixels": pixels})
    classes = api(url, "/api/run")["classes"]
    assert page.text_content("#predicted-class") == classes[expected["predicted"]]
    page.screenshot(path=str(tmp_path / "drawn.png"), full_page=True)


def test_edit_a_playground_kernel_and_see_the_output_change(page, url, tmp_path):
    page.click("nav button[data-tab=playground]")
    page.check("input[name=pg-source][value=book]")
    page.wait_for_function("() => document.querySelector('#pg-shape').textContent == '6 × 7'")
    assert "⌊(8 − 2 + 0 + 1) / 1⌋ = 7" in page.text_content("#pg-formula")
    first_row = page.locator("#pg-numbers tr").first.locator("td").all_text_contents()
    assert [float(v) for v in first_row] == [0, 1, 0, 0, 0, -1, 0]      # the book's edge detector
    before = page.evaluate("() => document.querySelector('#pg-output').toDataURL()")
    page.fill("#kernel-grid input[data-i='0'][data-j='1']", "1")        # [1, 1]: no longer an edge detector
    page.wait_for_function("() => document.querySelector('#pg-numbers td').textContent == '2.000'")
    assert page.evaluate("() => document.querySelector('#pg-output').toDataURL()") != before
    page.fill("#pg-padding", "1")
    page.fill("#pg-stride", "2")
    page.wait_for_function("() => document.querySelector('#pg-shape').textContent == '4 × 5'")
    assert "⌊(6 − 1 + 2 + 2) / 2⌋ = 4" in page.text_content("#pg-formula")
    page.click("[data-preset=sharpen]")
    page.check("input[name=pg-source][value=current]")
    page.wait_for_function("() => document.querySelector('#pg-shape').textContent == '14 × 14'")
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)


def test_training_curves_and_a_confusion_cell(page, url, tmp_path):
    page.click("nav button[data-tab=training]")
    page.wait_for_selector("#confusion td")
    evaluation = api(url, "/api/evaluation")
    recorded = [p["test_acc"] for p in api(url, "/api/training")["points"] if p["test_acc"] is not None][-1]
    # The status is the run's own closing measurement; the evaluation scores the saved network again in
    # fp32 (a CPU with bf16 units trained and measured in bf16: a few of the 1,000 images may differ).
    assert page.text_content("#training-status") == f"finished: 1 epoch, test accuracy {recorded:.3f}"
    assert abs(evaluation["accuracy"] - recorded) <= 0.01
    cells = page.locator("#confusion td")
    assert cells.count() == 100
    counts = torch.tensor(evaluation["confusion"])
    off = counts - torch.diag(torch.diag(counts))
    t, p = divmod(int(off.argmax()), 10)
    cell = page.locator(f"#confusion td[data-true='{t}'][data-predicted='{p}']")
    assert int(cell.text_content()) == int(counts[t, p])
    cell.click()
    page.wait_for_selector("#cell-images figure")
    assert page.locator("#cell-images figure").count() == min(60, int(counts[t, p]))
    page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
    page.locator("#cell-images figure").first.click()
    page.wait_for_function("() => document.querySelector('#tab-network').classList.contains('active')")


def test_upload_a_picture_and_see_its_prediction(page, url, tmp_path):
    import numpy as np
    from PIL import Image

    test_image = np.array(api(url, "/api/forward", {"input": {"test": 5}})["image"], dtype=np.uint8)
    photo = Image.fromarray(255 - test_image).resize((112, 112), Image.Resampling.BICUBIC)   # dark on light, larger
    photo.save(tmp_path / "photo.png")
    page.set_input_files("#upload", str(tmp_path / "photo.png"))
    page.wait_for_function("() => document.querySelector('#input-label').textContent.startsWith('your image')")
    assert page.text_content("#input-label") == "your image (inverted: its background was light)"
    pixels = page.evaluate("() => state.forward.image")
    classes = api(url, "/api/run")["classes"]
    assert page.text_content("#predicted-class") == classes[api(url, "/api/forward", {"input": {"pixels": pixels}})["predicted"]]
    assert np.abs(np.array(pixels, dtype=int) - test_image.astype(int)).mean() < 12     # back to (nearly) the original
    page.screenshot(path=str(tmp_path / "uploaded.png"), full_page=True)
    # a block of a zoo network, or here the flatten layer, is not explained: the page says so
    page.locator("#layers .layer").nth(4).locator("canvas").click()
    assert "is a flatten layer: its numbers are not explained" in page.text_content("#error")


def test_a_run_with_a_validation_split_shows_its_validation_curve(browser, tmp_path):
    """Such a run scores the validation split every epoch (its test_acc stays empty until the end): the
    Training tab drew no held-out curve and said nothing of its accuracy."""
    run = train_run(tmp_path / "validated", "lenet", "--epochs", "2", "--val-fraction", "0.2")
    with serving(run) as address:
        points = api(address, "/api/training")["points"]
        val_accs = [p["val_acc"] for p in points if p["val_acc"] is not None]
        assert len(val_accs) == 2 and all(p["test_acc"] is None for p in points)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(address)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            page.click("nav button[data-tab=training]")
            page.wait_for_function("() => document.querySelector('#training-status').textContent.startsWith('finished')")
            assert page.text_content("#training-status") == f"finished: 2 epochs, validation accuracy {val_accs[-1]:.3f}"
            # The validation curve's colour (#ff7f0e) inside the plot, left of the legend (130 px wide):
            # the legend's swatch alone is not the curve.
            orange = page.evaluate("""() => {
                const c = document.querySelector('#curves'), w = c.width - 130;
                const d = c.getContext('2d').getImageData(0, 0, w, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 127 && d[i + 2] === 14) n++;
                return n; }""")
            assert orange > 20
            page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
            assert not errors, errors
        finally:
            context.close()
