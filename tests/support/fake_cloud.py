"""A small cloud upstream for edge tests: records what reaches it, stores escalations idempotently.

It honours the contract the edge relies on (`POST /api/v1/escalations` idempotent on image_query_id;
`GET /device-api/v1/image-queries/{id}` with the answer a test sets in `answers`) and records fallback
traffic from nginx.
It runs in a thread so tests can read what it received, and can be stopped and restarted on the
same port to simulate outages.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.thread_server import ThreadServer


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CloudState:
    requests: list[Recorded] = field(default_factory=list)
    escalations: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    posts_per_id: dict[str, int] = field(default_factory=dict)
    fail_escalations_with: int | None = None
    # image_query_id -> the ImageQuery JSON that GET /device-api/v1/image-queries/{id} returns.
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fallbacks(self) -> list[Recorded]:
        return [r for r in self.requests if not r.path.startswith(("/api/v1/escalations", "/health"))]

    def reads_of(self, image_query_id: str) -> list[Recorded]:
        """GETs of one image query that reached the cloud."""
        path = f"/device-api/v1/image-queries/{image_query_id}"
        return [r for r in self.requests if r.method == "GET" and r.path == path]


def build_app(state: CloudState) -> Starlette:
    async def escalations(request: Request) -> JSONResponse:
        form = await request.form()
        payload = json.loads(str(form["escalation"]))
        image = form["image"]
        data = await image.read() if hasattr(image, "read") else b""
        iq_id = payload["image_query_id"]
        with state.lock:
            state.requests.append(Recorded("POST", request.url.path, "", dict(request.headers), b""))
            state.posts_per_id[iq_id] = state.posts_per_id.get(iq_id, 0) + 1
            if state.fail_escalations_with is not None:
                return JSONResponse({"detail": "injected failure"}, status_code=state.fail_escalations_with)
            if iq_id in state.escalations:
                return JSONResponse({"image_query_id": iq_id, "created": False}, status_code=200)
            state.escalations[iq_id] = payload
            state.images[iq_id] = data
        return JSONResponse({"image_query_id": iq_id, "created": True}, status_code=201)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def anything(request: Request) -> JSONResponse:
        body = await request.body()
        with state.lock:
            state.requests.append(
                Recorded(request.method, request.url.path, request.url.query, dict(request.headers), body)
            )
        return JSONResponse({"served_by": "cloud", "method": request.method, "path": request.url.path})

    async def image_query(request: Request) -> JSONResponse:
        answer = state.answers.get(request.path_params["iq_id"])
        if answer is None:
            return await anything(request)
        with state.lock:
            state.requests.append(
                Recorded("GET", request.url.path, request.url.query, dict(request.headers), b"")
            )
        return JSONResponse(answer)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(
        routes=[
            Route("/api/v1/escalations", escalations, methods=["POST"]),
            Route("/device-api/v1/image-queries/{iq_id}", image_query, methods=["GET"]),
            Route("/health/live", live),
            Route("/{path:path}", anything, methods=methods),
        ]
    )


class FakeCloud:
    def __init__(self, port: int) -> None:
        self.port = port
        self.state = CloudState()
        self._server = ThreadServer("fake cloud")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeCloud:
        self._server.start(build_app(self.state), self.port)
        return self

    def stop(self) -> None:
        self._server.stop()
