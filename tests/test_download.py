"""Downloads against a real HTTP server on 127.0.0.1 that serves the committed subsets, or breaks them."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import cnnlab.data.sources as sources
from cnnlab.cli.main import main
from cnnlab.data import download_dataset, load_split, locate
from cnnlab.errors import DataError
from conftest import SUBSET_DATA


class Handler(BaseHTTPRequestHandler):
    """``/<mode>/<dataset>/<file>``: ``ok`` serves the file, ``missing`` answers 404, ``corrupt``
    serves a valid gzip whose content has one byte changed, ``truncated`` announces the full
    length and sends half, ``unsized`` sends half with no length, ``endless`` sends zeros with no
    length until the client hangs up (at most 64 MiB), ``huge`` announces a terabyte, ``trickle`` sends a byte every
    20 ms, ``loop`` redirects to itself."""

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 3:
            self.send_error(400)
            return
        mode, dataset, name = parts
        path = SUBSET_DATA / dataset / name
        if mode == "missing" or not path.is_file():
            self.send_error(404)
            return
        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()
            return
        if mode in ("endless", "huge", "trickle"):
            self.send_response(200)
            if mode == "huge":
                self.send_header("Content-Length", str(10**12))
            self.end_headers()
            deadline, sent = time.monotonic() + 20, 0  # the client should hang up long before either limit
            try:
                while time.monotonic() < deadline and sent < 64 << 20:
                    sent += 1 if mode == "trickle" else 1 << 16
                    self.wfile.write(b"\0" if mode == "trickle" else bytes(1 << 16))
                    self.wfile.flush()
                    if mode == "trickle":
                        time.sleep(0.02)
            except OSError:
                pass  # the client hung up
            self.close_connection = True
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
def no_system_copies(monkeypatch, subset_registry):
    """No system copies, and a registry describing the committed subsets that the mirrors here serve."""
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
        assert (folder / name).read_bytes() == (SUBSET_DATA / "fashion-mnist" / name).read_bytes()
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


def test_an_endless_body_stops_at_the_files_size_limit(server, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "download_limit", lambda fspec: 200_000)  # the real one is 2 x size + 1 MiB
    with pytest.raises(DataError) as info:
        download_dataset("fashion-mnist", tmp_path, mirrors=[f"{server}/endless/fashion-mnist/"], progress=False)
    message = str(info.value)
    assert (f"{server}/endless/fashion-mnist/train-images-idx3-ubyte.gz: sent more than train-images-idx3-ubyte.gz "
            f"can be (200,000 bytes); the mirror is broken: use another --mirror") in message
    assert "\n" not in message and leftovers(tmp_path) == []


def test_the_size_limit_leaves_room_for_the_file_plain_or_gzipped():
    from cnnlab.data import get_spec

    for fspec in get_spec("fashion-mnist").files.values():
        assert sources.download_limit(fspec) > fspec.size + len(gzip.compress(bytes(fspec.size), compresslevel=0))


def test_a_body_announced_larger_than_the_file_can_be_is_refused_unread(server, tmp_path):
    with pytest.raises(DataError) as info:
        download_dataset("fashion-mnist", tmp_path, mirrors=[f"{server}/huge/fashion-mnist/"], progress=False)
    assert ("train-images-idx3-ubyte.gz: announces 1,000,000,000,000 bytes, more than train-images-idx3-ubyte.gz "
            "can be (4,184,608 bytes); the mirror is broken: use another --mirror") in str(info.value)
    assert leftovers(tmp_path) == []


def test_a_trickling_mirror_fails_at_the_files_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.25)   # deadline: 2 x 0.25 s + size / rate
    monkeypatch.setattr(sources, "DOWNLOAD_MIN_RATE", 10**9)
    # The server trickles for 20 s at most, then hangs up: only the client's own deadline gives this message.
    with pytest.raises(DataError) as info:
        download_dataset("fashion-mnist", tmp_path, mirrors=[f"{server}/trickle/fashion-mnist/"], progress=False)
    message = str(info.value)
    assert f"{server}/trickle/fashion-mnist/train-images-idx3-ubyte.gz: too slow, " in message
    assert "bytes in 1 s (the limit for train-images-idx3-ubyte.gz); use another --mirror or retry later" in message
    assert leftovers(tmp_path) == []


def test_a_redirect_loop_is_one_line(server, tmp_path, capsys):
    assert main(["data", "download", "--dest", str(tmp_path), "--quiet",
                 "--mirror", f"{server}/loop/fashion-mnist/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 302 The HTTP server returned a redirect error that would lead to an " \
                                     "infinite loop. The last 30x error message was: Found" in err


@pytest.mark.parametrize("mirror", ["notaurl", "", "/srv/mirror", "http://"])
def test_a_mirror_that_is_not_a_url_is_one_line(mirror, tmp_path, capsys):
    assert main(["data", "download", "--dest", str(tmp_path), "--quiet", "--mirror", mirror]) == 2
    assert capsys.readouterr().err == (f"error: mirror {mirror!r} is not a URL; give --mirror (or $CNNLAB_MIRRORS) "
                                       f"a base URL such as https://host/path/ (http, https, ftp, file)\n")


def test_a_read_only_destination_is_one_line(server, tmp_path, monkeypatch, capsys):
    import errno

    from cnnlab import portable

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(portable, "new_file", refuse)  # every file cnnlab makes starts there
    assert main(["data", "download", "--dest", str(tmp_path / "fm"), "--quiet",
                 "--mirror", f"{server}/ok/fashion-mnist/"]) == 2
    assert capsys.readouterr().err == (f"error: cannot download into {tmp_path / 'fm'}: Read-only file system; "
                                       f"choose a writable folder (--dest, or $XDG_CACHE_HOME for the cache) or fix "
                                       f"its permissions\n")


def test_sigterm_during_a_download_removes_the_partial_file(server, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "data", "download", "--dest", str(tmp_path), "--quiet",
                             "--mirror", f"{server}/trickle/fashion-mnist/"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not any(name.endswith(".part") for name in leftovers(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert leftovers(tmp_path) == []


def test_a_part_file_left_by_a_killed_download_is_removed_by_the_next(server, tmp_path):
    old = tmp_path / ".t10k-labels-idx1-ubyte.gz.k1ll3d.part"
    recent = tmp_path / ".t10k-labels-idx1-ubyte.gz.w0rk1n.part"  # maybe another process's download
    for part in (old, recent):
        part.write_bytes(bytes(1000))
    os.utime(old, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    download_dataset("mnist", tmp_path, mirrors=[f"{server}/ok/mnist/"], progress=False)
    assert not old.exists() and recent.exists()
    assert len(leftovers(tmp_path)) == 5


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_downloaded_files_get_the_permissions_open_gives(server, tmp_path, umask):
    """They were 0600 (the temporary file's mode), so the other users of a shared data folder could
    not read them; every file cnnlab writes now gets 0666 less the umask, as open() gives."""
    from cnnlab.fileio import write_text

    previous = os.umask(umask)
    try:
        download_dataset("fashion-mnist", tmp_path / "d", mirrors=[f"{server}/ok/fashion-mnist/"], progress=False)
        write_text(tmp_path / "d" / "notes.txt", "x")
        with open(tmp_path / "reference", "w"):
            pass
    finally:
        os.umask(previous)
    expected = (tmp_path / "reference").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "d").iterdir()}
    assert len(modes) == 5 and set(modes.values()) == {expected}, modes
