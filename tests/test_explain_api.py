"""``cnnlab explain``'s JSON API against a real server on 127.0.0.1: every endpoint, the "one number"
explanations against the network's own activations, and hostile requests."""

from __future__ import annotations

import io
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explain_helpers import api, request, running_server, serving, train_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-runs")
    return {"lenet": train_run(root / "lenet", "lenet"), "lenet_wide": train_run(root / "lenet_wide", "lenet_wide", "--lr", "0.1")}


@pytest.fixture(scope="module")
def wide_url(runs):
    with serving(runs["lenet_wide"]) as url:
        yield url


def own_model(run_dir):
    """The run's network as PyTorch runs it, and its test images: the reference the page must match."""
    from cnnlab.data import load_split
    from cnnlab.models import create

    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)
    model = create(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["in_channels"],
                   **ckpt.get("model_options", {}))
    model.load_state_dict(ckpt["model_state"])
    images, labels = load_split("fashion-mnist", "test", ckpt["config"]["data_dir"], verify=False)
    return model.eval(), images, labels


def activations(model, x):
    """Every module's output for ``x``, by module, from forward hooks on the whole network's forward."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: outputs.__setitem__(mod, o.detach()))
             for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return outputs, logits


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- endpoints


def test_page_and_static_files_are_served_with_their_types(wide_url):
    status, headers, body = request(wide_url, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<script src=\"/app.js\"" in body and b"/style.css" in body
    assert headers["X-Content-Type-Options"] == "nosniff" and "default-src 'self'" in headers["Content-Security-Policy"]
    for path, ctype in (("/app.js", "text/javascript; charset=utf-8"), ("/style.css", "text/css; charset=utf-8")):
        status, headers, body = request(wide_url, "GET", path)
        assert status == 200 and headers["Content-Type"] == ctype and len(body) > 1000


def test_run_and_forward_match_the_network(runs, wide_url):
    model, images, labels = own_model(runs["lenet_wide"])
    info = api(wide_url, "/api/run")
    assert info["model"] == "lenet_wide" and info["test_images"] == len(labels) == 1000
    assert len(info["classes"]) == 10 and info["classes"][0] == "t-shirt"
    assert [layer["kind"] for layer in info["layers"]] == ["conv", "pool", "conv", "pool", "flatten", "dense"]
    assert [layer["shape"] for layer in info["layers"]] == [[32, 28, 28], [32, 14, 14], [64, 10, 10], [64, 5, 5], [1600], [10]]
    assert info["complete"] and info["epochs_done"] == info["epochs_planned"] == 1

    answer = api(wide_url, "/api/forward", {"input": {"test": 7}, "max_channels": 4})
    x = images[7:8].float() / 255
    outputs, logits = activations(model, x)
    probabilities = torch.softmax(logits[0], 0)
    assert answer["label"] == int(labels[7])
    assert answer["predicted"] == int(logits.argmax())
    np.testing.assert_allclose(answer["probabilities"], probabilities.numpy(), atol=1e-6)
    assert answer["image"] == images[7, 0].tolist()
    relu1 = list(model.children())[2]                                 # conv, batch norm, relu
    first = answer["layers"][0]
    assert first["shape"] == [32, 28, 28] and len(first["values"]) == 4      # only the channels asked for
    np.testing.assert_allclose(np.array(first["values"]), outputs[relu1][0, :4].numpy(), atol=1e-5)
    np.testing.assert_allclose(answer["layers"][-1]["values"], logits[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(answer["logits"], logits[0].numpy(), atol=1e-5)


def shapes_seen(model, x):
    """Each module's input and output shape (no batch) in the network's own forward, from forward hooks."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, (list(i[0].shape[1:]), list(o.shape[1:]))))
             for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_layer_sizes_and_the_output_shape_formula_match_pytorch(runs):
    """Each layer's header on the page: kernel, padding, stride and the kernel tensor's shape as the modules
    hold them, and the book's formula floor((n - k + p + s) / s) filled in, giving PyTorch's own output shape."""
    model, images, _ = own_model(runs["lenet"])
    modules = [m for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
    shapes = shapes_seen(model, images[:1].float() / 255)
    with serving(runs["lenet"]) as url:
        layers = api(url, "/api/run")["layers"]
    head = 0
    formulas = 0
    for layer in layers:
        module = modules[head]
        head += layer["modules"]
        seen_in, seen_out = shapes[module]
        assert layer["input_shape"] == seen_in
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert layer["weight_shape"] == list(module.weight.shape)
        if isinstance(module, torch.nn.Conv2d):
            assert (layer["kernel_size"], layer["padding"], layer["stride"]) == (
                list(module.kernel_size), list(module.padding), list(module.stride))
        elif isinstance(module, torch.nn.AvgPool2d):
            assert (layer["kernel_size"], layer["padding"], layer["stride"]) == ([module.kernel_size] * 2,
                                                                                [module.padding] * 2, [module.stride] * 2)
        else:
            assert "formula" not in layer
            continue
        for d, f in enumerate(layer["formula"]):
            assert f == {"n": seen_in[1 + d], "k": layer["kernel_size"][d], "p": 2 * layer["padding"][d],
                         "s": layer["stride"][d], "out": seen_out[1 + d]}
            assert (f["n"] - f["k"] + f["p"] + f["s"]) // f["s"] == f["out"]
            formulas += 1
    assert [layer["weight_shape"] for layer in layers if layer["kind"] == "conv"] == [[6, 1, 5, 5], [16, 6, 5, 5]]
    assert layers[0]["formula"][0] == {"n": 28, "k": 5, "p": 4, "s": 1, "out": 28}
    assert formulas == 8
    assert layers[4]["input_shape"] == [16, 5, 5] and layers[4]["shape"] == [400]      # flatten: 16 maps of 5x5
    assert [layer["parts"] for layer in layers[:2]] == [[{"op": "conv", "kernel_size": [5, 5], "channels": 6}, {"op": "sigmoid"}],
                                                        [{"op": "avg pool", "kernel_size": [2, 2]}]]


def test_upload_is_converted_as_predict_converts_files(wide_url, tmp_path):
    from cnnlab.inference import load_image

    rng = np.random.default_rng(0)
    picture = np.full((60, 40, 3), 250, np.uint8)                   # dark drawing on white, not square
    picture[10:50, 12:30] = rng.integers(0, 80, (40, 18, 3), dtype=np.uint8)
    data = png_bytes(picture)
    (tmp_path / "drawing.png").write_bytes(data)
    expected, inverted = load_image(tmp_path / "drawing.png")
    status, headers, body = request(wide_url, "POST", "/api/upload", data, {"Content-Type": "image/png"})
    answer = json.loads(body)
    assert status == 200, answer
    assert answer["pixels"] == expected[0].tolist() and answer["inverted"] is inverted is True
    forward = api(wide_url, "/api/forward", {"input": {"pixels": answer["pixels"]}})
    assert forward["label"] is None and forward["image"] == expected[0].tolist()


def test_training_evaluation_find_and_cells(runs, wide_url):
    from cnnlab.inference import confusion_matrix

    model, images, labels = own_model(runs["lenet_wide"])
    training = api(wide_url, "/api/training")
    rows = (runs["lenet_wide"] / "metrics.csv").read_text().splitlines()[1:]
    assert len(training["points"]) == len(rows) and training["finished"] is True
    assert training["points"][-1]["epoch"] == 1.0
    assert training["points"][-1]["test_acc"] == pytest.approx(float(rows[-1].split(",")[-1]))
    assert training["tta"] == "none"

    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    cm = confusion_matrix(predicted, labels, 10)
    evaluation = api(wide_url, "/api/evaluation")
    assert evaluation["confusion"] == cm.tolist()
    assert evaluation["accuracy"] == pytest.approx(float((predicted == labels).double().mean()))
    assert evaluation["per_class"][3] == pytest.approx(float(cm[3, 3] / cm[3].sum()))
    assert evaluation["split"] == "test"

    first_bag = int((labels == 8).nonzero()[0])
    found = api(wide_url, "/api/find?kind=class&class=8")
    assert found == {"index": first_bag, "count": int((labels == 8).sum())}
    after = api(wide_url, f"/api/find?kind=class&class=8&after={first_bag}")["index"]
    assert after > first_bag and int(labels[after]) == 8
    wrong = api(wide_url, "/api/find?kind=misclassified")
    assert int(predicted[wrong["index"]]) != int(labels[wrong["index"]])
    assert wrong["count"] == int((predicted != labels).sum())

    t, p = np.unravel_index(np.argmax(cm.numpy() - np.diag(np.diag(cm.numpy()))), cm.shape)
    cell = api(wide_url, f"/api/cell?true={t}&predicted={p}")
    assert cell["count"] == int(cm[t, p]) > 0 and len(cell["indices"]) == min(60, cell["count"])
    for index, image in zip(cell["indices"], cell["images"]):
        assert int(labels[index]) == t and int(predicted[index]) == p and image == images[index, 0].tolist()


def test_playground_is_the_books_cross_correlation(wide_url):
    # the book's edge experiment: a 6x8 image, white with a black band, and the kernel [1, -1]
    X = torch.ones(6, 8)
    X[:, 2:6] = 0
    answer = api(wide_url, "/api/playground", {"input": {"pixels": X.tolist()}, "kernel": [[1, -1]]})
    expected = torch.zeros(6, 7)
    expected[:, 1], expected[:, 5] = 1, -1
    assert answer["output"] == expected.tolist() and answer["shape"] == [6, 7]
    assert answer["formula"][1] == {"n": 8, "k": 2, "p": 0, "s": 1, "out": 7}

    kernel = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    answer = api(wide_url, "/api/playground", {"input": {"test": 3}, "kernel": kernel, "padding": 2, "stride": 3})
    _, headers, body = request(wide_url, "POST", "/api/forward", json_body={"input": {"test": 3}})
    image = torch.tensor(json.loads(body)["image"], dtype=torch.float32) / 255
    reference = F.conv2d(image[None, None], torch.tensor(kernel, dtype=torch.float32)[None, None], padding=2, stride=3)
    np.testing.assert_allclose(answer["output"], reference[0, 0].numpy(), atol=1e-6)
    assert answer["shape"] == [10, 10] == list(reference.shape[-2:])          # floor((28 - 3 + 4 + 3) / 3)
    assert answer["formula"][0] == {"n": 28, "k": 3, "p": 4, "s": 3, "out": 10}


# --------------------------------------------------------------------------- one number


def test_a_run_on_its_own_colour_data_is_shown_as_it_computes(tmp_path):
    """The page feeds the network what training fed it: the folder's images, each channel normalised with
    the training split's mean and std (computed here from the PNGs with NumPy)."""
    from conftest import colour_folder

    from cnnlab.cli.main import main
    from cnnlab.models import create

    splits = colour_folder(tmp_path / "items", n_train=200, n_test=50)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "items"), "--model", "lenet", "--epochs", "1", "--device", "cpu",
                 "--no-progress", "--run-dir", str(run_dir)]) == 0
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = create(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=3, **ckpt["model_options"]).eval()
    model.load_state_dict(ckpt["model_state"])
    train = splits["train"].astype(np.float64) / 255
    mean, std = (torch.from_numpy(v).float().view(1, 3, 1, 1) for v in (train.mean((0, 2, 3)), train.std((0, 2, 3))))
    with serving(run_dir) as url:
        info = api(url, "/api/run")
        assert info["image_shape"] == [3, 32, 32] and info["test_images"] == 50
        answer = api(url, "/api/forward", {"input": {"test": 7}})
    x = (torch.from_numpy(splits["test"][7:8]).float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(answer["layers"][-1]["values"], logits[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(answer["probabilities"], torch.softmax(logits[0], 0).numpy(), atol=1e-5)


@pytest.mark.parametrize("model_name", ["lenet", "lenet_wide"])
def test_one_number_equals_the_networks_own_activation(runs, model_name):
    model, images, labels = own_model(runs[model_name])
    modules = [m for m in model.modules() if not isinstance(m, torch.nn.Sequential)]
    rng = random.Random(0)
    checked = {"conv": 0, "pool": 0, "dense": 0}
    with serving(runs[model_name]) as url:
        layers = api(url, "/api/run")["layers"]
        head = 0                                     # index into the network's modules of each layer's first module
        for layer in layers:
            size = layer["modules"]
            head_module, last_module = modules[head], modules[head + size - 1]
            head += size
            if not layer["explained"]:
                continue
            for _ in range(6):
                index = rng.randrange(len(labels))
                outputs, _ = activations(model, images[index:index + 1].float() / 255)
                unit = [rng.randrange(s) for s in layer["shape"]]
                answer = api(url, "/api/explain", {"input": {"test": index}, "layer": layer["index"], "unit": unit})
                own = float(outputs[last_module][(0, *unit)])
                assert abs(answer["value"] - own) <= 1e-5, (layer["name"], unit, answer["value"], own)
                assert abs(answer["z"] - float(outputs[head_module][(0, *unit)])) <= 1e-5   # before batch norm, activation
                if layer["kind"] == "conv":
                    conv = head_module
                    window, kernel = torch.tensor(answer["window"]), torch.tensor(answer["kernel"])
                    assert torch.equal(kernel, conv.weight[unit[0]].detach())
                    products = torch.tensor(answer["products"])
                    torch.testing.assert_close(products, window * kernel)
                    assert answer["sum"] == pytest.approx(float(products.sum()), abs=1e-5)
                    assert answer["sum"] == pytest.approx(sum(answer["channel_sums"]), abs=1e-5)
                    bias = float(conv.bias.detach()[unit[0]]) if conv.bias is not None else 0.0
                    assert answer["bias"] == pytest.approx(bias) and answer["z"] == pytest.approx(answer["sum"] + bias)
                elif layer["kind"] == "pool":
                    values = [v for row in answer["window"] for v in row if v is not None]
                    reference = max(values) if answer["mode"] == "max" else sum(values) / len(values)
                    assert answer["result"] == pytest.approx(reference, abs=1e-6)
                else:
                    top = answer["top"]
                    assert answer["rest_count"] + len(top) == answer["inputs"]
                    total = sum(t["product"] for t in top) + answer["rest"]
                    assert answer["sum"] == pytest.approx(total, abs=1e-4)
                    for t in top:
                        assert t["weight"] == pytest.approx(float(head_module.weight.detach()[unit[0], t["input"]]))
                checked[layer["kind"]] += 1
    assert all(checked.values()), checked


# --------------------------------------------------------------------------- bad requests


def test_bad_requests_get_a_json_4xx_and_the_server_goes_on(wide_url):
    def error(method, path, expect, **kw):
        status, headers, body = request(wide_url, method, path, **kw)
        assert status == expect, (path, status, body[:300])
        assert headers["Content-Type"] == "application/json"
        message = json.loads(body)["error"]
        assert "\n" not in message and message
        return message

    good = {"input": {"test": 0}, "layer": 0, "unit": [0, 0, 0]}
    assert "layer 99 is out of range: 0 to 5" in error("POST", "/api/explain", 400, json_body={**good, "layer": 99})
    assert "row 28 is out of range" in error("POST", "/api/explain", 400, json_body={**good, "unit": [0, 28, 0]})
    assert "[channel, row, column]" in error("POST", "/api/explain", 400, json_body={**good, "unit": [1, 2]})
    assert "flatten layer" in error("POST", "/api/explain", 400, json_body={**good, "layer": 4, "unit": [3]})
    assert "test image 1000 is out of range" in error("POST", "/api/forward", 400, json_body={"input": {"test": 1000}})
    assert "pixels must be 28 rows" in error("POST", "/api/forward", 400, json_body={"input": {"pixels": [[0]]}})
    assert "kernel must be 1 to 5 rows" in error("POST", "/api/playground", 400,
                                                 json_body={"input": {"test": 0}, "kernel": [[1] * 6]})
    assert "malformed JSON" in error("POST", "/api/explain", 400, body=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert "JSON object" in error("POST", "/api/explain", 400, json_body=[1, 2])
    assert "Content-Type must be application/json" in error("POST", "/api/forward", 415, body=b"{}",
                                                            headers={"Content-Type": "text/plain"})
    assert "takes POST" in error("GET", "/api/explain", 405)
    assert "takes GET" in error("POST", "/api/run", 405, json_body={})
    assert "not supported" in error("DELETE", "/", 405)
    assert "no such" in error("GET", "/api/nothing", 404)
    assert "kind must be" in error("GET", "/api/find?kind=everything", 400)
    assert "whole number" in error("GET", "/api/cell?true=x&predicted=1", 400)
    assert "is not an image" in error("POST", "/api/upload", 400, body=b"\x89PNG\r\n\x1a\nbroken",
                                      headers={"Content-Type": "image/png"})
    assert "answers only requests to" in error("GET", "/api/run", 421, headers={"Host": "evil.example:80"})
    assert "nested too deeply" in error("POST", "/api/forward", 400, body=b"[" * 100_000 + b"]" * 100_000,
                                        headers={"Content-Type": "application/json"})
    huge = api(wide_url, "/api/playground", {"input": {"test": 0}, "kernel": [[1e308, 1e308]]})
    assert None in huge["output"][14] and huge["shape"] == [28, 27]       # overflow shown as no value, not a 500
    # a client that connects and sends nothing holds one thread, not the server
    with socket.create_connection(urlsplit_port(wide_url), timeout=10):
        assert api(wide_url, "/api/run")["model"] == "lenet_wide"
    # the errors the standard library finds itself are answered as JSON too
    reply = raw(wide_url, b"NONSENSE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0] and b'{"error"' in reply
    reply = raw(wide_url, b"BREW / HTTP/1.1\r\nHost: " + host(wide_url) + b"\r\n\r\n")
    assert b" 501 " in reply.split(b"\r\n")[0] and b'{"error":"Unsupported method' in reply
    assert api(wide_url, "/api/run")["model"] == "lenet_wide"          # still serving


def urlsplit_port(url):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname, parts.port


def raw(url, request: bytes) -> bytes:
    """Send ``request`` as it is (no client library tidies it) and read the reply until the server closes."""
    with socket.create_connection(urlsplit_port(url), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def host(url) -> bytes:
    return url.split("//")[1].rstrip("/").encode()


def raw_get(url, path: bytes) -> bytes:
    return raw(url, b"GET " + path + b" HTTP/1.1\r\nHost: " + host(url) + b"\r\nConnection: close\r\n\r\n")


def test_no_request_path_reaches_the_filesystem(runs, wide_url):
    config = (runs["lenet_wide"] / "config.json").read_bytes()
    for path in (b"/../../../../etc/passwd", b"/%2e%2e/%2e%2e/%2e%2e/etc/passwd", b"/static/../checkpoint.pt",
                 b"//etc/passwd", b"/config.json", b"/metrics.csv", b"/app.js/../../config.json",
                 b"/" + str(runs["lenet_wide"] / "config.json").encode(), b"/index.html", b"/static/app.js",
                 b"/..%2f..%2fconfig.json", b"/__init__.py", b"/server.py"):
        reply = raw_get(wide_url, path)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b" 404 " in head.split(b"\r\n")[0], (path, head)
        assert json.loads(body)["error"].startswith("no such page or endpoint: /")
        assert b"root:" not in body and config not in body


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_oversized_uploads_are_refused(wide_url):
    from cnnlab.explain.server import MAX_UPLOAD_BYTES

    # more bytes than allowed: refused from the Content-Length, before the body is read
    reply = raw(wide_url, b"POST /api/upload HTTP/1.1\r\nHost: " + host(wide_url) + b"\r\nContent-Type: image/png"
                b"\r\nContent-Length: " + str(MAX_UPLOAD_BYTES + 1).encode() + b"\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b" 413 " in head.split(b"\r\n")[0] and b"more than the 8,388,608 allowed" in body
    # a small file that decodes to too many pixels: refused from its header
    status, _, body = request(wide_url, "POST", "/api/upload", bomb_png(20_000, 20_000), {"Content-Type": "image/png"})
    assert status == 400 and "too large to read safely (400,000,000 pixels" in json.loads(body)["error"]
    status, _, body = request(wide_url, "POST", "/api/upload", b"x" * 10, {"Content-Type": "image/svg+xml"})
    assert status == 415 and "image/png, image/jpeg" in json.loads(body)["error"]
    assert api(wide_url, "/api/run")["model"] == "lenet_wide"


def smuggled(url: str, carrier: bytes) -> list[bytes]:
    """The status lines the server sends for ``carrier``, a request whose body is a second request (one the
    server answers with 400 naming "smuggled" if it ever runs it), followed on the same connection by a
    plain GET; the server may close the connection instead of answering the GET."""
    inner = b"GET /api/find?kind=smuggled HTTP/1.1\r\nHost: " + host(url) + b"\r\n\r\n"
    after = b"GET /api/run HTTP/1.1\r\nHost: " + host(url) + b"\r\nConnection: close\r\n\r\n"
    head = carrier.replace(b"LENGTH", str(len(inner)).encode()).replace(b"HOST", host(url))
    reply = raw(url, head + inner + after)
    assert b"smuggled" not in reply, reply[:600]
    return re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)


@pytest.mark.parametrize("carrier", [
    b"GET /api/run HTTP/1.1\r\nHost: HOST\r\nContent-Length: LENGTH\r\n\r\n",                  # GET-only route
    b"POST /api/run HTTP/1.1\r\nHost: HOST\r\nContent-Type: text/plain\r\nContent-Length: LENGTH\r\n\r\n",
    b"POST /nowhere HTTP/1.1\r\nHost: HOST\r\nContent-Type: text/plain\r\nContent-Length: LENGTH\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: HOST\r\nContent-Length: LENGTH\r\n\r\n",
    b"GET /api/run HTTP/1.1\r\nHost: HOST\r\nContent-Length: 00LENGTH\r\n\r\n",
    b"HEAD /app.js HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /api/forward HTTP/1.1\r\nHost: HOST\r\nContent-Type: text/plain\r\nContent-Length: LENGTH\r\n\r\n",
    b"GET /api/run HTTP/1.1\r\nHost: evil.example\r\nContent-Length: LENGTH\r\n\r\n",         # refused Host
])
def test_a_body_the_server_does_not_read_is_never_run_as_a_request(wide_url, carrier):
    """A page on another origin could otherwise push a JSON POST inside a text/plain request's body."""
    statuses = smuggled(wide_url, carrier)
    assert 1 <= len(statuses) <= 2, statuses
    assert api(wide_url, "/api/run")["model"] == "lenet_wide"


def test_a_request_with_no_body_keeps_its_connection(wide_url):
    """Keep-alive still works for the page's own requests: two GETs on one connection are both answered."""
    one = b"GET /api/run HTTP/1.1\r\nHost: " + host(wide_url) + b"\r\n\r\n"
    two = b"GET /app.js HTTP/1.1\r\nHost: " + host(wide_url) + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    reply = raw(wide_url, one + two)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", reply) == [b"200", b"200"]


def test_uploads_at_once_are_bounded_and_the_rest_are_told_to_retry(runs):
    from cnnlab.explain.server import UPLOADS_AT_ONCE

    data = png_bytes(np.full((30, 30), 200, np.uint8))
    with running_server(runs["lenet"]) as server:
        for _ in range(UPLOADS_AT_ONCE):                       # as many uploads as allowed are being converted
            assert server.upload_slots.acquire(blocking=False)
        status, headers, body = request(server.url, "POST", "/api/upload", data, {"Content-Type": "image/png"})
        assert status == 503 and headers["Retry-After"] == "1" and "send this one again" in json.loads(body)["error"]
        for _ in range(UPLOADS_AT_ONCE):
            server.upload_slots.release()
        status, _, body = request(server.url, "POST", "/api/upload", data, {"Content-Type": "image/png"})
        assert status == 200 and len(json.loads(body)["pixels"]) == 28


def test_a_deep_upload_is_converted_without_copies_of_copies():
    """A 16-bit 2000 x 2000 picture (4 million pixels, 8 MB as 16 bits) converts to 8 bits with NumPy holding at
    most a few bytes per pixel at a time (it held 32: five float64 copies), and to the values round(v / 257)."""
    import tracemalloc

    from PIL import Image

    from cnnlab.images import read_image

    values = (np.arange(2000 * 2000, dtype=np.uint32) * 7919 % 65536).astype(np.uint16).reshape(2000, 2000)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    tracemalloc.start()
    try:
        gray = read_image(buf.getvalue(), channels=1, name="the uploaded image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 12 * values.size, f"{peak / values.size:.1f} bytes per pixel"
    expected = np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(gray), expected)


@pytest.mark.parametrize("path, body, headers, expected", [
    ("/api/find?kind=class&class=--5", None, {}, "class must be a whole number, not '--5'"),
    ("/api/cell?true=%C2%B2&predicted=1", None, {}, "true must be a whole number, not '²'"),
    ("/api/find?kind=class&class=" + "9" * 4400, None, {}, "is out of range: 0 to 9"),
    ("/api/forward", b'{"input": {"test": "--5"}}', {"Content-Type": "application/json"},
     "test image must be a whole number, not '--5'"),
    ("/api/explain", b'{"input": {"test": 0}, "layer": "\\u00b2", "unit": [0, 0, 0]}', {"Content-Type": "application/json"},
     "layer must be a whole number, not '²'"),
    ("/api/forward", b'{"input": {"test": ' + b"7" * 4400 + b"}}", {"Content-Type": "application/json"},
     "the request body's JSON has a number of 4,400 digits"),
    ("/api/playground", b'{"input": {"test": 0}, "kernel": [[1]], "stride": "1e3"}', {"Content-Type": "application/json"},
     "stride must be a whole number, not '1e3'"),
])
def test_malformed_numbers_are_a_400_naming_the_value(wide_url, path, body, headers, expected):
    status, answer_headers, answer = request(wide_url, "POST" if body else "GET", path, body, headers)
    message = json.loads(answer)["error"]
    assert status == 400 and expected in message and "\n" not in message and len(message) < 200, (status, message)


def test_a_malformed_content_length_is_a_400(wide_url):
    for length in (b"\xc2\xb2", b"--5", b"9" * 4400, b"-1"):
        reply = raw(wide_url, b"POST /api/forward HTTP/1.1\r\nHost: " + host(wide_url)
                    + b"\r\nContent-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0] and "Content-Length" in json.loads(body)["error"], (length, reply[:300])
    assert api(wide_url, "/api/run")["model"] == "lenet_wide"


def handlers_done():
    """Wait (up to a minute) until no connection of the server is still being handled."""
    for _ in range(600):
        if not any("process_request_thread" in t.name for t in threading.enumerate()):
            return
        threading.Event().wait(0.1)
    raise AssertionError("a connection is still being handled after a minute")


@pytest.mark.parametrize("ending", ["reset", "deadline"])
def test_a_client_that_stops_mid_body_leaves_nothing_on_stderr(runs, capfd, monkeypatch, ending):
    from cnnlab.explain import server as server_module

    if ending == "deadline":
        monkeypatch.setattr(server_module, "REQUEST_DEADLINE_S", 0.5)
    with running_server(runs["lenet"]) as server:
        handlers_done()
        capfd.readouterr()
        sock = socket.create_connection(urlsplit_port(server.url), timeout=30)
        sock.sendall(b"POST /api/forward HTTP/1.1\r\nHost: " + host(server.url)
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"input\"")
        if ending == "reset":             # the client goes away abruptly (a reset, not a polite close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:                             # the client stays connected, sending nothing more
            assert sock.recv(1000) == b""    # the server gives up on the request and closes
        sock.close()
        handlers_done()
        assert api(server.url, "/api/run")["model"] == "lenet"
    out, err = capfd.readouterr()
    assert err == "" and "Traceback" not in out, err


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_dripped_a_byte_at_a_time_is_cut_off_at_its_deadline(runs, monkeypatch, part):
    """Each byte arrives well within the socket timeout, but the whole request must arrive within the
    deadline (half a second here): the server closes the connection long before the drip ends."""
    from cnnlab.explain import server as server_module

    monkeypatch.setattr(server_module, "REQUEST_DEADLINE_S", 0.5)
    with running_server(runs["lenet"]) as server:
        head = b"POST /api/forward HTTP/1.1\r\nHost: " + host(server.url) + b"\r\nContent-Type: application/json\r\n"
        body = b'{"input": {"test": 0}}' + b" " * 80
        if part == "headers":
            start, drip = head, b"X-Padding: " + b"a" * 100 + b"\r\nContent-Length: 2\r\n\r\n{}"
        else:
            start, drip = head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n", body
        sent = 0
        with socket.create_connection(urlsplit_port(server.url), timeout=30) as sock:
            sock.sendall(start)
            for byte in drip:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:                    # the server closed the connection
                    break
                sent += 1
                if select.select([sock], [], [], 0.1)[0]:
                    assert sock.recv(1000) in (b"", ), "the server answered a request that never arrived whole"
                    break
        assert sent < len(drip), "the whole dripped request was accepted"
        assert api(server.url, "/api/run")["model"] == "lenet"


def eps_bytes() -> bytes:
    """A small EPS file: Pillow opens it, and decoding it would run Ghostscript."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
            b"newpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n")


def test_uploads_are_decoded_by_their_content_in_the_formats_predict_reads(runs, wide_url, tmp_path, monkeypatch,
                                                                               capsys):
    from PIL import EpsImagePlugin, Image

    from cnnlab.inference import load_image

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Image.open(io.BytesIO(eps_bytes()))           # Pillow on its own takes the bytes for EPS
    opened.clear()
    for data in (eps_bytes(), b"P5\n2 2\n255\n\x00\x10\x20\x30"):        # EPS, and a PGM (another Pillow format)
        status, _, body = request(wide_url, "POST", "/api/upload", data, {"Content-Type": "image/png"})
        message = json.loads(body)["error"]
        assert status == 400 and "the uploaded image is not an image" in message, message
        assert "PNG, JPEG, BMP, GIF, TIFF or WebP" in message and "BytesIO" not in message and "0x" not in message
    assert opened == []
    picture = np.full((40, 40), 230, np.uint8)
    picture[10:30, 15:25] = 20
    for fmt, label in (("PNG", "image/jpeg"), ("JPEG", "image/png"), ("BMP", "image/png"), ("GIF", "image/bmp"),
                       ("TIFF", "image/webp"), ("WEBP", "image/tiff")):
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        (tmp_path / f"picture.{fmt.lower()}").write_bytes(buf.getvalue())
        expected, _ = load_image(tmp_path / f"picture.{fmt.lower()}")
        status, _, body = request(wide_url, "POST", "/api/upload", buf.getvalue(), {"Content-Type": label})
        assert status == 200 and json.loads(body)["pixels"] == expected[0].tolist(), (fmt, body[:200])
    # predict reads files the same way: the EPS file is refused in one line, never decoded
    from cnnlab.cli.main import main

    (tmp_path / "drawing.png").write_bytes(eps_bytes())
    assert main(["predict", str(runs["lenet_wide"]), str(tmp_path / "drawing.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'drawing.png'} is not an image") and err.count("\n") == 1, err
    assert opened == []


def test_upload_errors_name_the_upload_not_a_python_object(wide_url):
    for data in (b"not a picture at all", png_bytes(np.random.default_rng(0).integers(0, 256, (50, 50), dtype=np.uint8))[:1000], b"GIF89a\x01"):
        status, _, body = request(wide_url, "POST", "/api/upload", data, {"Content-Type": "image/png"})
        message = json.loads(body)["error"]
        assert status == 400 and message.startswith("the uploaded image ") and "BytesIO" not in message, message
        assert "object at 0x" not in message


def test_an_evaluation_of_thousands_of_classes_sends_its_most_frequent_confusions(runs):
    """3,000 classes (the run's test labels spread over them): the whole 3,000 x 3,000 matrix would be
    18 MB of JSON; the answer lists the 200 most frequent confusions instead, counted here from the
    network's own predictions, and each opens as a cell."""
    from collections import Counter

    model, images, labels = own_model(runs["lenet"])
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    spread = labels * 300 + torch.arange(len(labels)) % 3           # classes 0..2702 of 3,000
    with running_server(runs["lenet"]) as server:
        server.explained.classes = [f"class {k}" for k in range(3000)]
        server.explained.labels = spread
        status, _, body = request(server.url, "GET", "/api/evaluation")
        assert status == 200 and len(body) < 200_000, len(body)
        answer = json.loads(body)
        counts = Counter((int(t), int(p)) for t, p in zip(spread, predicted) if int(t) != int(p))
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:200]
        assert answer["confusion"] is None and answer["confused_cells"] == len(counts)
        assert [(c["true"], c["predicted"], c["count"]) for c in answer["confused"]] == [(t, p, n) for (t, p), n in expected]
        assert len(answer["per_class"]) == 3000 and answer["accuracy"] == pytest.approx(float((spread == predicted).double().mean()))
        first = answer["confused"][0]
        cell = api(server.url, f"/api/cell?true={first['true']}&predicted={first['predicted']}")
        assert cell["count"] == first["count"]


# --------------------------------------------------------------------------- the command


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "explain", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_command_prints_its_url_serves_and_stops_on_ctrl_c(runs):
    proc = cli(str(runs["lenet"]), "--port", "0")
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {runs['lenet']} at http://127.0.0.1:") and "(Ctrl-C stops)" in line
        url = line.split(" at ")[1].split()[0]
        assert api(url, "/api/run")["model"] == "lenet"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped" and "Traceback" not in err


def test_command_refuses_a_missing_or_unfinished_run_in_one_line(tmp_path):
    proc = cli(str(tmp_path / "nowhere"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err == f"error: run directory {tmp_path / 'nowhere'} does not exist; pass a folder written by cnnlab train\n"
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / "config.json").write_text("{}")
    proc = cli(str(tmp_path / "starting"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and "has no checkpoint.pt yet" in err


def test_another_loopback_address_is_served(runs):
    """``--host 127.0.0.2`` (any 127.x address is this machine): the page answers requests to it, not 421."""
    from cnnlab.explain.run import ExplainedRun
    from cnnlab.explain.server import ExplainServer

    server = ExplainServer(("127.0.0.2", 0), ExplainedRun(runs["lenet"]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        status, _, body = request(server.url, "GET", "/api/run")
        assert server.url.startswith("http://127.0.0.2:") and status == 200, body[:200]
        assert request(server.url, "GET", "/api/run", headers={"Host": "evil.example:80"})[0] == 421
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_another_host_prints_a_warning(runs):
    proc = cli(str(runs["lenet"]), "--port", "0", "--host", "0.0.0.0")
    try:
        warning = proc.stdout.readline()
        served = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert warning.startswith("warning: --host 0.0.0.0 lets anyone who can reach this machine")
    assert "at http://0.0.0.0:" in served


def test_a_run_still_training_is_followed(runs, tmp_path):
    """The page polls the run: once training writes another epoch, the curves and the model move on."""
    import shutil

    from cnnlab.cli.main import main

    run = tmp_path / "growing"
    shutil.copytree(runs["lenet"], run)
    with serving(run) as url:
        before = api(url, "/api/training")
        assert len(before["points"]) == 3 and api(url, "/api/run")["epochs_done"] == 1
        first = api(url, "/api/forward", {"input": {"test": 0}})["probabilities"]
        assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu", "--no-progress"]) == 0
        after = api(url, "/api/training")
        assert len(after["points"]) > len(before["points"]) and after["points"][-1]["epoch"] == 2.0
        assert api(url, "/api/run")["epochs_done"] == 2
        assert api(url, "/api/forward", {"input": {"test": 0}})["probabilities"] != first


# --------------------------------------------------------------------------- every model of the registry


@pytest.mark.parametrize("name", ["lenet_bn", "alexnet_mini", "vgg_mini", "nin_mini", "googlenet_mini", "resnet_mini",
                                  "densenet_mini"])
def test_every_small_model_is_shown_and_explained_as_it_computes(name):
    """The page's layer-by-layer run is the network's own forward, and every unit it explains equals the
    network's activation, for the zoo's networks too (random weights and batch-norm statistics)."""
    from cnnlab.explain import compute
    from cnnlab.models import create

    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(1, 1, 28, 28)
    outputs, logits = activations(model, x)
    layers = compute.network_layers(model)
    ran = compute.run_layers(layers, x)
    torch.testing.assert_close(ran[-1], logits, atol=1e-5, rtol=1e-5)
    rng = random.Random(1)
    explained = formulas = 0
    for layer, out in zip(layers, ran):
        last = layer.tail[-1] if layer.tail else layer.head
        torch.testing.assert_close(out, outputs[last], atol=1e-5, rtol=1e-5)
        if layer.kind not in ("conv", "pool", "dense"):
            continue
        layer_input = x if layer.index == 0 else ran[layer.index - 1]
        geometry = compute.layer_geometry(layer, layer_input.shape[1:], out.shape[1:])
        if geometry.get("formula"):                      # the book's formula gives PyTorch's output shape
            assert [f["out"] for f in geometry["formula"]] == list(layer.head(layer_input).shape[2:])
            formulas += 1
        for _ in range(3):
            unit = [rng.randrange(s) for s in out.shape[1:]]
            answer = compute.explain_unit(layer, layer_input, unit)
            assert abs(answer["value"] - float(out[(0, *unit)])) <= 1e-5 * max(1.0, abs(float(out[(0, *unit)])))
            explained += 1
    assert explained >= 3 and formulas >= 1
