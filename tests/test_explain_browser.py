"""``cnnlab explain``'s page in a real headless Chromium, driven by Playwright: ``$CNNLAB_CHROMIUM``,
else Debian's ``/usr/bin/chromium``, else the one ``python -m playwright install chromium`` puts in
Playwright's folder (macOS, Windows).

Each test saves a screenshot in its temporary folder.  Without Chromium or Playwright the tests skip
with the command that installs them; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from explain_helpers import api, serving, train_run, trained_model

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
def lenet_run(tmp_path_factory):
    """The book's LeNet (sigmoid, average pooling, 6 and 16 channels, dense 120-84-10)."""
    require_browser()
    return train_run(tmp_path_factory.mktemp("explain-browser") / "lenet", "lenet")


@pytest.fixture(scope="module")
def lenet_url(lenet_run):
    with serving(lenet_run) as address:
        yield address


@pytest.fixture(scope="module")
def browser(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def opened(browser, url, screenshot: Path, locale: str = "en-US"):
    """The page at ``url`` in a fresh context, ready; afterwards its screenshot is saved, and it must have
    raised no JavaScript error (uncaught errors and rejections included) and fetched nothing elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale)
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        yield page
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    assert not errors, errors
    assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in requests), requests   # offline


@pytest.fixture
def page(browser, url, tmp_path):
    with opened(browser, url, tmp_path / "page.png") as page:
        yield page


@pytest.fixture
def lenet_page(browser, lenet_url, tmp_path):
    with opened(browser, lenet_url, tmp_path / "page.png") as page:
        yield page


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
    assert page.text_content("#channel-note") == "showing up to 16 channels of each layer (the widest has 64)"
    page.click("#more-channels")
    page.wait_for_function("() => document.querySelector('#layers .layer').querySelectorAll('canvas.map').length == 32")
    assert page.text_content("#channel-note") == "showing up to 32 channels of each layer (the widest has 64)"
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
    page.locator("#layers .layer").nth(4).locator("canvas").first.click()
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
            # The validation curve (#ff7f0e): one point per epoch, inside the plot; the legend names its split.
            curve = page.locator("#curves polyline[data-series=val_acc]")
            assert curve.get_attribute("stroke") == "#ff7f0e"
            points = [tuple(map(float, p.split(","))) for p in curve.get_attribute("points").split()]
            assert len(points) == 2 and points[1][0] > points[0][0] > 0
            assert "validation accuracy" in page.text_content("#curves-legend [data-series=val_acc]")
            page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
            assert not errors, errors
        finally:
            context.close()


# --------------------------------------------------------------------------- chapter 6, taught


def layer_modules(model, layers):
    """Each page layer's modules of ``model``, in order (the API says how many each has)."""
    modules = [m for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
    found, start = [], 0
    for layer in layers:
        found.append(modules[start:start + layer["modules"]])
        start += layer["modules"]
    return found


def shapes_in_pytorch(run_dir, image):
    """Each module's (input shape, output shape), no batch, in PyTorch's own forward of test image ``image``."""
    model = trained_model(run_dir)
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, (list(i[0].shape[1:]), list(o.shape[1:]))))
             for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
    with torch.no_grad():
        model(torch.tensor(image, dtype=torch.float32)[None, None] / 255)
    for h in hooks:
        h.remove()
    return model, shapes


def test_a_colour_legend_and_each_layers_range(lenet_page, lenet_url):
    page = lenet_page
    assert page.locator("#legend").is_visible()
    labels = page.text_content("#legend .legend-labels")
    assert "negative (blue)" in labels and "0 (white)" in labels and "positive (orange)" in labels
    left, middle, right = page.evaluate("""() => {
        const c = document.querySelector('#legend-scale'), ctx = c.getContext('2d'), y = c.height >> 1;
        return [1, c.width >> 1, c.width - 2].map((x) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))); }""")
    assert left[2] > left[0] + 100                                    # blue
    assert min(middle) >= 240                                         # white
    assert right[0] > right[2] + 100                                  # orange
    forward = api(lenet_url, "/api/forward", {"input": {"test": 0}})
    for layer in forward["layers"]:
        column = page.locator(f"#layers .layer[data-index='{layer['index']}']")
        assert float(column.locator(".range .min").text_content()) == pytest.approx(layer["min"], abs=6e-4)
        assert float(column.locator(".range .max").text_content()) == pytest.approx(layer["max"], abs=6e-4)


def test_each_layer_header_gives_its_sizes_and_the_output_shape_formula(lenet_page, lenet_url, lenet_run):
    """Kernel, padding, stride and the kernel tensor's shape from the modules themselves, and the book's
    formula filled in with the sizes PyTorch's forward has, ending in PyTorch's own output size."""
    page = lenet_page
    layers = api(lenet_url, "/api/run")["layers"]
    image = api(lenet_url, "/api/forward", {"input": {"test": 0}})["image"]
    model, shapes = shapes_in_pytorch(lenet_run, image)
    checked = 0
    for layer, modules in zip(layers, layer_modules(model, layers)):
        column = page.locator(f"#layers .layer[data-index='{layer['index']}']")
        head, last = modules[0], modules[-1]
        n, _ = shapes[head]
        out = shapes[last][1]
        assert column.locator(".shape").text_content() == "output shape " + " × ".join(map(str, out))
        if isinstance(head, torch.nn.Conv2d):
            (kh, kw), (ph, pw), (sh, sw) = head.kernel_size, head.padding, head.stride
            assert ph == pw and sh == sw
            assert column.locator(".sizes").text_content() == f"kernel {kh}×{kw}, padding {ph}, stride {sh}"
            assert column.locator(".weights").text_content() == "kernel tensor " + "×".join(map(str, head.weight.shape))
        elif isinstance(head, torch.nn.AvgPool2d):
            kh = kw = head.kernel_size
            ph, sh = head.padding, head.stride
            assert column.locator(".sizes").text_content() == f"window {kh}×{kw}, stride {sh}"
        else:
            assert column.locator(".formula").count() == 0
            continue
        assert n[1] == n[2] and out[1] == out[2]
        assert column.locator(".formula").text_content() == f"height, width: ⌊({n[1]} − {kh} + {2 * ph} + {sh}) / {sh}⌋ = {out[1]}"
        checked += 1
    assert checked == 4
    headers = page.locator("#layers .layer").all_text_contents()
    assert "kernel tensor 16×6×5×5" in headers[2]
    assert "⌊(28 − 5 + 4 + 1) / 1⌋ = 28" in headers[0]
    assert page.text_content("#layers .layer[data-index='4'] .sizes") == \
        "16 channels of 5×5, read row by row into a vector of 400"
    assert page.text_content("#layers .layer[data-index='5'] .weights") == "weights 120×400"
    # the names the page composes in English are the server's
    assert [h.split("\n")[0] for h in page.locator("#layers .layer h3").all_text_contents()] == \
        [f"{layer['index']}. {layer['name']}" for layer in layers]


def test_the_logits_become_probabilities_by_softmax(lenet_page, lenet_url):
    page = lenet_page
    forward = api(lenet_url, "/api/forward", {"input": {"test": 0}})
    classes = api(lenet_url, "/api/run")["classes"]
    logits = torch.tensor(forward["logits"], dtype=torch.float64)
    expected = torch.softmax(logits, 0)
    heads = page.locator("#softmax th").all_text_contents()
    assert heads[:4] == ["class", "logit o", "exp(o)", "÷ sum = probability"]
    rows = page.locator("#softmax tr[data-class]")
    assert rows.count() == 10
    for k in range(10):
        row = rows.nth(k)
        assert row.locator(".cls").text_content() == classes[k]
        assert float(row.locator(".logit").text_content()) == pytest.approx(float(logits[k]), abs=6e-4)
        assert float(row.locator(".exp").text_content()) == pytest.approx(math.exp(float(logits[k])), rel=2e-3)
        assert float(row.locator(".prob").text_content()) == pytest.approx(float(expected[k]), abs=6e-4)
    assert float(page.text_content("#softmax .exp-sum")) == pytest.approx(float(logits.exp().sum()), rel=2e-3)
    assert page.text_content("#predicted-class") == classes[int(expected.argmax())]


def explain(page, layer, unit):
    page.click("nav button[data-tab=number]")
    page.select_option("#unit-layer", str(layer))
    page.fill("#unit-index", ",".join(map(str, unit)))
    page.click("#unit-show")


def wait_for_title(page, text):
    page.wait_for_function("(t) => (document.querySelector('#explanation h2') || {}).textContent === t", arg=text)


def test_hover_a_product_and_step_the_window_across_the_input(lenet_page, lenet_url):
    page = lenet_page
    explain(page, 0, [0, 0, 0])
    wait_for_title(page, "Layer 0 (conv 5x5, 6 channels + sigmoid), channel 0, row 0, column 0")
    answer = api(lenet_url, "/api/explain", {"input": {"test": 0}, "layer": 0, "unit": [0, 0, 0]})
    lead = page.text_content("#explanation .xcorr")
    assert "cross-correlation of d2l 6.1" in lead and "not flipped" in lead
    # padding times a negative weight is -0.0 in the answer: the page writes 0.000
    products = [v for row in answer["products"][0] for v in row]
    assert any(v == 0 and math.copysign(1, v) < 0 for v in products)
    cells = page.locator("#explanation td").all_text_contents()
    assert "-0.000" not in cells and "0.000" in cells

    block = page.locator(".channel").first
    block.locator("table.products td[data-i='2'][data-j='3']").hover()
    for table in ("window", "kernel", "products"):
        assert "lit" in block.locator(f"table.{table} td[data-i='2'][data-j='3']").get_attribute("class")
    assert block.locator("td.lit").count() == 3
    x, w, p = answer["window"][0][2][3], answer["kernel"][0][2][3], answer["products"][0][2][3]
    assert block.locator(".product-note").text_content() == f"input row 0, column 1: {x:.3f} × {w:.3f} = {p:.3f}"
    assert page.get_attribute("#unit-input", "data-lit") == "0,1"
    magenta = page.evaluate("""() => {
        const c = document.querySelector('#unit-input'), z = Number(c.dataset.zoom);
        return Array.from(c.getContext('2d').getImageData((1 + 2) * z + 1, (0 + 2) * z + (z >> 1), 1, 1).data.slice(0, 3)); }""")
    assert magenta == [255, 0, 255]
    block.locator("table.products td[data-i='0'][data-j='0']").hover()
    assert block.locator(".product-note").text_content().startswith("zero padding at row -2, column -2: 0 × ")
    page.mouse.move(0, 0)
    assert block.locator("td.lit").count() == 0 and page.get_attribute("#unit-input", "data-lit") is None

    page.click("#step-right")
    wait_for_title(page, "Layer 0 (conv 5x5, 6 channels + sigmoid), channel 0, row 0, column 1")
    moved = api(lenet_url, "/api/explain", {"input": {"test": 0}, "layer": 0, "unit": [0, 0, 1]})
    assert float(page.text_content("#explain-sum")) == pytest.approx(moved["sum"], abs=1e-6)
    assert float(page.text_content("#explain-value")) == pytest.approx(moved["value"], abs=1e-6)
    page.keyboard.press("ArrowDown")
    wait_for_title(page, "Layer 0 (conv 5x5, 6 channels + sigmoid), channel 0, row 1, column 1")
    for key in ("ArrowUp", "ArrowUp", "ArrowLeft", "ArrowLeft", "ArrowLeft"):    # out of the map: clamped
        page.keyboard.press(key)
    wait_for_title(page, "Layer 0 (conv 5x5, 6 channels + sigmoid), channel 0, row 0, column 0")
    page.click("#step-up")
    page.click("#step-left")
    explain(page, 0, [0, 27, 27])
    wait_for_title(page, "Layer 0 (conv 5x5, 6 channels + sigmoid), channel 0, row 27, column 27")
    page.click("#step-right")
    page.click("#step-down")
    page.wait_for_timeout(300)
    assert page.text_content("#explanation h2").endswith("row 27, column 27")
    assert page.locator("#error").is_hidden()


def test_an_out_of_range_unit_is_a_message_not_a_javascript_error(lenet_page):
    page = lenet_page
    for unit, message in (("0,99,0", "row 99 is out of range for layer 0 (conv 5x5, 6 channels + sigmoid): 0 to 27"),
                          ("99,0,0", "channel 99 is out of range for layer 0 (conv 5x5, 6 channels + sigmoid): 0 to 5"),
                          ("1,2", "give the unit as [channel, row, column], for example 0,0,0"),
                          ("a,b,c", "give the unit as [channel, row, column]")):
        page.click("nav button[data-tab=number]")
        page.select_option("#unit-layer", "0")
        page.fill("#unit-index", unit)
        page.click("#unit-show")
        page.wait_for_selector("#error:not([hidden])")
        assert message in page.text_content("#error")
        page.evaluate("() => showError('')")
    explain(page, 5, [120])
    page.wait_for_selector("#error:not([hidden])")
    assert "unit 120 is out of range for layer 5 (dense 120 + sigmoid): 0 to 119" in page.text_content("#error")


def test_tables_are_readable_and_vectors_are_drawn_as_vectors(lenet_page, lenet_url):
    page = lenet_page
    sizes = lambda selector: page.evaluate(   # noqa: E731
        "(s) => Array.from(document.querySelectorAll(s)).map((e) => parseFloat(getComputedStyle(e).fontSize))", selector)
    explain(page, 2, [3, 4, 6])
    page.wait_for_selector("#explain-sum")
    assert page.text_content("#unit-map-title") == "Feature map"
    assert len(sizes("#explanation td")) > 100 and min(sizes("#explanation td")) >= 12
    # a dense unit: its input vector is drawn (not an empty box) and titled as a vector
    explain(page, 5, [7])
    wait_for_title(page, "Layer 5 (dense 120 + sigmoid), unit 7")
    assert page.text_content("#unit-map-title") == "Output vector"
    assert page.text_content("#unit-input-title") == "Input vector"
    assert page.locator("#unit-input").bounding_box()["width"] > 100
    assert "400 values" in page.text_content("#input-note")
    assert min(sizes("#explanation td, #explanation th")) >= 12
    top = api(lenet_url, "/api/explain", {"input": {"test": 0}, "layer": 5, "unit": [7]})["top"][0]["input"]
    page.locator(f"#explanation tr[data-input='{top}']").hover()
    assert page.get_attribute("#unit-input", "data-lit") == str(top)
    # the flatten layer as the 16 maps of 5x5 it reads, not a 20x20 square across them
    flatten = page.locator("#layers .layer[data-index='4'] canvas.map")
    assert flatten.count() == 16
    assert page.evaluate("() => Array.from(document.querySelectorAll(\"#layers .layer[data-index='4'] canvas.map\"))"
                         ".every((c) => c.width === 5 && c.height === 5)")
    assert page.text_content("#channel-note") == "showing all channels of each layer (the widest has 16)"
    assert page.locator("#more-channels").is_hidden()
    page.click("nav button[data-tab=training]")
    page.wait_for_selector("#confusion td")
    assert min(sizes("#confusion td, #confusion th, #per-class .bar, #curves text")) >= 12


def test_every_tab_says_it_is_loading_while_its_answer_is_on_the_way(lenet_page, lenet_url):
    """Each request is held back in the browser: meanwhile the area it will fill says it is loading."""
    page = lenet_page
    held = []

    def hold(path):
        held.clear()
        page.route(f"**{path}", lambda route: held.append(route))

    def release(path):
        for _ in range(200):                        # the browser's request reaches the route in its own time
            if held:
                break
            page.wait_for_timeout(50)
        assert len(held) == 1, held
        held.pop().continue_()
        page.unroute(f"**{path}")

    hold("/api/forward")
    page.fill("#test-index", "7")
    page.click("#show-test")
    page.wait_for_selector("#network-view[aria-busy=true] .loading-note")
    assert page.text_content("#network-view .loading-note") == "loading test image 7…"
    assert page.text_content("#input-label") == "loading test image 7…"
    assert page.evaluate("() => state.source.test") == 0          # the maps are still image 0's, and say so
    release("/api/forward")
    page.wait_for_selector("#network-view[aria-busy=false]")
    label = api(lenet_url, "/api/forward", {"input": {"test": 7}})["label"]
    classes = api(lenet_url, "/api/run")["classes"]
    assert page.text_content("#input-label") == f"test image 7, true class: {classes[label]}"
    assert page.locator("#network-view .loading-note").count() == 0

    hold("/api/explain")
    explain(page, 0, [1, 2, 3])
    page.wait_for_selector("#number-view[aria-busy=true] .loading-note")
    assert page.text_content("#number-view .loading-note") == "loading…"
    release("/api/explain")
    page.wait_for_selector("#number-view[aria-busy=false] #explain-sum")

    hold("/api/playground")
    page.click("nav button[data-tab=playground]")
    page.wait_for_selector("#pg-view[aria-busy=true] .loading-note")
    release("/api/playground")
    page.wait_for_selector("#pg-view[aria-busy=false]")
    assert page.text_content("#pg-shape") == "28 × 27"

    for path, box in (("/api/training", "#curves-box"), ("/api/evaluation", "#evaluation-box")):
        hold(path)
        page.click("nav button[data-tab=network]")
        page.click("nav button[data-tab=training]")
        page.wait_for_selector(f"{box}[aria-busy=true] .loading-note")
        release(path)
        page.wait_for_selector("#curves-box[aria-busy=false]")
        page.wait_for_selector("#evaluation-box[aria-busy=false]")
    page.wait_for_selector("#confusion td")


def nice(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5))


def test_training_tab_names_each_accuracy_and_labels_its_axes(page, url):
    page.click("nav button[data-tab=training]")
    page.wait_for_selector("#confusion td")
    page.wait_for_selector("#curves polyline")
    titles = {t: page.text_content(f"#curves [data-title={t}]") for t in ("epoch", "loss", "accuracy")}
    assert titles == {"epoch": "epoch", "loss": "loss", "accuracy": "accuracy"}
    losses = [float(v) for v in page.locator("#curves text[data-axis=loss]").all_text_contents()]
    steps = {round(b - a, 9) for a, b in zip(losses, losses[1:])}
    assert losses[0] == 0 and len(steps) == 1 and nice(steps.pop())
    points = api(url, "/api/training")["points"]
    assert losses[-1] >= max(p["train_loss"] for p in points if p["train_loss"] is not None)
    assert page.locator("#curves text[data-axis=accuracy]").all_text_contents() == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    legend = page.locator("#curves-legend .legend-item").all_text_contents()
    assert legend == ["train loss (loss)", "train accuracy (accuracy)", "test accuracy (accuracy)"]
    evaluation = api(url, "/api/evaluation")
    assert page.text_content("#per-class-title") == "Per-class accuracy on the test split"
    assert page.text_content("#per-class .overall") == f"test accuracy, all classes: {evaluation['accuracy']:.3f}"
    assert page.text_content("#confusion-title") == "Confusion matrix on the test split"
    # the column headers: every class name whole, none cut off
    heads = page.locator("#confusion th.rot")
    assert heads.all_text_contents() == evaluation["classes"]
    assert page.evaluate("""() => Array.from(document.querySelectorAll('#confusion th.rot'))
        .every((th) => th.scrollWidth <= th.clientWidth && th.scrollHeight <= th.clientHeight)""")


def test_a_run_scored_with_tta_says_so(browser, tmp_path):
    run = train_run(tmp_path / "tta", "lenet", "--tta", "flip")
    with serving(run) as address:
        assert api(address, "/api/training")["tta"] == "flip"
        recorded = [p["test_acc"] for p in api(address, "/api/training")["points"] if p["test_acc"] is not None][-1]
        with opened(browser, address, tmp_path / "tta.png") as page:
            page.click("nav button[data-tab=training]")
            page.wait_for_selector("#confusion td")
            page.wait_for_function("() => document.querySelector('#per-class .overall').textContent.includes('TTA')")
            assert page.text_content("#training-status") == f"finished: 1 epoch, test accuracy with TTA (flip) {recorded:.3f}"
            assert "test accuracy with TTA (flip)" in page.text_content("#curves-legend [data-series=test_acc]")
            assert page.text_content("#per-class .overall").endswith("(the page's plain forward pass, without TTA)")


# --------------------------------------------------------------------------- English and Chinese

ALLOWED_LATIN = {"softmax", "exp", "max", "logit", "logits", "sigmoid", "relu", "corr2d", "corr2d_multi_in", "pool2d",
                 "d2l", "PNG", "JPEG", "English", "cnnlab", "explain", "e", "o", "x", "n", "k", "p", "s"}


def latin_words(page, known: list[str]) -> set[str]:
    """The Latin-script words shown on the page (header and the open tab), less data (class names, the
    model, dataset and run folder) and the book's symbols and function names."""
    text = page.evaluate("() => document.querySelector('header').innerText + '\\n' + document.querySelector('main').innerText")
    for name in sorted(known, key=len, reverse=True):
        text = text.replace(name, " ")
    return set(re.findall(r"[A-Za-z][A-Za-z0-9_]*", text)) - ALLOWED_LATIN


def test_a_chinese_browser_gets_the_page_in_chinese_and_the_switch_toggles_it(browser, lenet_url, tmp_path):
    run = api(lenet_url, "/api/run")
    known = [*run["classes"], run["model"], run["dataset"], run["run"]]
    with opened(browser, lenet_url, tmp_path / "zh.png", locale="zh-CN") as page:
        assert page.evaluate("() => document.documentElement.lang") == "zh-CN"
        assert page.locator("nav button").all_text_contents() == ["网络", "一个数是怎样算出来的", "互相关运算试验", "训练"]
        first, pool = page.locator("#layers .layer[data-index='0']"), page.locator("#layers .layer[data-index='1']")
        assert first.locator("h3").text_content() == "0. 卷积层 5×5，6 个通道 + sigmoid"
        assert first.locator(".sizes").text_content() == "卷积核 5×5，填充 2，步幅 1"
        assert first.locator(".weights").text_content() == "卷积核张量 6×1×5×5"
        assert first.locator(".shape").text_content() == "输出形状 6 × 28 × 28"
        assert first.locator(".formula").text_content() == "高、宽：⌊(28 − 5 + 4 + 1) / 1⌋ = 28"
        assert pool.locator("h3").text_content() == "1. 平均汇聚层 2×2"
        assert pool.locator(".sizes").text_content() == "汇聚窗口 2×2，步幅 2"
        assert page.text_content("#layers .layer[data-index='5'] h3") == "5. 全连接层 120 + sigmoid"
        assert "通道" in page.text_content("#channel-note")
        assert "Noto Sans CJK SC" in page.evaluate("() => getComputedStyle(document.body).fontFamily")
        assert latin_words(page, known) == set()
        explain(page, 0, [0, 0, 0])
        page.wait_for_selector("#explain-sum")
        assert page.text_content("#unit-map-title") == "特征映射"
        assert "互相关运算" in page.text_content("#explanation .xcorr") and "不翻转" in page.text_content("#explanation .xcorr")
        assert "卷积核" in page.text_content("#explanation") and "填充" in page.text_content("#input-note")
        assert latin_words(page, known) == set()
        for layer, unit, title in ((1, [2, 3, 4], "第 1 层（平均汇聚层 2×2），通道 2，第 3 行，第 4 列"),
                                   (5, [7], "第 5 层（全连接层 120 + sigmoid），单元 7")):
            explain(page, layer, unit)
            wait_for_title(page, title)
            assert latin_words(page, known) == set()
        assert page.text_content("#unit-map-title") == "输出向量" and page.text_content("#unit-input-title") == "输入向量"
        explain(page, 0, [0, 30, 0])
        page.wait_for_selector("#error:not([hidden])")
        assert page.text_content("#error") == "行 30 超出第 0 层（卷积层 5×5，6 个通道 + sigmoid）的范围：0 至 27"
        page.evaluate("() => showError('')")
        page.click("nav button[data-tab=playground]")
        page.wait_for_selector("#pg-formula")
        assert latin_words(page, known) == set()
        page.click("nav button[data-tab=training]")
        page.wait_for_selector("#confusion td")
        assert page.text_content("#per-class-title") == "测试集上各类别的精度"
        assert page.text_content("#curves [data-title=epoch]") == "迭代周期"
        page.locator("#confusion td").first.click()
        page.wait_for_selector("#cell-images figure")
        assert latin_words(page, known) == set()

        page.evaluate("() => { window.notReloaded = true; }")
        page.click("#lang")
        assert page.evaluate("() => window.notReloaded") is True
        assert page.evaluate("() => document.documentElement.lang") == "en"
        assert page.text_content("#per-class-title") == "Per-class accuracy on the test split"
        page.click("nav button[data-tab=network]")
        assert first.locator(".sizes").text_content() == "kernel 5×5, padding 2, stride 1"
        assert first.locator("h3").text_content() == "0. conv 5x5, 6 channels + sigmoid"
        page.click("#lang")
        assert first.locator(".sizes").text_content() == "卷积核 5×5，填充 2，步幅 1"
        assert page.evaluate("() => window.notReloaded") is True


def test_an_english_browser_gets_the_page_in_english(lenet_page):
    page = lenet_page
    assert page.evaluate("() => document.documentElement.lang") == "en"
    shown = page.evaluate("() => document.querySelector('header').innerText + document.querySelector('main').innerText")
    assert re.findall(r"[\u4e00-\u9fff]+", shown) == ["中文"]              # the switch's own name only
    assert page.text_content("#lang") == "中文"
    assert page.text_content("#layers .layer[data-index='0'] .sizes") == "kernel 5×5, padding 2, stride 1"
    assert page.text_content("#layers .layer[data-index='1'] h3") == "1. avg pool 2x2"
    labels = page.locator("#stepper button").all_text_contents()
    assert labels == ["← left", "right →", "↑ up", "↓ down"]
    page.click("#lang")
    assert page.locator("#stepper button").all_text_contents() == ["← 左", "右 →", "↑ 上", "↓ 下"]
