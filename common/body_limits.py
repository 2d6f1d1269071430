"""Request bodies under a size cap and a read deadline, for every service (pure ASGI).

Without it a client that declares `Content-Length: 1000` and sends 10 bytes holds a connection (and the
request's task) for as long as it likes, and a route learns a body is too large only after reading it.
`BodyLimitMiddleware`:

- refuses a declared Content-Length over the cap with 413 before anything is read;
- counts the bytes while the body streams (chunked bodies have no length) and stops at the cap, 413;
- answers 408 when the body has not ended within the deadline, counted from the app's first read.

Each of these answers closes the connection, since the rest of the body is never read; so does any
response sent while the body is still unread, so a client trickling bytes into a route that ignores
them cannot keep the connection either. The app sees a client disconnect where the body was cut off.

Routes keep their own, more precise limits (an image over the image limit is still the route's 413 with
its message): this is the backstop that bounds what reaches them. Caps and deadlines can differ by path
(`BodyRule`), so the few upload routes get room for large bodies and everything else stays tight.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware import Middleware

from common.http import ASGIApp, FastPathApp, Message, Receive, Scope, Send

_DISCONNECT: Message = {"type": "http.disconnect"}


@dataclass(frozen=True)
class BodyRule:
    """A cap and deadline for the paths `pattern` matches in full (e.g. `/api/v1/backbones(/.*)?`)."""

    pattern: re.Pattern[str]
    max_bytes: int
    timeout_s: float


@dataclass(frozen=True)
class BodyLimits:
    """The default cap and deadline, and the rules that override them (the first match wins)."""

    max_bytes: int
    timeout_s: float
    rules: tuple[BodyRule, ...] = ()

    def for_path(self, path: str) -> tuple[int, float]:
        for rule in self.rules:
            if rule.pattern.fullmatch(path):
                return rule.max_bytes, rule.timeout_s
        return self.max_bytes, self.timeout_s


def rule(pattern: str, max_bytes: int, timeout_s: float) -> BodyRule:
    return BodyRule(re.compile(pattern), max_bytes, timeout_s)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None when absent or unreadable) and whether the body is chunked."""
    declared: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            declared = int(text) if text.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return declared, chunked


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _BodyGuard:
    """One request's receive and send, wrapped: counts and times the body, holds back the app's answer
    once the body was refused (the refusal is the answer)."""

    def __init__(
        self, receive: Receive, send: Send, max_bytes: int, timeout_s: float, has_body: bool
    ) -> None:
        self._receive = receive
        self._send = send
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.body_done = not has_body
        self.received = 0
        self.deadline: float | None = None
        self.refusal: tuple[int, str] | None = None
        self.started = False

    async def receive(self) -> Message:
        if self.refusal is not None:
            return _DISCONNECT
        if self.body_done:
            return await self._receive()  # after the body: waiting for a disconnect is not timed
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            self.refusal = (408, f"the request body did not arrive within {self.timeout_s:g} s")
            return _DISCONNECT
        if message["type"] != "http.request":
            self.body_done = True  # the client left
            return message
        self.received += len(message.get("body", b""))
        if self.received > self.max_bytes:
            self.refusal = (413, f"the request body is over the limit of {self.max_bytes} bytes")
            return _DISCONNECT
        if not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.refusal is not None:
                return
            self.started = True
            if not self.body_done:
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
        elif self.refusal is not None and not self.started:
            return
        await self._send(message)


class BodyLimitMiddleware:
    """See the module docstring. Non-HTTP scopes (lifespan, websockets) pass through untouched."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, timeout_s = self.limits.for_path(scope.get("path", ""))
        declared, chunked = _framing(scope)
        if declared is not None and declared > max_bytes:
            await _refuse(send, 413, f"the request body is {declared} bytes; the limit is {max_bytes} bytes")
            return
        guard = _BodyGuard(receive, send, max_bytes, timeout_s, has_body=bool(declared) or chunked)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if guard.refusal is None:
                raise
            # The app failed on the body it was cut off from; the refusal below answers the client.
        if guard.refusal is not None and not guard.started:
            await _refuse(send, *guard.refusal)


def limit_bodies(app: FastAPI, limits: BodyLimits) -> None:
    """Put `BodyLimitMiddleware` on every route of `app`; call it last in the composition root.

    It goes innermost among the app's middleware, so the request log still records its 408s and 413s.
    Fast paths (`FastPathApp.add_fast_path`) skip the middleware stack, so each registered one is
    wrapped as well, inside its own request log.
    """
    app.user_middleware.append(Middleware(BodyLimitMiddleware, limits=limits))
    if isinstance(app, FastPathApp):
        app.wrap_fast_paths(BodyLimitMiddleware, lambda endpoint: BodyLimitMiddleware(endpoint, limits))
