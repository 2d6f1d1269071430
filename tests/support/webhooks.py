"""Webhooks in tests: a receiver that records every request (headers and exact body) and answers with
the status codes it is told, in order, then 200 (it dedupes on the Idempotency-Key as a real receiver
should, so a test can tell attempts from deliveries); and the worker's notification and delivery
steps run once in this process, with retries fast enough for a test."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloud.app.settings import CloudSettings
from cloud.worker.loop import TickReport, close_state, deliver_webhooks, make_state, scan_for_notifications
from launcher.processes import free_port
from tests.support.thread_server import ThreadServer

RETRY_BASE_S = 0.3


def worker_settings(database_url: str, data_dir: Path) -> CloudSettings:
    return CloudSettings(
        DATABASE_URL=database_url,
        data_dir=data_dir,
        webhook_retry_base_s=RETRY_BASE_S,
        webhook_retry_max_s=RETRY_BASE_S,
        webhook_max_attempts=3,
        webhook_timeout_s=5,
        notify_edge_offline_s=60,
        notify_waiting_repeat_s=3600,
    )


def run_worker(database_url: str, data_dir: Path, *, notify: bool = False) -> TickReport:
    """The worker's notification scan (when asked) and its delivery step, once."""

    async def go() -> TickReport:
        state = make_state(worker_settings(database_url, data_dir))
        report = TickReport()
        try:
            if notify:
                await scan_for_notifications(state, report)
            await deliver_webhooks(state, report)
        finally:
            await close_state(state)
        return report

    return asyncio.run(go())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to give next, in order
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadServer = field(default_factory=lambda: ThreadServer("webhook-receiver"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> JSONResponse:
        body = await request.body()
        with self._lock:
            status = self.answers.pop(0) if self.answers else 200
            self.requests.append(Received({k.lower(): v for k, v in request.headers.items()}, body, status))
        return JSONResponse({"ok": status < 300}, status_code=status)

    def start(self) -> WebhookReceiver:
        self._server.start(Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]), self.port)
        return self

    def stop(self) -> None:
        self._server.stop()

    def delivered(self) -> dict[str, Received]:
        """The first 2xx request of each Idempotency-Key: what a deduping receiver acts on."""
        with self._lock:
            done: dict[str, Received] = {}
            for req in self.requests:
                if req.status < 300:
                    done.setdefault(req.headers["idempotency-key"], req)
            return done
