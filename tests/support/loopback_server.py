"""A real HTTP server on 127.0.0.1 for tests and benchmarks: files at paths, Range on/off, Drive-like pages, faults.

Use it as a context manager (`with LoopbackServer() as server:`) or through the `loopback_server` pytest fixture
(import it into a test module). Payloads are bytes or a file path; every request is recorded, so tests can count
transfers. Faults apply to the first `times` requests of a path and then the path serves normally.
"""

from __future__ import annotations

import hashlib
import html
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from .transfer_gate import TransferGate

FAULT_KINDS = ("truncate", "wrong_length", "flip", "reset", "status", "stall", "html")
DRIVE_PAGES = ("form", "token", "quota", "permission")
QUOTA_TEXT = ("Too many users have viewed or downloaded this file recently. Please try accessing the file again "
              "later. If the file you are trying to access is particularly large or is shared with many people, "
              "it may take up to 24 hours to be able to view or download the file.")
PERMISSION_TEXT = "You need access. Ask for access, or switch to an account with access."


@dataclass
class Fault:
    """One injected failure: `kind` in FAULT_KINDS, applied to the next `times` requests (None: all of them).

    `at` is the byte offset (of the whole file) where truncate/flip/reset/stall strike; `length` is the
    Content-Length that wrong_length declares; `status` the error code; `seconds` how long a stall lasts.
    """

    kind: str
    at: int = 0
    times: int | None = 1
    length: int = 0
    status: int = 500
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")


@dataclass
class Route:
    """What one path serves: the bytes (or a file), whether Range is honoured, pending faults, throttling."""

    payload: bytes | Path
    ranges: bool = True
    faults: list[Fault] = field(default_factory=list)
    content_type: str = "application/octet-stream"
    send_length: bool = True
    chunk_size: int = 1 << 20
    chunk_delay: float = 0.0
    gate: TransferGate | None = None

    @property
    def size(self) -> int:
        return self.payload.stat().st_size if isinstance(self.payload, Path) else len(self.payload)

    def read(self, start: int, stop: int) -> bytes:
        if isinstance(self.payload, Path):
            with self.payload.open("rb") as handle:
                handle.seek(start)
                return handle.read(stop - start)
        return self.payload[start:stop]


@dataclass
class RequestRecord:
    """One request the server received: method, path, query, Range header and the status sent (0 until the
    response completes)."""

    method: str
    path: str
    query: dict[str, str]
    range: str | None
    status: int = 0


@dataclass
class DriveFile:
    """A file behind Drive-like pages: which interstitial (or refusal) page `/uc?id=ID` answers with."""

    payload: bytes
    page: str | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


class LoopbackServer:
    """A threaded HTTP/1.0 server on a free port of 127.0.0.1; `add` registers files, `requests` lists the log."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.drive_files: dict[str, DriveFile] = {}
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.zoo_server = self  # type: ignore[attr-defined]
        self.httpd.handle_error = self._record_error  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="loopback-http", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """The full URL of `path` on this server."""
        return self.base_url + path

    def add(self, path: str, payload: bytes | Path | str, *, ranges: bool = True, faults: list[Fault] | None = None,
            content_type: str = "application/octet-stream", send_length: bool = True,
            chunk_delay: float = 0.0, chunk_size: int = 1 << 20) -> str:
        """Serve `payload` at `path` (a str payload is served as UTF-8 HTML); returns the URL."""
        if isinstance(payload, str):
            payload, content_type = payload.encode(), "text/html; charset=utf-8"
        with self.lock:
            self.routes[path] = Route(Path(payload) if isinstance(payload, Path) else bytes(payload), ranges,
                                      list(faults or []), content_type, send_length, chunk_size, chunk_delay)
        return self.url(path)

    def gate(self, path: str) -> TransferGate:
        """The gate of an existing path, created on first use: `gate(path).hold_next(offset)` makes the path's
        next response stop at `offset` until `release()` (see support.transfer_gate)."""
        with self.lock:
            route = self.routes[path]
            if route.gate is None:
                route.gate = TransferGate(self.stopping)
            return route.gate

    def add_fault(self, path: str, fault: Fault) -> None:
        """Queue one more fault on an existing path."""
        with self.lock:
            self.routes[path].faults.append(fault)

    def add_drive_file(self, file_id: str, payload: bytes, *, page: str | None = "form") -> str:
        """Serve `payload` the way Drive does, behind `page` (form, token, quota, permission or None); returns
        the `/file/d/ID/view` link a user would copy."""
        if page is not None and page not in DRIVE_PAGES:
            raise ValueError(f"page must be one of {DRIVE_PAGES} or None, got {page!r}")
        with self.lock:
            self.drive_files[file_id] = DriveFile(bytes(payload), page)
        return self.url(f"/file/d/{file_id}/view")

    def hits(self, path: str) -> int:
        """How many requests `path` received (any query, any status)."""
        with self.lock:
            return sum(1 for record in self.requests if record.path == path)

    def start(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record_error(self, request: object, client_address: object) -> None:
        import sys

        with self.lock:
            self.errors.append(repr(sys.exc_info()[1]))

    def _log(self, record: RequestRecord) -> None:
        with self.lock:
            self.requests.append(record)

    def _take_fault(self, route: Route) -> Fault | None:
        with self.lock:
            if not route.faults:
                return None
            fault = route.faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    route.faults.pop(0)
            return fault


class _Handler(BaseHTTPRequestHandler):
    """Answers one request from the routes and Drive files of the owning LoopbackServer."""

    protocol_version = "HTTP/1.0"
    server_version = "iabn-zoo-loopback/1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: the server keeps its own log
        pass

    @property
    def zoo(self) -> LoopbackServer:
        return self.server.zoo_server  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        record = RequestRecord(self.command, parts.path, query, self.headers.get("Range"))
        self.zoo._log(record)  # logged on arrival, so a stalled or reset response is counted too
        route = self.zoo.routes.get(parts.path)
        if route is not None:
            status = self._serve_route(route, head)
        elif parts.path.startswith("/file/d/"):
            status = self._send_html(200, "Google Drive - file preview", "<div>preview of a file</div>")
        elif parts.path in ("/uc", "/download"):
            status = self._serve_drive(parts.path, query, head)
        else:
            status = self._send_html(404, "Not Found", "<p>no such file</p>")
        record.status = status

    def _serve_drive(self, path: str, query: dict[str, str], head: bool) -> int:
        drive = self.zoo.drive_files.get(query.get("id", ""))
        if drive is None:
            return self._send_html(404, "Google Drive - 404", "<p>Sorry, the file you requested does not exist.</p>")
        if drive.page == "quota":
            return self._send_html(200, "Google Drive - Quota exceeded", f"<p>{html.escape(QUOTA_TEXT)}</p>")
        if drive.page == "permission":
            return self._send_html(200, "Google Drive - You need access", f"<p>{PERMISSION_TEXT}</p>")
        confirmed = query.get("confirm") == ("t" if drive.page == "form" else drive.token)
        if drive.page is None or confirmed:
            return self._serve_route(Route(drive.payload), head)
        if drive.page == "form":
            return self._send_drive_form(query["id"])
        return self._send_token_page(query["id"], drive.token)

    def _send_drive_form(self, file_id: str) -> int:
        action = html.escape(self.zoo.url("/download"))
        body = (f'<p>Google Drive can\'t scan this file for viruses.</p>'
                f'<form id="download-form" action="{action}" method="get">'
                f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{html.escape(file_id)}">'
                f'<input type="hidden" name="export" value="download">'
                f'<input type="hidden" name="confirm" value="t">'
                f'<input type="hidden" name="uuid" value="{uuid.uuid4()}"></form>')
        return self._send_html(200, "Google Drive - Virus scan warning", body)

    def _send_token_page(self, file_id: str, token: str) -> int:
        href = html.escape(f"/uc?export=download&confirm={token}&id={file_id}")
        body = (f"<p>Google Drive can't scan this file for viruses.</p>"
                f'<a id="uc-download-link" href="{href}">Download anyway</a>')
        cookie = f"download_warning_{abs(hash(file_id)) % 10**12}_{file_id}={token}; Path=/"
        return self._send_html(200, "Google Drive - Virus scan warning", body, cookie=cookie)

    def _send_html(self, status: int, title: str, body: str, *, cookie: str | None = None) -> int:
        page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(page)
        return status

    def _serve_route(self, route: Route, head: bool) -> int:
        fault = self.zoo._take_fault(route)
        if fault is not None and fault.kind == "status":
            return self._send_html(fault.status, f"Error {fault.status}", "<p>injected server error</p>")
        if fault is not None and fault.kind == "html":
            return self._send_html(200, "Sign in", "<p>an HTML page where a file was expected</p>")
        start, stop, status = self._byte_range(route)
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{route.size}")
        declared = fault.length if fault is not None and fault.kind == "wrong_length" else stop - start
        if route.send_length:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        if head or status == 416:
            return status
        self._send_body(route, start, stop, fault)
        return status

    def _byte_range(self, route: Route) -> tuple[int, int, int]:
        header = self.headers.get("Range")
        if not route.ranges or not header or not header.startswith("bytes="):
            return 0, route.size, 200
        first, _, last = header[len("bytes="):].split(",")[0].partition("-")
        start = int(first) if first else 0
        stop = min(int(last) + 1, route.size) if last else route.size
        if start >= route.size:
            return start, start, 416
        return start, stop, 206

    def _send_body(self, route: Route, start: int, stop: int, fault: Fault | None) -> None:
        hold = route.gate.claim() if route.gate is not None else None
        if fault is None and isinstance(route.payload, Path) and not route.chunk_delay and hold is None:
            with route.payload.open("rb") as handle:
                self.wfile.flush()
                self.connection.sendfile(handle, offset=start, count=stop - start)
            return
        strike = fault.at if fault is not None and fault.kind in ("truncate", "reset", "stall") else None
        end = min(stop, strike) if strike is not None and strike >= start else stop
        hold = None if hold is None else min(max(hold, start), end)
        cuts = sorted({*range(start, end, route.chunk_size), *([hold] if hold is not None and hold < end else [])})
        for offset, upto in zip(cuts, cuts[1:] + [end]):
            if offset == hold:
                self.wfile.flush()
                route.gate.wait_at(hold)
            chunk = route.read(offset, upto)
            if fault is not None and fault.kind == "flip" and offset <= fault.at < offset + len(chunk):
                chunk = _flip(chunk, fault.at - offset)
            self.wfile.write(chunk)
            if route.chunk_delay:
                time.sleep(route.chunk_delay)
        self.wfile.flush()
        if hold == end:
            route.gate.wait_at(hold)
        if fault is not None and end < stop:
            self._strike(fault)

    def _strike(self, fault: Fault) -> None:
        if fault.kind == "stall":
            self.zoo.stopping.wait(fault.seconds)
        elif fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def _flip(chunk: bytes, index: int) -> bytes:
    mutable = bytearray(chunk)
    mutable[index] ^= 0xFF
    return bytes(mutable)


def md5_of(data: bytes) -> str:
    """The md5 hex digest of `data`, the form the registry stores."""
    return hashlib.md5(data).hexdigest()


def random_payload(size: int, seed: int = 0) -> bytes:
    """`size` reproducible pseudo-random bytes (incompressible, so no layer can shortcut them)."""
    return random.Random(seed).randbytes(size)


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A started LoopbackServer, stopped after the test."""
    with LoopbackServer() as server:
        yield server


__all__ = ["Fault", "LoopbackServer", "RequestRecord", "loopback_server", "md5_of", "random_payload"]
