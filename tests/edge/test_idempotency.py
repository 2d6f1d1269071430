"""A retried POST (same X-Request-Id, or same image_query_id) never makes a second query or escalation."""

from __future__ import annotations

import concurrent.futures
import secrets

import httpx

from tests.edge.conftest import DIGIT, assert_delivered_once, edge_config
from tests.support.stack import EdgeStack

IQ_PATH = "/device-api/v1/image-queries"


def post(
    stack: EdgeStack, image: bytes, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}{IQ_PATH}",
        params={"detector_id": DIGIT, **params},
        content=image,
        headers=headers,
        timeout=15,
    )


def test_same_request_id_returns_the_same_query_and_escalates_once(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    request_id = "req_uu" + secrets.token_hex(16)
    image = digits[20][0]
    # The SDK re-sends a POST with the same X-Request-Id up to 4 times after a 5xx.
    answers = [post(stack, image, {"X-Request-Id": request_id}, confidence_threshold="1.0") for _ in range(4)]
    assert all(a.status_code == 200 for a in answers)
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    (iq_id,) = ids
    assert_delivered_once(stack, iq_id)


def test_concurrent_retries_with_one_request_id_make_one_query(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    request_id = "req_uu" + secrets.token_hex(16)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: post(
                    stack, digits[21][0], {"X-Request-Id": request_id}, confidence_threshold="1.0"
                ),
                range(8),
            )
        )
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    (iq_id,) = ids
    assert_delivered_once(stack, iq_id)


def test_repeated_image_query_id_is_honoured_and_idempotent(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq_id = "iq_client" + secrets.token_hex(8)
    first = post(stack, digits[22][0], image_query_id=iq_id, want_async="true")
    again = post(stack, digits[23][0], image_query_id=iq_id, want_async="true")
    assert first.json()["id"] == again.json()["id"] == iq_id
    assert first.json() == again.json()
    assert_delivered_once(stack, iq_id)
