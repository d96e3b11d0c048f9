"""Shared by the tests of ``cnnlab explain``: tiny real runs on the committed subset, a real server on
127.0.0.1 in a thread, and a plain HTTP client."""

from __future__ import annotations

import http.client
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch

from conftest import SUBSET_DATA


def train_run(run_dir: Path, model: str, *extra: str) -> Path:
    """One epoch on 512 training images of the committed Fashion-MNIST subset (seconds on a CPU)."""
    from cnnlab.cli.main import main

    assert main(["train", "--data-dir", str(SUBSET_DATA), "--no-verify", "--epochs", "1", "--train-limit", "512",
                 "--model", model, "--run-dir", str(run_dir), "--device", "cpu", "--no-progress", *extra]) == 0
    return run_dir


def trained_model(run_dir: Path) -> torch.nn.Module:
    """The run's network as PyTorch runs it: built by the registry, with the checkpoint's weights."""
    from cnnlab.models import create

    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)
    model = create(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["in_channels"],
                   **ckpt.get("model_options", {}))
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


@contextmanager
def running_server(run_dir: Path):
    """``cnnlab explain``'s server for ``run_dir`` on a free port of 127.0.0.1, serving in a thread; yields it."""
    from cnnlab.explain.run import ExplainedRun
    from cnnlab.explain.server import ExplainServer

    server = ExplainServer(("127.0.0.1", 0), ExplainedRun(run_dir))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serving(run_dir: Path):
    """:func:`running_server`, yielding its URL."""
    with running_server(run_dir) as server:
        yield server.url


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            json_body=None):
    """(status, headers, body bytes) of one request; ``json_body`` is sent as application/json."""
    parts = urlsplit(url)
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def api(url: str, path: str, json_body=None, expect: int = 200):
    """The JSON answer of a GET (no body) or POST (``json_body``), asserting its status."""
    status, headers, body = request(url, "GET" if json_body is None else "POST", path, json_body=json_body)
    assert headers["Content-Type"] == "application/json", (status, body[:200])
    answer = json.loads(body)
    assert status == expect, answer
    return answer
