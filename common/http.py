"""HTTP plumbing both edge services and the cloud share: request ids, one log line per request,
JSON errors without stack traces, and 400 (not 422) for malformed parameters.

422 is kept free on purpose: the gateway treats it as "edge cannot handle this, ask the cloud",
while a malformed parameter is the client's fault and must not be forwarded anywhere.

Hot routes (one request per camera frame) can skip FastAPI's per-request machinery (middleware
layers, routing, dependency solving, parameter validation): `FastPathApp` answers the exact
method + path pairs registered with `add_fast_path` through a plain ASGI endpoint, still wrapped in
`RequestLogMiddleware` and mapping errors with the same table as the app's exception handlers. The
FastAPI route stays declared, so the OpenAPI document is unchanged. docs/fast-path.md says what the
fast path is measured to save, why it stays, and what adding a middleware takes (`wrap_fast_paths`).
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ErrorTable = Mapping[type[Exception], Callable[[Exception], Response]]
PlainHandler = Callable[[Scope, Receive], Awaitable[Response]]

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
            if self.log.isEnabledFor(logging.INFO):
                self._log(scope, request_id, status, start)

    def _log(self, scope: Scope, request_id: str, status: int, start: float) -> None:
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
    return scope_request_id(request.scope)


def scope_request_id(scope: Scope) -> str:
    """The id `RequestLogMiddleware` put in the scope (a fresh one outside it)."""
    rid: str = scope.get("state", {}).get("request_id") or new_request_id()
    return rid


def query_dict(scope: Scope) -> dict[str, str]:
    """The query string as a dict, last value winning, exactly as `dict(request.query_params)`."""
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


async def read_body(receive: Receive) -> bytes:
    """The whole request body, as `Request.body()` reads it (ClientDisconnect if the client left)."""
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class PlainEndpoint:
    """A route as a plain ASGI app: `handler(scope, receive)` returns the response; exceptions are
    answered from `errors` (looked up along the exception's MRO, like Starlette's handlers), HTTP
    exceptions as JSON, anything else as the same bare 500 `install_error_handlers` gives."""

    def __init__(self, handler: PlainHandler, errors: ErrorTable) -> None:
        self.handler = handler
        self.errors = dict(errors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.handler(scope, receive)
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception as exc:
            response = self._error(exc, scope)
        await response(scope, receive, send)

    def _error(self, exc: Exception, scope: Scope) -> Response:
        for cls in type(exc).__mro__:
            to_response = self.errors.get(cls)
            if to_response is not None:
                return to_response(exc)
        if isinstance(exc, StarletteHTTPException):
            return json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        logging.getLogger("http").error(
            "unhandled error", exc_info=exc, extra={"fields": {"request_id": scope_request_id(scope)}}
        )
        return json_error(500, "internal error; the request id is in the x-request-id header")


class FastPathApp(FastAPI):
    """FastAPI whose hot routes bypass its per-request stack (see the module docstring).

    A request whose method and path match a registered fast path exactly goes straight to its
    endpoint; every other request (and lifespan) takes the normal FastAPI path. A middleware added to
    the app would therefore silently skip the fast paths, so the app refuses to start (building its
    middleware stack raises) while any added middleware is not also applied to them: fast paths run
    their own RequestLogMiddleware, and `wrap_fast_paths` applies any other middleware to them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_paths: dict[tuple[str, str], ASGIApp] = {}
        # The middleware classes every fast path runs as well.
        self.fast_path_middleware: set[object] = {RequestLogMiddleware}

    def add_fast_path(
        self, method: str, path: str, handler: PlainHandler, errors: ErrorTable, service: str
    ) -> None:
        if self.fast_path_middleware != {RequestLogMiddleware}:
            raise RuntimeError("register every fast path before wrapping them (wrap_fast_paths)")
        endpoint = PlainEndpoint(handler, errors)
        self.fast_paths[(method.upper(), path)] = RequestLogMiddleware(endpoint, service=service)

    def wrap_fast_paths(self, middleware_class: object, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        """Run `middleware_class` (as `wrap` builds it) on every fast path too, inside its request log."""
        for key, endpoint in list(self.fast_paths.items()):
            if isinstance(endpoint, RequestLogMiddleware):
                endpoint.app = wrap(endpoint.app)
            else:
                self.fast_paths[key] = wrap(endpoint)
        self.fast_path_middleware.add(middleware_class)

    def build_middleware_stack(self) -> ASGIApp:
        skipped = [
            getattr(m.cls, "__name__", repr(m.cls))
            for m in self.user_middleware
            if m.cls not in self.fast_path_middleware
        ]
        if skipped and self.fast_paths:
            paths = ", ".join(f"{method} {path}" for method, path in sorted(self.fast_paths))
            raise RuntimeError(
                f"middleware {', '.join(skipped)} would not run on the fast paths ({paths}): "
                "apply it to them with wrap_fast_paths as well"
            )
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.fast_paths.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


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


def serve(app: Any, host: str, port: int, grace_s: float = 10.0, **options: Any) -> None:
    """Run one of our services under uvicorn the same way everywhere: uvloop + httptools, our JSON
    logging instead of uvicorn's, no access log (RequestLogMiddleware writes one line per request)."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(grace_s),
        **options,
    )
