"""edge-api's HTTP/1.1 client of the inference service, against a scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from edge.api.core.inference_client import (
    InferenceClient,
    InferenceHttp,
    InferenceUnavailableError,
    NoModelError,
    ProtocolError,
    RejectedImageError,
    _parse_response,
)

Reply = Callable[[bytes, asyncio.StreamWriter], bytes | None]


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra) + body


class Server:
    """Reads one request at a time (head + Content-Length body) and answers what `reply` returns.

    `reply` returning None closes the connection without answering.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request, writer)
                if answer is None:
                    writer.close()
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[tuple[Server, str]]:
    server = Server(reply)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        for w in server.writers:
            w.close()
        srv.close()


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async with serving(lambda req, w: ok(req.rsplit(b"\r\n\r\n", 1)[1])) as (server, url):
        http = InferenceHttp(url, timeout_s=5)
        for i in range(3):
            status, body = await http.request("POST", "/infer?detector_id=det_x", b"img%d" % i)
            assert (status, body) == (200, b"img%d" % i)
        await http.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /infer?detector_id=det_x HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:" in first and b"Content-Length: 4\r\n" in first


async def test_concurrent_calls_use_separate_connections() -> None:
    async def slow_ok(req: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        w.write(ok())

    def reply(req: bytes, w: asyncio.StreamWriter) -> bytes:
        asyncio.get_running_loop().create_task(slow_ok(req, w))
        return b""

    async with serving(reply) as (server, url):
        http = InferenceHttp(url, timeout_s=5)
        answers = await asyncio.gather(*(http.request("GET", "/models") for _ in range(4)))
        assert all(a == (200, b'{"ok":true}') for a in answers)
        await http.close()
    assert server.connections == 4


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with serving(lambda req, w: ok()) as (server, url):
        http = InferenceHttp(url, timeout_s=5)
        assert (await http.request("GET", "/health/live"))[0] == 200
        for w in server.writers:
            w.close()
        await asyncio.sleep(0.05)
        assert (await http.request("GET", "/health/live"))[0] == 200
        await http.close()
    assert server.connections == 2


async def test_a_reused_connection_closed_before_answering_is_retried_once_fresh() -> None:
    calls = 0

    def reply(req: bytes, w: asyncio.StreamWriter) -> bytes | None:
        nonlocal calls
        calls += 1
        return None if calls == 2 else ok()  # the second request finds its connection dying

    async with serving(reply) as (server, url):
        http = InferenceHttp(url, timeout_s=5)
        assert (await http.request("POST", "/infer", b"a"))[0] == 200
        assert (await http.request("POST", "/infer", b"b"))[0] == 200
        await http.close()
    assert calls == 3 and server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_fails() -> None:
    async with serving(lambda req, w: None) as (_, url):
        client = InferenceClient(InferenceHttp(url, timeout_s=5))
        with pytest.raises(InferenceUnavailableError):
            await client.infer("det_x", b"img")


async def test_connection_close_and_chunked_answers() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    answers = iter([ok(b"one", b"connection: close\r\n"), chunked, ok(b"three")])
    async with serving(lambda req, w: next(answers)) as (server, url):
        http = InferenceHttp(url, timeout_s=5)
        assert await http.request("GET", "/a") == (200, b"one")
        assert await http.request("GET", "/b") == (200, b"abcdefg")
        assert await http.request("GET", "/c") == (200, b"three")
        await http.close()
    assert server.connections == 2


async def test_timeout_and_refused_connection_are_unavailable() -> None:
    async def never(req: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    def reply(req: bytes, w: asyncio.StreamWriter) -> bytes:
        asyncio.get_running_loop().create_task(never(req, w))
        return b""

    async with serving(reply) as (_, url):
        client = InferenceClient(InferenceHttp(url, timeout_s=0.2))
        with pytest.raises(InferenceUnavailableError, match="TimeoutError"):
            await client.infer("det_x", b"img")
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    client = InferenceClient(InferenceHttp(f"http://127.0.0.1:{port}", timeout_s=1))
    assert await client.live() is False


async def test_statuses_map_to_the_edge_errors() -> None:
    def error(status: int) -> bytes:
        body = b'{"detail":"why %d"}' % status
        return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(body)) + body

    statuses = iter([415, 404, 503])
    async with serving(lambda req, w: error(next(statuses))) as (_, url):
        client = InferenceClient(InferenceHttp(url, timeout_s=5))
        with pytest.raises(RejectedImageError) as rejected:
            await client.infer("det_x", b"img")
        assert rejected.value.status == 415 and str(rejected.value) == "why 415"
        with pytest.raises(NoModelError, match="why 404"):
            await client.infer("det_x", b"img")
        with pytest.raises(InferenceUnavailableError, match="inference answered 503: why 503"):
            await client.infer("det_x", b"img")


def test_response_parser_waits_for_the_whole_answer_and_rejects_garbage() -> None:
    whole = ok(b"0123456789")
    for cut in range(len(whole)):
        assert _parse_response(bytearray(whole[:cut]), eof=False) is None
    assert _parse_response(bytearray(whole), eof=False) == (200, b"0123456789", True)
    assert _parse_response(bytearray(b"HTTP/1.1 204 No Content\r\n\r\n"), eof=False) == (204, b"", True)
    no_length = b"HTTP/1.1 200 OK\r\n\r\nrest"
    assert _parse_response(bytearray(no_length), eof=False) is None
    assert _parse_response(bytearray(no_length), eof=True) == (200, b"rest", False)
    with pytest.raises(ProtocolError):
        _parse_response(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"), eof=False)
