"""A camera (or anyone on the LAN) that declares a body and sends less of it holds no edge-api
connection past the body deadline: 408, then the connection is closed; a declared body over the cap
is refused before it is read (413)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.processes import free_port
from tests.edge.conftest import edge_config
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.raw_http import raw_exchange
from tests.support.stack import EdgeStack

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def slow_stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    cloud = FakeCloud(free_port()).start()
    s = EdgeStack(
        tmp_path_factory.mktemp("edge-slow"), demo_models, cloud, edge_env={"EDGE_BODY_TIMEOUT_S": "1"}
    )
    try:
        s.start(edge_config())
        yield s
    finally:
        s.stop()
        cloud.stop()


def submit_head(content_length: int) -> bytes:
    return (
        "POST /device-api/v1/image-queries?detector_id=det_2vTiRPqkGrrjdpo6zlmF3S6KQzN HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nx-api-token: {DEVICE_TOKEN}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def test_a_body_that_stops_short_gets_408_and_the_connection_closes(slow_stack: EdgeStack) -> None:
    received, closed = raw_exchange(slow_stack.edge_port, submit_head(1000) + b"0123456789")
    assert received.startswith(b"HTTP/1.1 408 "), received[:300]
    assert closed


def test_a_declared_body_over_the_cap_is_refused_unread(slow_stack: EdgeStack) -> None:
    received, closed = raw_exchange(slow_stack.edge_port, submit_head(10**10))
    assert received.startswith(b"HTTP/1.1 413 "), received[:300]
    assert closed
