"""FastPathApp: hot routes skip FastAPI's stack but keep its error table, request id and access log."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from starlette.responses import Response

from common.http import (
    FastPathApp,
    Receive,
    RequestLogMiddleware,
    Scope,
    install_error_handlers,
    json_error,
    query_dict,
    read_body,
    scope_request_id,
)


class Refused(Exception):
    pass


class NotHere(Refused):
    pass


ERRORS = {Refused: lambda exc: json_error(400, f"refused: {exc}", {"X-No-Fallback": "1"})}
router = APIRouter()
declared_calls: list[str] = []


@router.post("/hot", operation_id="hot")
async def hot_declared() -> dict[str, str]:
    declared_calls.append("hot")
    return {"via": "fastapi"}


@router.get("/cold")
async def cold() -> dict[str, str]:
    return {"via": "fastapi"}


async def hot(scope: Scope, receive: Receive) -> Response:
    query = query_dict(scope)
    body = await read_body(receive)
    if query.get("fail") == "mapped":
        raise NotHere("no")
    if query.get("fail") == "crash":
        raise RuntimeError("boom")
    return Response(
        b'{"via":"fast","body":%d,"rid":"%s"}' % (len(body), scope_request_id(scope).encode()),
        media_type="application/json",
    )


def make_app() -> FastPathApp:
    app = FastPathApp()
    app.include_router(router)
    install_error_handlers(app, ERRORS)
    app.add_middleware(RequestLogMiddleware, service="test")
    app.add_fast_path("POST", "/hot", hot, ERRORS, service="test")
    return app


@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://t")


async def test_exact_method_and_path_take_the_fast_path(client: httpx.AsyncClient) -> None:
    resp = await client.post("/hot", content=b"12345", headers={"x-request-id": "req_abc"})
    assert resp.status_code == 200
    assert resp.json() == {"via": "fast", "body": 5, "rid": "req_abc"}
    assert resp.headers["x-request-id"] == "req_abc"
    assert declared_calls == []


async def test_everything_else_goes_through_fastapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/cold")).json() == {"via": "fastapi"}
    assert (await client.get("/hot")).status_code == 405
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "post" in paths["/hot"]


async def test_errors_use_the_same_table_and_a_bare_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    mapped = await client.post("/hot", params={"fail": "mapped"}, content=b"x")
    assert mapped.status_code == 400 and mapped.json() == {"detail": "refused: no"}
    assert mapped.headers["x-no-fallback"] == "1" and mapped.headers["x-request-id"].startswith("req_")
    with caplog.at_level(logging.INFO):
        crash = await client.post("/hot", params={"fail": "crash"}, content=b"x")
    assert crash.status_code == 500 and "boom" not in crash.text
    assert crash.json()["detail"].startswith("internal error")
    access = [r for r in caplog.records if r.name == "test.access"]
    assert access and access[-1].fields["status"] == 500  # type: ignore[attr-defined]
    assert any(r.name == "http" and r.exc_info for r in caplog.records)


async def test_one_access_log_line_per_fast_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await client.post("/hot", content=b"x", headers={"x-request-id": "req_one"})
    lines = [r for r in caplog.records if r.name == "test.access"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "req_one" and fields["path"] == "/hot" and fields["status"] == 200


async def test_chunked_body_is_read_whole() -> None:
    app = make_app()
    sent: list[dict[str, object]] = []
    chunks = [b"ab", b"cd", b"e"]

    async def receive() -> dict[str, object]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/hot", "query_string": b"", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200 and b'"body":5' in sent[1]["body"]  # type: ignore[operator]


class Stamp:
    """A middleware that marks every answer it sees."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Any) -> None:
        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_a_middleware_added_but_not_applied_to_the_fast_paths_stops_the_app_from_starting() -> None:
    app = make_app()
    app.add_middleware(Stamp)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    # Any request builds the middleware stack, the fast path's included (it does so on lifespan too).
    with pytest.raises(RuntimeError, match=r"Stamp would not run on the fast paths \(POST /hot\)"):
        await client.get("/cold")


async def test_a_middleware_applied_to_the_fast_paths_runs_on_both() -> None:
    app = make_app()
    app.add_middleware(Stamp)
    app.wrap_fast_paths(Stamp, Stamp)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    fast = await client.post("/hot", content=b"x")
    slow = await client.get("/cold")
    assert fast.json()["via"] == "fast" and slow.json() == {"via": "fastapi"}
    assert fast.headers["x-stamp"] == slow.headers["x-stamp"] == "1"
    # Inside the fast path's own request log, as on the FastAPI side.
    assert fast.headers["x-request-id"].startswith("req_")
    with pytest.raises(RuntimeError, match="before wrapping"):
        app.add_fast_path("POST", "/later", hot, ERRORS, service="test")
