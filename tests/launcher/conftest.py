"""Fixtures for the gateway tests: tiny recording HTTP servers standing in for edge-api and the cloud."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Recorded:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]
    # The request target exactly as sent (http.server collapses a leading "//" in `path`).
    target: str = ""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"answer": "ok"}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


class Upstream:
    """An HTTP/1.1 keep-alive server that records every request and answers with `reply`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self.reply = self._default_reply()
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with upstream._lock:
                    upstream.requests.append(
                        Recorded(
                            method=self.command,
                            path=self.path,
                            version=self.request_version,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            peer=self.client_address,
                            target=self.requestline.split(" ")[1],
                        )
                    )
                    reply = upstream.reply
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("X-Served-By", upstream.name)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"upstream-{name}", daemon=True
        )

    def _default_reply(self) -> Reply:
        return Reply(body=b'{"from": "%s"}' % self.name.encode())

    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def answer(self, status: int, body: bytes = b'{"detail": "from the test"}', **headers: str) -> None:
        """Answer every following request with this status, body and headers (`X_No_Fallback="1"`)."""
        names = {name.replace("_", "-"): value for name, value in headers.items()}
        with self._lock:
            self.reply = Reply(status, body, {"Content-Type": "application/json", **names})

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.reply = self._default_reply()


@pytest.fixture(scope="module")
def edge() -> Iterator[Upstream]:
    server = Upstream("edge").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cloud() -> Iterator[Upstream]:
    server = Upstream("cloud").start()
    yield server
    server.stop()
