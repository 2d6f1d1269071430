"""A retried POST (same X-Request-Id, or same image_query_id) never makes a second query or escalation;
a POST that shares a key with an earlier one but names another detector or carries another image is
a 409, never the earlier answer. Escalations the cloud refuses that way stay visible and re-drivable."""

from __future__ import annotations

import concurrent.futures
import secrets

import httpx
import pytest

from tests.edge.conftest import DIGIT, SEVEN, assert_delivered_once, edge_config, wait_until
from tests.support.stack import ADMIN, DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"


def post(
    stack: EdgeStack, image: bytes, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}{IQ_PATH}",
        params={"detector_id": DIGIT, **params},
        content=image,
        headers={**DEVICE, **(headers or {})},
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
    again = post(stack, digits[22][0], image_query_id=iq_id, want_async="true")
    assert first.json()["id"] == again.json()["id"] == iq_id
    assert first.json() == again.json()
    assert_delivered_once(stack, iq_id)


def test_same_request_id_for_another_detector_is_409_not_the_first_answer(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    request_id = "req_uu" + secrets.token_hex(16)
    image = digits[24][0]
    first = post(stack, image, {"X-Request-Id": request_id})
    assert first.status_code == 200, first.text
    other = post(stack, image, {"X-Request-Id": request_id}, detector_id=SEVEN)
    assert other.status_code == 409, other.text
    assert DIGIT in other.json()["detail"] and "X-Request-Id" in other.json()["detail"]
    assert first.json()["id"] not in other.text
    # The first query is untouched and still replayed to its own retries.
    assert post(stack, image, {"X-Request-Id": request_id}).json() == first.json()


def test_same_request_id_with_another_image_is_409(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    request_id = "req_uu" + secrets.token_hex(16)
    first = post(stack, digits[25][0], {"X-Request-Id": request_id})
    assert first.status_code == 200
    other = post(stack, digits[26][0], {"X-Request-Id": request_id})
    assert other.status_code == 409, other.text
    assert "different image" in other.json()["detail"]


def test_same_image_query_id_with_another_image_or_detector_is_409(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq_id = "iq_client" + secrets.token_hex(8)
    first = post(stack, digits[27][0], image_query_id=iq_id, want_async="true")
    assert first.status_code == 200
    other_image = post(stack, digits[28][0], image_query_id=iq_id, want_async="true")
    assert other_image.status_code == 409 and "different image" in other_image.json()["detail"]
    other_detector = post(stack, digits[27][0], image_query_id=iq_id, want_async="true", detector_id=SEVEN)
    assert other_detector.status_code == 409 and DIGIT in other_detector.json()["detail"]
    assert_delivered_once(stack, iq_id)
    assert stack.cloud.state.escalations[iq_id]["detector_id"] == DIGIT


def test_long_request_ids_that_share_their_first_128_characters_are_different_requests(
    stack: EdgeStack, digits
) -> None:
    stack.put_config(edge_config())
    shared = "req_" + secrets.token_hex(62)  # 128 characters
    one, two = shared + "a" * 12, shared + "b" * 12
    image = digits[29][0]
    first = post(stack, image, {"X-Request-Id": one})
    second = post(stack, image, {"X-Request-Id": two})
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert post(stack, image, {"X-Request-Id": one}).json()["id"] == first.json()["id"]
    assert post(stack, image, {"X-Request-Id": two}).json()["id"] == second.json()["id"]


def outbox_state(stack: EdgeStack, iq_id: str) -> str | None:
    return next((state for row_id, _, state in stack.outbox_rows() if row_id == iq_id), None)


def test_an_escalation_the_cloud_refuses_with_409_is_dead_visible_and_can_be_redriven(
    stack: EdgeStack, digits
) -> None:
    stack.put_config(edge_config())
    stack.cloud.state.fail_escalations_with = 409
    try:
        iq_id = "iq_client" + secrets.token_hex(8)
        assert post(stack, digits[30][0], image_query_id=iq_id, want_async="true").status_code == 200
        wait_until(lambda: outbox_state(stack, iq_id) == "dead", what="the refused escalation to die")
        status = httpx.get(f"{stack.gateway_url}/status", headers=ADMIN, timeout=10).json()
        assert status["outbox"]["dead"] >= 1
        metrics = httpx.get(f"{stack.gateway_url}/metrics", headers=ADMIN, timeout=10).text
        assert "edge_outbox_dead 0.0" not in metrics and 'kind="conflict"' in metrics
    finally:
        stack.cloud.state.fail_escalations_with = None
    # Once the cause is fixed in the cloud, an operator sends it again.
    redriven = httpx.post(
        f"{stack.gateway_url}/outbox/redrive", params={"image_query_id": iq_id}, headers=ADMIN, timeout=10
    )
    assert redriven.status_code == 200 and redriven.json()["redriven"] == 1
    wait_until(lambda: iq_id in stack.cloud.state.escalations, what="the re-driven escalation")
    wait_until(lambda: outbox_state(stack, iq_id) is None, what="the outbox entry to leave")
    bad = httpx.post(
        f"{stack.gateway_url}/outbox/redrive", params={"image_query_id": "nope"}, headers=ADMIN, timeout=10
    )
    assert bad.status_code == 400 and bad.json()["detail"]
