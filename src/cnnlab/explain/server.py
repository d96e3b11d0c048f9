"""The local web server of ``cnnlab explain``: the page's static files and a small JSON API.

Built on the standard library's ``ThreadingHTTPServer``: a local tool for one person needs no more,
and it adds no dependency.  It is used with care:

* one thread per connection (daemon threads, so Ctrl-C never waits for an open connection), a
  socket timeout on every read, and a deadline for each whole request, so a client that stops
  sending, or sends a byte at a time, cannot hold a thread for ever;
* the static files are read from the package into memory at start-up and served from a fixed table
  of names: no part of a request path ever reaches the filesystem;
* bodies need a Content-Length and are capped before they are read (JSON and uploads separately);
  a request whose body is not read (a wrong route or method, a refused upload) closes its connection,
  so the body is never read as the next request (a page elsewhere could otherwise smuggle a JSON
  POST inside a ``text/plain`` one);
* uploads are decoded by Pillow in memory, refused above a pixel count, never stored, and a few at a
  time: more at once are answered 503 with ``Retry-After``;
* JSON endpoints accept only ``Content-Type: application/json``, and a server on a loopback address
  answers only requests whose ``Host`` is that address (a web page elsewhere cannot reach it through
  DNS rebinding);
* every answer has an exact content type, ``nosniff`` and a content security policy; every error is
  JSON ``{"error": "..."}`` with a 4xx status, and an unexpected exception is a 500 for that request
  only: the server goes on.
"""

from __future__ import annotations

import io
import ipaddress
import json
import sys
import threading
import time
import traceback
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from cnnlab import portable
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.explain.compute import NUMBER_DIGITS, whole_number

MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
SOCKET_TIMEOUT_S = 15
REQUEST_DEADLINE_S = 60
"""Most seconds one whole request (request line, headers and body) may take to arrive: an 8 MiB upload
needs well under a second on this machine, and the page's own requests are small."""
UPLOADS_AT_ONCE = 2
"""Uploads decoded at the same time; a decoded picture can take a hundred MB or more while it is converted."""
RETRY_AFTER_S = 1
UPLOAD_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/tiff", "image/webp")
"""The labels an upload may carry: the formats ``cnnlab predict`` reads.  The label only keeps other
pages' plain form posts out (these types need a CORS preflight, which this server never grants); the
format is told from the content (:data:`cnnlab.images.FORMATS`), whatever the label says."""

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8"),
                "/favicon.svg": ("favicon.svg", "image/svg+xml")}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class DeadlineReader(io.RawIOBase):
    """A connection's socket for reading, each read given at most the time left of the request's deadline
    (and at most the socket timeout), so that the whole request must arrive in time, not only each byte."""

    def __init__(self, handler: ExplainHandler):
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request did not arrive within {REQUEST_DEADLINE_S} seconds")
        self.handler.connection.settimeout(min(SOCKET_TIMEOUT_S, left))
        return self.handler.connection.recv_into(buffer)


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: request path -> (bytes, content type)."""
    folder = resources.files("cnnlab.explain").joinpath("static")
    return {route: (folder.joinpath(name).read_bytes(), ctype) for route, (name, ctype) in STATIC_FILES.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ExplainServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False   # portable.claim_port decides, per system

    def server_bind(self):
        portable.claim_port(self.socket)
        super().server_bind()

    def __init__(self, address, explained_run):
        self.explained = explained_run
        self.static = load_static()
        self.upload_slots = threading.BoundedSemaphore(UPLOADS_AT_ONCE)
        super().__init__(address, ExplainHandler)
        host, port = self.server_address[:2]
        bound = f"[{host}]" if ":" in host else host   # any loopback address it was asked to bind (127.0.0.2)
        self.allowed_hosts = ({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{bound}:{port}"}
                              if is_loopback(address[0]) else None)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def handle_error(self, request, client_address):
        """A connection that broke (the browser went away, a timeout): nothing to report."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ClientGone(Exception):
    """The client stopped sending its body (it went away, or ran out of time): nothing to answer or report."""


class LongNumber(ValueError):
    """A JSON number with more digits than any answer could use."""


def _json_int(text: str) -> int:
    """A JSON integer, refused past :data:`NUMBER_DIGITS` digits (Python refuses to convert 4,300)."""
    digits = len(text.lstrip("-").lstrip("0"))
    if digits > NUMBER_DIGITS:
        raise LongNumber(f"the request body's JSON has a number of {digits:,d} digits; numbers here have at most "
                         f"{NUMBER_DIGITS}")
    return int(text)


def _query(query: dict[str, list[str]], name: str, default: Any = None) -> Any:
    values = query.get(name)
    return values[-1] if values else default


class ExplainHandler(BaseHTTPRequestHandler):
    server: ExplainServer
    server_version = "cnnlab-explain"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    deadline = 0.0
    body_read = False

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(DeadlineReader(self))

    def handle_one_request(self):
        self.deadline = time.monotonic() + REQUEST_DEADLINE_S
        self.body_read = False
        super().handle_one_request()

    # ---- routes ---------------------------------------------------------------------------------
    def _get_routes(self) -> dict[str, Callable[[dict], Any]]:
        run = self.server.explained
        return {
            "/api/run": lambda q: run.describe(),
            "/api/training": lambda q: run.training(),
            "/api/evaluation": lambda q: run.evaluation()["answer"],
            "/api/find": lambda q: run.find(_query(q, "kind"), _query(q, "after", -1), _query(q, "class")),
            "/api/cell": lambda q: run.cell(_query(q, "true"), _query(q, "predicted")),
        }

    def _post_routes(self) -> dict[str, Callable[[Any], Any]]:
        run = self.server.explained
        return {
            "/api/forward": lambda b: run.forward(b.get("input"), b.get("max_channels", 16)),
            "/api/explain": lambda b: run.explain(b.get("input"), b.get("layer"), b.get("unit")),
            "/api/playground": lambda b: run.playground(b.get("input"), b.get("kernel"), b.get("padding", 0),
                                                        b.get("stride", 1)),
        }

    # ---- methods --------------------------------------------------------------------------------
    def do_GET(self):
        self._handle(self._get)

    def do_HEAD(self):
        self._handle(self._get, head=True)

    def do_POST(self):
        self._handle(self._post)

    def _refuse_method(self):
        self._handle(self._wrong_method)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _get(self, path: str, query: dict):
        if path in self.server.static:
            body, ctype = self.server.static[path]
            return HTTPStatus.OK, body, ctype
        routes = self._get_routes()
        if path in routes:
            self.server.explained.refresh()
            return HTTPStatus.OK, routes[path](query), None
        if path in self._post_routes() or path == "/api/upload":
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST, not GET")
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no such page or endpoint: {path[:100]}")

    def _post(self, path: str, query: dict):
        routes = self._post_routes()
        if path == "/api/upload":
            if not self.server.upload_slots.acquire(blocking=False):
                raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"{UPLOADS_AT_ONCE} uploads are being converted; send this one again in a moment",
                                {"Retry-After": str(RETRY_AFTER_S)})
            try:
                body = self._body(UPLOAD_TYPES, MAX_UPLOAD_BYTES)
                self.server.explained.refresh()
                return HTTPStatus.OK, self.server.explained.upload(body), None
            finally:
                self.server.upload_slots.release()
        if path in routes:
            raw = self._body(("application/json",), MAX_JSON_BYTES)
            try:
                payload = json.loads(raw, parse_int=_json_int)
            except LongNumber as exc:
                raise HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from None
            except ValueError as exc:     # JSONDecodeError, UnicodeDecodeError
                raise HTTPError(HTTPStatus.BAD_REQUEST, f"malformed JSON in the request body ({exc})") from None
            except RecursionError:
                raise HTTPError(HTTPStatus.BAD_REQUEST, "the JSON in the request body is nested too deeply") from None
            if not isinstance(payload, dict):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            self.server.explained.refresh()
            return HTTPStatus.OK, routes[path](payload), None
        if path in self.server.static or path in self._get_routes():
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes GET, not POST")
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path[:100]}")

    def _wrong_method(self, path: str, query: dict):
        raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported; use GET or POST")

    # ---- plumbing -------------------------------------------------------------------------------
    def _body(self, types: tuple[str, ...], limit: int) -> bytes:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        try:
            size = whole_number(length, "Content-Length", 0, 2**63 - 1)
        except ConfigError:
            self.close_connection = True
            raise
        if size > limit:
            self.close_connection = True    # the body is left unread
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the request body has {size:,d} bytes, more than the {limit:,d} allowed")
        if ctype not in types:
            self.close_connection = True
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"Content-Type must be {' or '.join([', '.join(types[:-1]), types[-1]] if len(types) > 1 else types)}, "
                            f"not {ctype or 'missing'}")
        try:
            body = self.rfile.read(size)
        except OSError:          # a reset connection, or the request's time ran out
            self.close_connection = True
            raise ClientGone() from None
        self.body_read = True
        if len(body) != size:
            self.close_connection = True
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the request body ended early")
        return body

    def _unread_body(self) -> bool:
        """Whether the request declared a body that was not read (it must not be read as the next request)."""
        if self.body_read:
            return False
        length = (self.headers.get("Content-Length") or "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length != "0"

    def _handle(self, action, head: bool = False):
        extra: dict[str, str] = {}
        try:
            allowed = self.server.allowed_hosts
            if allowed is not None and (self.headers.get("Host") or "").lower() not in allowed:
                self.close_connection = True
                raise HTTPError(HTTPStatus.MISDIRECTED_REQUEST,
                                f"this server answers only requests to {self.server.url}")
            split = urlsplit(self.path)
            status, body, ctype = action(split.path, parse_qs(split.query))
        except ClientGone:
            return
        except HTTPError as exc:
            status, body, ctype = exc.status, {"error": str(exc)}, None
            extra = exc.headers
        except CnnlabError as exc:
            status, body, ctype = HTTPStatus.BAD_REQUEST, {"error": str(exc)}, None
        except Exception as exc:  # noqa: BLE001  (one request fails; the server goes on)
            traceback.print_exc(file=sys.stderr)
            status, body, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, {
                "error": f"internal error ({type(exc).__name__}: {str(exc)[:120]}); the server goes on"}, None
        if self._unread_body():
            self.close_connection = True
        self._send(status, body, ctype, head, extra)

    def _send(self, status: HTTPStatus, body: Any, ctype: str | None, head: bool = False,
              extra: dict[str, str] | None = None) -> None:
        if ctype is None:
            body = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            ctype = "application/json"
        self.connection.settimeout(SOCKET_TIMEOUT_S)     # a read may have left it at the request's last moments
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD, POST")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """Errors the standard library raises itself (a malformed request line, an unknown method,
        an over-long header) as JSON too, with a status line even when the request line was too broken
        to name an HTTP version (the standard library would then answer as HTTP/0.9: no status, no headers)."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        try:
            self._send(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase}, None)
        except (ValueError, OSError):
            pass

    def log_message(self, format, *args):
        """Quiet: a local page makes many requests; failures are answered, and printed when unexpected."""


def serve(explained_run, host: str = "127.0.0.1", port: int = 8765, *, open_browser: bool = False,
          out=None) -> None:
    """Serve until Ctrl-C: print the URL (and a warning off loopback), optionally open a browser."""
    out = out or sys.stdout
    try:
        server = ExplainServer((host, port), explained_run)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
                          f"(0 picks a free one) or --host") from None
    if not is_loopback(host):
        print(f"warning: --host {host} lets anyone who can reach this machine on port {server.server_address[1]} "
              f"use the page and its API (the model and the run's test images); use 127.0.0.1 unless you mean it",
              file=out, flush=True)
    print(f"serving {explained_run.run_dir} at {server.url} (Ctrl-C stops)", file=out, flush=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("stopped", file=out, flush=True)
    finally:
        server.server_close()
