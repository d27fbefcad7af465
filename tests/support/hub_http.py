"""The HTTP side of the loopback Hub (`hub_server`): what both of its origins share, and the storage origin that
LFS files are redirected to and uploaded into."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .hub_repos import HubFile

if TYPE_CHECKING:
    from .hub_server import HubServer


class Handler(BaseHTTPRequestHandler):
    """What every origin of the loopback Hub shares: the request body (chunked or not), JSON answers and the Hub's
    refusals with X-Error-Code."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def state(self) -> HubServer:
        return self.server.zoo_hub  # type: ignore[attr-defined]

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, body: bytes | memoryview = b"", headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> int:
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def json(self, status: int, value: object, headers: dict[str, str] | None = None) -> int:
        return self.send(status, json.dumps(value).encode(), headers)

    def refuse(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> int:
        extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        return self.json(status, {"error": message}, extra)


class StorageHandler(Handler):
    """The storage origin: LFS objects by sha256 (with Range), and the basic-transfer uploads."""

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        record = self.state.log(self.command, "storage:" + path)
        data = self.state.lfs_objects.get(path.rpartition("/")[2]) if path.startswith("/lfs/") else None
        if data is None:
            record.status = self.refuse(404, None, "no such object")
            return
        start, stop = 0, len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, stop = int(match.group(1)), min(int(match.group(2) or len(data) - 1) + 1, len(data))
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{path.rpartition("/")[2]}"'}
        if match:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        record.status = self.send(206 if match else 200, memoryview(data)[start:stop], headers,
                                  "application/octet-stream")

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        record = self.state.log("PUT", "storage:" + path)
        data = self.body()
        oid = path.rpartition("/")[2]
        if not path.startswith("/upload/") or HubFile(data, True).sha256 != oid:
            record.status = self.refuse(400, None, f"the uploaded bytes do not have sha256 {oid}")
            return
        with self.state.lock:
            self.state.lfs_objects[oid] = data
        record.status = self.send(200, b"", {"ETag": f'"{oid}"'})
