"""`POST /api/v1/escalations`: what an edge's outbox sends, taken exactly once however often it arrives."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from common.wire.device_api import EdgeDiagnostics, ImageQuery, Result, ResultType, utc_now_iso
from common.wire.escalation import MAX_BATCH_ESCALATIONS, EscalationCreate, EscalationReason
from tests.cloud.test_device_api import db_scalar, gif, make_detector
from tests.support.cloud import CloudServer

pytestmark = pytest.mark.in_process

if TYPE_CHECKING:
    from tests.support.cloud import TestDatabase

ESC_PATH = "/api/v1/escalations"


def escalation(
    detector_id: str,
    reason: EscalationReason = EscalationReason.LOW_CONFIDENCE,
    confidence: float = 0.6,
    done: bool = False,
) -> EscalationCreate:
    iq_id = "iq_" + secrets.token_hex(13)
    iq = ImageQuery(
        id=iq_id,
        created_at=utc_now_iso(),
        query="Is this a seven?",
        detector_id=detector_id,
        result_type=ResultType.BINARY,
        result=Result(result_type=ResultType.BINARY, confidence=confidence, label="YES", from_edge=True),
        patience_time=20.0,
        confidence_threshold=0.9,
        metadata={"camera": "line-1"},
        done_processing=done,
        intellioptics=EdgeDiagnostics(
            raw_confidence=0.7,
            in_domain_score=0.8,
            model_version="v1",
            escalated=True,
            escalation_reason=reason,
        ),
    )
    return EscalationCreate(
        image_query_id=iq_id,
        detector_id=detector_id,
        reason=reason,
        image_query=iq,
        image_content_type="image/jpeg",
        edge_id="edge-test",
        created_at=iq.created_at,
    )


def post(http: httpx.Client, payload: EscalationCreate | str, image: bytes, **kwargs: Any) -> httpx.Response:
    """The request the edge's OutboxSender makes: a JSON part without a filename and a file part."""
    text = payload if isinstance(payload, str) else payload.model_dump_json()
    files: dict[str, tuple[str | None, bytes | str, str]] = {
        "escalation": (None, text, "application/json"),
        "image": ("image", image, "image/jpeg"),
    }
    return http.post(ESC_PATH, files=files, **kwargs)


@pytest.fixture(scope="module")
def http(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


@pytest.fixture
def jpeg(digits: list[tuple[bytes, int]]) -> bytes:
    return digits[1][0]


def count(db: TestDatabase, table: str, image_query_id: str) -> int:
    return int(db_scalar(db, f"SELECT count(*) FROM {table} WHERE image_query_id = ?", image_query_id))


def test_twenty_concurrent_copies_make_one_query_one_escalation_one_review_item(
    cloud: CloudServer, http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    payload = escalation(det["id"])

    def send(_: int) -> httpx.Response:
        with cloud.client() as own:  # separate connections, as separate sender attempts would be
            return post(own, payload, jpeg)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(send, range(20)))
    assert all(r.is_success for r in responses), [(r.status_code, r.text) for r in responses]
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert all(r.json()["image_query_id"] == payload.image_query_id for r in responses)
    assert sum(r.json()["created"] for r in responses) == 1

    assert db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE id = ?", payload.image_query_id) == 1
    assert count(cloud_db, "escalations", payload.image_query_id) == 1
    assert count(cloud_db, "review_items", payload.image_query_id) == 1
    assert (
        db_scalar(cloud_db, "SELECT origin FROM image_queries WHERE id = ?", payload.image_query_id) == "edge"
    )
    reason = db_scalar(
        cloud_db, "SELECT reason FROM review_items WHERE image_query_id = ?", payload.image_query_id
    )
    assert reason == "low_confidence"
    uncertainty = db_scalar(
        cloud_db, "SELECT uncertainty FROM review_items WHERE image_query_id = ?", payload.image_query_id
    )
    assert uncertainty == pytest.approx(0.4)

    iq = http.get(f"/device-api/v1/image-queries/{payload.image_query_id}").json()
    assert iq["result"]["label"] == "YES" and iq["result"]["confidence"] == 0.6 and iq["result"]["from_edge"]
    assert iq["done_processing"] is False and iq["metadata"] == {"camera": "line-1"}
    assert iq["intellioptics"]["in_domain_score"] == 0.8 and iq["intellioptics"]["model_version"] == "v1"
    assert http.get(f"/device-api/v1/image-queries/{payload.image_query_id}/image").content == jpeg
    assert http.get("/device-api/v1/image-queries", params={"detector_id": det["id"]}).json()["count"] == 1


def test_a_resend_after_the_ack_is_acknowledged_again(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    payload = escalation(det["id"])
    first = post(http, payload, jpeg)
    assert first.status_code == 201 and first.json() == {
        "image_query_id": payload.image_query_id,
        "created": True,
    }
    again = post(http, payload, jpeg)
    assert again.status_code == 200 and again.json()["created"] is False
    assert count(cloud_db, "escalations", payload.image_query_id) == 1


def test_an_audit_is_queued_and_keeps_the_edges_final_answer(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    payload = escalation(det["id"], EscalationReason.AUDIT, confidence=0.97, done=True)
    assert post(http, payload, jpeg).status_code == 201
    assert db_scalar(
        cloud_db, "SELECT reason FROM review_items WHERE image_query_id = ?", payload.image_query_id
    ) == ("audit")
    iq = http.get(f"/device-api/v1/image-queries/{payload.image_query_id}").json()
    assert iq["done_processing"] is True and iq["result"]["confidence"] == 0.97


def test_a_query_the_cloud_already_answered_by_fallback_gets_its_escalation_without_a_copy(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    payload = escalation(det["id"], EscalationReason.WANT_ASYNC)
    fallback = http.post(
        "/device-api/v1/image-queries",
        params={"detector_id": det["id"], "image_query_id": payload.image_query_id, "human_review": "NEVER"},
        content=jpeg,
    )
    assert fallback.status_code == 200
    assert post(http, payload, jpeg).status_code == 201
    assert (
        db_scalar(cloud_db, "SELECT origin FROM image_queries WHERE id = ?", payload.image_query_id)
        == "cloud"
    )
    assert count(cloud_db, "escalations", payload.image_query_id) == 1
    assert count(cloud_db, "review_items", payload.image_query_id) == 1


def test_an_id_held_for_another_detector_is_409_and_nothing_is_taken(
    http: httpx.Client, cloud_db: TestDatabase, digits: list[tuple[bytes, int]]
) -> None:
    det, other = make_detector(http), make_detector(http)
    first = escalation(det["id"])
    assert post(http, first, digits[2][0]).status_code == 201
    # Another edge (or a buggy one) escalates the same image query id under another detector.
    stranger = escalation(other["id"]).model_copy(
        update={
            "image_query_id": first.image_query_id,
            "image_query": escalation(other["id"]).image_query.model_copy(
                update={"id": first.image_query_id}
            ),
        }
    )
    resp = post(http, stranger, digits[3][0])
    assert resp.status_code == 409, resp.text
    assert det["id"] in resp.json()["detail"]
    assert http.get(f"/device-api/v1/image-queries/{first.image_query_id}/image").content == digits[2][0]
    assert count(cloud_db, "escalations", first.image_query_id) == 1
    assert db_scalar(cloud_db, "SELECT count(*) FROM review_items WHERE detector_id = ?", other["id"]) == 0


def test_an_id_held_with_another_image_is_409(
    http: httpx.Client, cloud_db: TestDatabase, digits: list[tuple[bytes, int]]
) -> None:
    det = make_detector(http)
    payload = escalation(det["id"])
    assert post(http, payload, digits[4][0]).status_code == 201
    resp = post(http, payload, digits[5][0])
    assert resp.status_code == 409 and "different image" in resp.json()["detail"]
    assert post(http, payload, digits[4][0]).status_code == 200  # the true resend is still acknowledged
    assert http.get(f"/device-api/v1/image-queries/{payload.image_query_id}/image").content == digits[4][0]


def test_a_query_the_cloud_holds_by_fallback_for_another_detector_is_409(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det, other = make_detector(http), make_detector(http)
    payload = escalation(det["id"], EscalationReason.WANT_ASYNC)
    fallback = http.post(
        "/device-api/v1/image-queries",
        params={"detector_id": other["id"], "image_query_id": payload.image_query_id},
        content=jpeg,
    )
    assert fallback.status_code == 200
    resp = post(http, payload, jpeg)
    assert resp.status_code == 409 and other["id"] in resp.json()["detail"]
    assert count(cloud_db, "escalations", payload.image_query_id) == 0


def test_metadata_over_the_shared_limits_is_400(http: httpx.Client, jpeg: bytes) -> None:
    det = make_detector(http)
    deep: dict[str, Any] = {"v": 1}
    for _ in range(8):
        deep = {"a": deep}
    for metadata in (deep, {"k": "x" * 1100}):
        payload = escalation(det["id"])
        payload = payload.model_copy(
            update={"image_query": payload.image_query.model_copy(update={"metadata": metadata})}
        )
        resp = post(http, payload, jpeg)
        assert resp.status_code == 400 and "metadata" in resp.json()["detail"]


def test_unknown_detector_is_404_naming_it(http: httpx.Client, jpeg: bytes) -> None:
    unknown = "det_" + "Q" * 27
    resp = post(http, escalation(unknown), jpeg)
    assert resp.status_code == 404 and unknown in resp.json()["detail"]


def test_bad_requests_are_4xx_so_the_edge_keeps_them_as_dead(http: httpx.Client, jpeg: bytes) -> None:
    det = make_detector(http)
    good = escalation(det["id"])
    mismatched = good.model_copy(update={"detector_id": "det_" + "M" * 27})
    wrong_reason = json.loads(good.model_dump_json()) | {"reason": "because"}
    cases: list[tuple[str, httpx.Response, int]] = [
        ("json body, not multipart", http.post(ESC_PATH, json=json.loads(good.model_dump_json())), 400),
        (
            "image part missing",
            http.post(ESC_PATH, files={"escalation": (None, good.model_dump_json(), "application/json")}),
            400,
        ),
        (
            "escalation part missing",
            http.post(ESC_PATH, files={"image": ("image", jpeg, "image/jpeg")}),
            400,
        ),
        ("escalation not json", post(http, "{not json", jpeg), 400),
        ("escalation misses keys", post(http, '{"image_query_id": "iq_x"}', jpeg), 400),
        ("unknown reason", post(http, json.dumps(wrong_reason), jpeg), 400),
        ("ids disagree", post(http, mismatched, jpeg), 400),
        (
            "patience out of range",
            post(http, good.model_dump_json().replace('"patience_time":20.0', '"patience_time":1e999'), jpeg),
            400,
        ),
        ("image is a gif", post(http, escalation(det["id"]), gif()), 415),
        ("image is text", post(http, escalation(det["id"]), b"hello"), 415),
        ("image truncated", post(http, escalation(det["id"]), jpeg[: len(jpeg) // 2]), 400),
        ("image empty", post(http, escalation(det["id"]), b""), 400),
        (
            "broken multipart",
            http.post(
                ESC_PATH,
                content=b"--xyz\r\ngarbage",
                headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            ),
            400,
        ),
        (
            "multipart without a boundary",
            http.post(ESC_PATH, content=b"--xyz\r\n", headers={"Content-Type": "multipart/form-data"}),
            400,
        ),
    ]
    for name, resp, status in cases:
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert resp.json()["detail"], name


def test_missing_or_wrong_token_is_401(cloud: CloudServer, jpeg: bytes) -> None:
    with cloud.client() as http:
        det = make_detector(http)
    for token in (None, "io_" + "w" * 40):
        with cloud.client(token=token) as client:
            resp = post(client, escalation(det["id"]), jpeg)
            assert resp.status_code == 401 and resp.json()["detail"]


def test_an_impossible_edge_clock_is_replaced_by_the_time_of_arrival(http: httpx.Client, jpeg: bytes) -> None:
    det = make_detector(http)
    payload = escalation(det["id"])
    future = "9999-12-31T23:59:59Z"
    payload = payload.model_copy(
        update={
            "created_at": future,
            "image_query": payload.image_query.model_copy(update={"created_at": future}),
        }
    )
    assert post(http, payload, jpeg).status_code == 201
    iq = http.get(f"/device-api/v1/image-queries/{payload.image_query_id}").json()
    assert iq["created_at"][:4] != "9999"


BATCH_PATH = "/api/v1/escalations/batch"


def post_batch(http: httpx.Client, entries: list[tuple[EscalationCreate | str, bytes]]) -> httpx.Response:
    """The request the edge's OutboxSender makes for a backlog: escalation and image parts alternating."""
    files: list[tuple[str, tuple[str | None, bytes | str, str]]] = []
    for payload, image in entries:
        text = payload if isinstance(payload, str) else payload.model_dump_json()
        files += [("escalation", (None, text, "application/json")), ("image", ("image", image, "image/jpeg"))]
    return http.post(BATCH_PATH, files=files)


def test_a_batch_answers_each_entry_as_its_own_request_would(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes, digits: list[tuple[bytes, int]]
) -> None:
    det = make_detector(http)
    held = escalation(det["id"])
    assert post(http, held, jpeg).status_code == 201
    other_image = escalation(det["id"]).model_copy(update={"image_query_id": held.image_query_id})
    other_image = other_image.model_copy(
        update={"image_query": other_image.image_query.model_copy(update={"id": held.image_query_id})}
    )
    fresh = [escalation(det["id"]) for _ in range(3)]
    unknown = escalation("det_" + "Q" * 27)
    entries: list[tuple[EscalationCreate | str, bytes]] = [
        (fresh[0], jpeg),
        (held, jpeg),  # a resend
        ('{"image_query_id": "iq_half", "detector_id": 1}', jpeg),
        (fresh[1], b"hello"),
        (unknown, jpeg),
        (other_image, digits[2][0]),
        (fresh[2], jpeg),
    ]
    resp = post_batch(http, entries)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["index"] for r in results] == list(range(len(entries)))
    assert [r["status"] for r in results] == [201, 200, 400, 415, 404, 409, 201]
    assert [r["created"] for r in results] == [True, False, False, False, False, False, True]
    assert results[2]["image_query_id"] == "iq_half" and "detector_id" in results[2]["detail"]
    assert (
        results[4]["image_query_id"] == unknown.image_query_id and unknown.detector_id in results[4]["detail"]
    )
    assert all(r["detail"] for r in results if r["status"] >= 400)
    # What was taken is there once, with its review item; what was refused left nothing behind.
    for payload in (fresh[0], fresh[2], held):
        assert count(cloud_db, "escalations", payload.image_query_id) == 1
        assert count(cloud_db, "review_items", payload.image_query_id) == 1
    for payload in (fresh[1], unknown):
        assert (
            db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE id = ?", payload.image_query_id)
            == 0
        )
    # The same batch again: every entry the cloud took is a 200 now, the refused ones refused again.
    again = [r["status"] for r in post_batch(http, entries).json()["results"]]
    assert again == [200, 200, 400, 415, 404, 409, 200]


def test_a_batch_must_be_pairs_of_parts_and_at_most_the_limit(http: httpx.Client, jpeg: bytes) -> None:
    det = make_detector(http)
    good = escalation(det["id"]).model_dump_json()
    lone = http.post(BATCH_PATH, files=[("escalation", (None, good, "application/json"))])
    assert lone.status_code == 400 and "one 'image' part per entry" in lone.json()["detail"]
    extra = http.post(
        BATCH_PATH,
        files=[
            ("escalation", (None, good, "application/json")),
            ("image", ("image", jpeg, "image/jpeg")),
            ("note", (None, "hi", "text/plain")),
        ],
    )
    assert extra.status_code == 400
    assert http.post(BATCH_PATH, json=[good]).status_code == 400
    too_many = post_batch(http, [(escalation(det["id"]), jpeg) for _ in range(MAX_BATCH_ESCALATIONS + 1)])
    assert too_many.status_code == 400 and too_many.json()["detail"]
    assert (
        post_batch(http, [(escalation(det["id"]), jpeg) for _ in range(MAX_BATCH_ESCALATIONS)]).status_code
        == 200
    )
