"""An ASGI app served inside the test process: its own event loop in a thread, its lifespan run once,
and a synchronous httpx transport into it, so tests written against a real server (httpx.Client) run
unchanged, minus the process start, the sockets and the HTTP parsing.

For behaviour that lives inside one service (auth matrix, validation, registry rules); what crosses
processes keeps its real-process tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

T = TypeVar("T")

CLIENT_ADDRESS = ("127.0.0.1", 50000)


class AppThread:
    """`app` running on a private event loop; `start` runs its lifespan's startup, `stop` its shutdown."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="in-process-app", daemon=True)
        self._lifespan: AbstractAsyncContextManager[Any] | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> AppThread:
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.run(self._lifespan.__aenter__())
        return self

    def stop(self) -> None:
        if self._lifespan is not None:
            self.run(self._lifespan.__aexit__(None, None, None))
            self._lifespan = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def transport(self) -> httpx.BaseTransport:
        return _SyncIntoLoop(self)

    def client(self, base_url: str, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=self.transport(), base_url=base_url, **kwargs)


class _SyncIntoLoop(httpx.BaseTransport):
    """A synchronous transport that hands each request to the app's loop and waits for the answer."""

    def __init__(self, served: AppThread) -> None:
        self._served = served
        # Errors inside the app come back as the app's own 500, as from a server.
        self._asgi = httpx.ASGITransport(app=served.app, raise_app_exceptions=False, client=CLIENT_ADDRESS)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        status, headers, content = self._served.run(self._send(inner))
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _send(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._asgi.handle_async_request(request)
        content = b"".join([chunk async for chunk in response.aiter_raw()])  # still encoded, as sent
        await response.aclose()
        return response.status_code, response.headers.raw, content
