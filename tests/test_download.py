"""Downloads against a real HTTP server on 127.0.0.1 that serves the canonical files, or breaks them."""

from __future__ import annotations

import gzip
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import cnnlab.data.sources as sources
from cnnlab.cli.main import main
from cnnlab.data import download_dataset, load_split, locate
from cnnlab.errors import DataError
from conftest import SHARED_DATA, shared_dataset_dir


class Handler(BaseHTTPRequestHandler):
    """``/<mode>/<dataset>/<file>``: ``ok`` serves the file, ``missing`` answers 404, ``corrupt``
    serves a valid gzip whose content has one byte changed, ``truncated`` announces the full
    length and sends half, ``unsized`` sends half with no length."""

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 3:
            self.send_error(400)
            return
        mode, dataset, name = parts
        path = SHARED_DATA / dataset / name
        if mode == "missing" or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        announced = len(body)
        if mode == "corrupt":
            content = bytearray(gzip.decompress(body))
            content[-1] ^= 0x01
            body = gzip.compress(bytes(content), compresslevel=1)
            announced = len(body)
        elif mode in ("truncated", "unsized"):
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode != "unsized":
            self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    shared_dataset_dir("fashion-mnist")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def refused_url():
    """A URL on a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    sources.forget_loaded()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_into_cache_then_found_there(server, isolated_cache):
    location = download_dataset("fashion-mnist", mirrors=[f"{server}/ok/fashion-mnist/"], progress=False)
    folder = isolated_cache / "cnnlab" / "fashion-mnist"
    assert location.folder == folder and set(location.checks.values()) == {"download"}
    assert leftovers(folder) == sorted(f"{s}.gz" for s in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    for name in leftovers(folder):
        assert (folder / name).read_bytes() == (SHARED_DATA / "fashion-mnist" / name).read_bytes()
    found = locate("fashion-mnist", download=False)
    assert found.how == "cache" and set(found.checks.values()) == {"cache"}


def test_404_on_first_mirror_falls_through(server, tmp_path):
    mirrors = [f"{server}/missing/{{name}}/", f"{server}/ok/{{name}}/"]
    location = download_dataset("fashion-mnist", tmp_path, mirrors=mirrors, progress=False)
    assert location.verified and len(location.files) == 4


@pytest.mark.parametrize("mode, words", [
    ("corrupt", "does not match the registry"),
    ("truncated", "truncated body"),
    ("unsized", "truncated"),
])
def test_bad_bodies_are_rejected_and_leave_nothing_behind(server, tmp_path, mode, words):
    with pytest.raises(DataError) as info:
        download_dataset("fashion-mnist", tmp_path, mirrors=[f"{server}/{mode}/fashion-mnist/"], progress=False)
    assert words in str(info.value) and f"/{mode}/fashion-mnist/train-images-idx3-ubyte.gz" in str(info.value)
    assert leftovers(tmp_path) == []


def test_refused_connection_then_a_good_mirror(server, refused_url, tmp_path):
    with pytest.raises(DataError, match="refused"):
        download_dataset("mnist", tmp_path, mirrors=[refused_url], progress=False)
    assert leftovers(tmp_path) == []
    location = download_dataset("mnist", tmp_path, mirrors=[refused_url, f"{server}/ok/mnist"], progress=False)
    assert len(location.files) == 4


def test_locate_downloads_when_nothing_is_found(server, monkeypatch, isolated_cache):
    monkeypatch.setenv("CNNLAB_MIRRORS", f"{server}/missing/{{name}}/, {server}/ok/{{name}}/")
    images, labels = load_split("mnist", "test")
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert locate("mnist").how == "cache"


def test_every_source_failing_is_one_message_with_each_place_and_the_fixes(refused_url, monkeypatch, isolated_cache):
    monkeypatch.setenv("CNNLAB_MIRRORS", refused_url)
    with pytest.raises(DataError) as info:
        locate("fashion-mnist")
    message = str(info.value)
    assert str(isolated_cache / "cnnlab") in message and refused_url in message
    for fix in ("--data-dir", "CNNLAB_DATA", "apt-get install dataset-fashion-mnist"):
        assert fix in message
    assert "\n" not in message


def test_a_bad_cached_file_is_replaced(server, tmp_path):
    download_dataset("mnist", tmp_path, mirrors=[f"{server}/ok/mnist/"], progress=False)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    location = download_dataset("mnist", tmp_path, mirrors=[f"{server}/ok/mnist/"], progress=False)
    assert location.checks[("test", "labels")] == "download"
    assert location.checks[("train", "images")] in ("cache", "md5")


def test_cli_download(server, tmp_path, capsys):
    status = main(["data", "download", "--dataset", "mnist", "--dest", str(tmp_path), "--quiet",
                   "--mirror", f"{server}/missing/mnist/", "--mirror", f"{server}/ok/mnist/"])
    assert status == 0
    assert "4 file(s) downloaded" in capsys.readouterr().out
    assert main(["data", "download", "--dataset", "mnist", "--dest", str(tmp_path), "--quiet",
                 "--mirror", f"{server}/missing/mnist/"]) == 0
    assert "0 file(s) downloaded, 4 already there" in capsys.readouterr().out
