"""HTTP plumbing both edge services and the cloud share: request ids, one log line per request,
JSON errors without stack traces, and 400 (not 422) for malformed parameters.

422 is kept free on purpose: the gateway treats it as "edge cannot handle this, ask the cloud",
while a malformed parameter is the client's fault and must not be forwarded anywhere.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


class RequestLogMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task overhead): sets the request id, logs one line per request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.log = logging.getLogger(f"{service}.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        if not request_id:
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.log.info(
                "request",
                extra={
                    "fields": {
                        "service": self.service,
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "ms": round((time.perf_counter() - start) * 1e3, 3),
                    }
                },
            )


def request_id_of(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id") or new_request_id()
    return rid


def json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install_error_handlers(
    app: FastAPI, mapping: dict[type[Exception], Callable[[Exception], Response]] | None = None
) -> None:
    """Malformed parameters → 400; mapped domain errors → their status; anything else → a bare 500."""

    async def validation_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path", "header"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return json_error(400, "; ".join(parts) or "invalid request")

    async def http_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def unhandled(request: Request, exc: Exception) -> Response:
        logging.getLogger("http").exception(
            "unhandled error", extra={"fields": {"request_id": request_id_of(request)}}
        )
        return json_error(500, "internal error; the request id is in the x-request-id header")

    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
    for exc_type, to_response in (mapping or {}).items():

        def make(fn: Callable[[Exception], Response]) -> Callable[[Request, Exception], Awaitable[Response]]:
            async def handler(request: Request, exc: Exception) -> Response:
                return fn(exc)

            return handler

        app.add_exception_handler(exc_type, make(to_response))
    app.add_exception_handler(Exception, unhandled)
