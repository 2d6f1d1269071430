"""BodyLimitMiddleware: declared lengths over the cap are refused unread, streamed bodies stop at the
cap, slow bodies get 408, and every answer sent before the body ended closes the connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import httpx
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from common.body_limits import BodyLimitMiddleware, BodyLimits, limit_bodies, rule
from common.http import FastPathApp, Message, Receive, RequestLogMiddleware, Scope, Send, read_body

LIMITS = BodyLimits(max_bytes=100, timeout_s=0.2, rules=(rule(r"/upload(/.*)?", 1000, 0.2),))


def http_scope(path: str = "/echo", headers: Sequence[tuple[bytes, bytes]] = ()) -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": list(headers), "query_string": b""}


class Echo:
    """Reads the whole body (as routes do) and answers with its length; records what it saw."""

    def __init__(self) -> None:
        self.called = False
        self.saw_disconnect = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect = True
                raise RuntimeError("client went away")  # what a route does with a cut-off body
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


class Ignores:
    """Answers without reading the body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class Client:
    """Feeds chunks (with optional pauses) to the app and collects what it sends."""

    def __init__(self, chunks: Sequence[bytes], pause_s: float = 0.0, stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.pause_s = pause_s
        self.stall = stall  # after the chunks, send nothing more (a client that stopped mid-body)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.chunks:
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            chunk = self.chunks.pop(0)
            more = bool(self.chunks) or self.stall
            return {"type": "http.request", "body": chunk, "more_body": more}
        if self.stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        status: int = starts[0]["status"]
        return status

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start.get("headers", []))

    @property
    def detail(self) -> str:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        detail: str = json.loads(body)["detail"]
        return detail


async def run(app: BodyLimitMiddleware, scope: Scope, client: Client) -> None:
    await asyncio.wait_for(app(scope, client.receive, client.send), timeout=5)


async def test_a_declared_length_over_the_cap_is_refused_before_the_app_reads_anything() -> None:
    inner = Echo()
    client = Client([b"x" * 10])
    await run(BodyLimitMiddleware(inner, LIMITS), http_scope(headers=[(b"content-length", b"101")]), client)
    assert client.status == 413 and not inner.called
    assert client.headers[b"connection"] == b"close"
    assert "101 bytes" in client.detail and "100" in client.detail


async def test_a_body_within_the_cap_reaches_the_app_whole() -> None:
    inner = Echo()
    client = Client([b"x" * 60, b"y" * 40])
    await run(BodyLimitMiddleware(inner, LIMITS), http_scope(headers=[(b"content-length", b"100")]), client)
    assert client.status == 200 and client.sent[-1]["body"] == b"100"
    assert b"connection" not in client.headers  # the body was read: the connection may stay


async def test_a_chunked_body_is_cut_off_at_the_cap_with_413() -> None:
    inner = Echo()
    client = Client([b"x" * 60, b"y" * 60, b"z" * 60])
    scope = http_scope(headers=[(b"transfer-encoding", b"chunked")])
    await run(BodyLimitMiddleware(inner, LIMITS), scope, client)
    assert inner.saw_disconnect  # the app stopped reading at the cap, its error answer held back
    assert client.status == 413 and client.headers[b"connection"] == b"close"
    assert "over the limit of 100 bytes" in client.detail


async def test_a_client_that_stops_sending_gets_408_and_the_connection_closes() -> None:
    inner = Echo()
    client = Client([b"x" * 10], stall=True)
    scope = http_scope(headers=[(b"content-length", b"100")])
    await run(BodyLimitMiddleware(inner, LIMITS), scope, client)
    assert inner.saw_disconnect
    assert client.status == 408 and client.headers[b"connection"] == b"close"
    assert "did not arrive within 0.2 s" in client.detail


async def test_the_deadline_covers_the_whole_body_not_each_chunk() -> None:
    """A trickle that is never idle for long still has to finish in time."""
    client = Client([b"x"] * 50, pause_s=0.02)
    scope = http_scope(headers=[(b"content-length", b"50")])
    await run(BodyLimitMiddleware(Echo(), LIMITS), scope, client)
    assert client.status == 408


async def test_paths_with_a_rule_get_its_cap() -> None:
    client = Client([b"x" * 500])
    scope = http_scope("/upload/big", headers=[(b"content-length", b"500")])
    await run(BodyLimitMiddleware(Echo(), LIMITS), scope, client)
    assert client.status == 200
    assert LIMITS.for_path("/uploads") == (100, 0.2)  # a rule matches whole paths only


async def test_an_answer_sent_before_the_body_was_read_closes_the_connection() -> None:
    client = Client([b"x" * 10], stall=True)
    scope = http_scope(headers=[(b"content-length", b"100")])
    await run(BodyLimitMiddleware(Ignores(), LIMITS), scope, client)
    assert client.status == 204 and client.headers[b"connection"] == b"close"


async def test_requests_without_a_body_are_untouched() -> None:
    client = Client([])
    await run(BodyLimitMiddleware(Ignores(), LIMITS), http_scope(), client)
    assert client.status == 204 and b"connection" not in client.headers


async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def drop(message: Message) -> None:
        return None

    await BodyLimitMiddleware(app, LIMITS)({"type": "lifespan"}, nothing, drop)
    assert seen == ["lifespan"]


async def test_limit_bodies_covers_routes_and_fast_paths_and_keeps_the_request_log() -> None:
    app = FastPathApp()

    @app.post("/routed")
    async def routed(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    async def hot(scope: Scope, receive: Receive) -> Response:
        return JSONResponse({"size": len(await read_body(receive))})

    app.add_middleware(RequestLogMiddleware, service="test")
    app.add_fast_path("POST", "/hot", hot, {}, service="test")
    limit_bodies(app, BodyLimits(max_bytes=10, timeout_s=5))
    assert isinstance(app.fast_paths[("POST", "/hot")], RequestLogMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for path in ("/routed", "/hot"):
            assert (await http.post(path, content=b"x" * 10)).json() == {"size": 10}
            big = await http.post(path, content=b"x" * 11)
            assert big.status_code == 413 and big.headers["connection"] == "close", path
            assert "x-request-id" in big.headers  # the request log saw (and logged) the refusal


def test_plain_fastapi_apps_get_the_middleware_too() -> None:
    app = FastAPI()
    limit_bodies(app, LIMITS)
    innermost: object = app.user_middleware[-1].cls
    assert innermost is BodyLimitMiddleware
