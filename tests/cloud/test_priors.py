"""No dead start: a detector without a usable model answers with its label prior (source ALGORITHM)
and still sends the query to people, in the cloud and, through the prior route, on its edges; the
unmodified `groundlight` SDK gets an answer from a brand-new detector."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from groundlight import Groundlight
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import LocalBlobStore
from cloud.app.db.models import Detector, LabelSource
from common.bundle import DetectorMode
from common.prior import label_prior
from common.wire.escalation import EscalationReason
from common.wire.priors import DetectorPrior
from tests.cloud.test_device_api import db_scalar
from tests.cloud.test_escalations import escalation
from tests.cloud.test_escalations import post as post_escalation
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.cloud_factories import png
from tests.support.cloud_factories_registry import (
    add_image_query,
    add_label,
    ensure_detector,
    run_in_db,
    token_for,
)

if TYPE_CHECKING:
    from tests.support.cloud import TestDatabase

IQ_PATH = "/device-api/v1/image-queries"


def prior_path(detector_id: str) -> str:
    return f"/edge-api/v1/detectors/{detector_id}/prior"


@pytest.fixture(scope="module")
def device(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as http:
        yield http


@pytest.fixture(scope="module")
def gl(cloud: CloudServer) -> Groundlight:
    return Groundlight(endpoint=cloud.url, api_token=DEVICE_TOKEN)


def labelled_detector(
    cloud: CloudServer,
    mode: DetectorMode,
    labels: list[str],
    history: list[list[tuple[str, bool, LabelSource]]],
) -> str:
    """A detector and one image query per entry of `history`: its labels (value, undone, source) in order."""

    async def work(session: AsyncSession) -> str:
        blobs = LocalBlobStore(cloud.data_dir / "blobs")
        detector = await ensure_detector(session, mode=mode, labels=labels)
        for i, labels_of_query in enumerate(history):
            iq_id = await add_image_query(session, blobs, detector.id, png(i))
            for value, undone, source in labels_of_query:
                await add_label(session, detector.id, iq_id, value, source=source, undone=undone)
        return detector.id

    return run_in_db(cloud.database_url, work)


H, C = LabelSource.HUMAN, LabelSource.CUSTOMER


def test_the_prior_counts_the_latest_label_of_each_query(device: httpx.Client, cloud: CloudServer) -> None:
    detector_id = labelled_detector(
        cloud,
        DetectorMode.BINARY,
        ["YES", "NO"],
        [
            [("YES", False, H)],
            [("YES", False, H), ("NO", False, C)],  # relabelled: counts once, as NO
            [("NO", False, H), ("YES", True, H)],  # the undone YES does not count: NO
            [("YES", True, H)],  # only an undone label: not counted
            [("YES", False, H), ("UNCLEAR", False, H)],  # latest UNCLEAR: not counted
            [("YES", False, C)],
            [],
        ],
    )
    resp = device.get(prior_path(detector_id))
    assert resp.status_code == 200, resp.text
    prior = DetectorPrior.model_validate(resp.json())
    assert prior.labels == ["YES", "NO"] and prior.counts == [2, 2]
    assert prior.mode is DetectorMode.BINARY and prior.has_model is False
    assert prior.confidence_threshold == 0.9 and prior.detector_id == detector_id


def test_queries_of_a_model_less_detector_get_the_prior_and_go_to_review(
    device: httpx.Client, cloud: CloudServer, cloud_db: TestDatabase
) -> None:
    detector_id = labelled_detector(
        cloud,
        DetectorMode.BINARY,
        ["YES", "NO"],
        [[("NO", False, H)], [("NO", False, H)], [("YES", False, H)]],
    )
    iq = device.post(IQ_PATH, params={"detector_id": detector_id}, content=png(7)).json()
    expected = label_prior(["YES", "NO"], [1, 2])
    assert expected.label == "NO" and expected.confidence == pytest.approx(0.6)
    assert iq["result"]["label"] == "NO" and iq["result"]["confidence"] == pytest.approx(0.6)
    assert iq["result"]["source"] == "ALGORITHM" and iq["result"]["from_edge"] is False
    assert iq["done_processing"] is False
    reason = "SELECT reason FROM review_items WHERE image_query_id = ?"
    assert db_scalar(cloud_db, reason, iq["id"]) == "no_model"
    # Even a prior that clears the threshold is not final: a person answers it.
    low = device.post(
        IQ_PATH, params={"detector_id": detector_id, "confidence_threshold": "0.5"}, content=png(8)
    ).json()
    assert low["done_processing"] is False and db_scalar(cloud_db, reason, low["id"]) == "no_model"


def test_a_count_detector_answers_with_the_most_frequent_count(
    device: httpx.Client, cloud: CloudServer
) -> None:
    detector_id = labelled_detector(
        cloud,
        DetectorMode.COUNT,
        ["0", "1", "2", "3"],
        [[("2", False, H)], [("2", False, C)], [("1", False, H)]],
    )
    prior = device.get(prior_path(detector_id)).json()
    assert prior["counts"] == [0, 1, 2, 0] and prior["mode"] == "COUNT"
    result = device.post(IQ_PATH, params={"detector_id": detector_id}, content=png(3)).json()["result"]
    assert result["result_type"] == "counting" and result["count"] == 2 and result["label"] == "2"
    assert result["confidence"] == pytest.approx(3 / 7, abs=1e-6)


def test_a_detector_whose_production_model_is_unusable_answers_with_its_prior(
    device: httpx.Client, cloud: CloudServer
) -> None:
    """The registry row exists but its bundle blob does not: has_model, yet the prior answers."""
    from tests.support.cloud_factories import CloudFactory

    detector_id = labelled_detector(cloud, DetectorMode.BINARY, ["YES", "NO"], [[("YES", False, H)]])
    factory = CloudFactory(cloud.database_url, cloud.data_dir / "blobs")
    version_id = factory.model_version(detector_id, "v-missing", status="production")

    async def promote(session: AsyncSession) -> None:
        await session.execute(
            update(Detector).where(Detector.id == detector_id).values(production_version_id=version_id)
        )
        await session.commit()

    run_in_db(cloud.database_url, promote)
    assert device.get(prior_path(detector_id)).json()["has_model"] is True
    iq = device.post(IQ_PATH, params={"detector_id": detector_id}, content=png(4)).json()
    assert iq["result"]["source"] == "ALGORITHM" and iq["result"]["label"] == "YES"
    assert iq["result"]["confidence"] == pytest.approx(2 / 3, abs=1e-6)
    assert iq["intellioptics"]["escalation_reason"] == "no_model"


def test_the_prior_route_is_for_devices_and_knows_its_detectors(
    device: httpx.Client, cloud: CloudServer
) -> None:
    detector_id = labelled_detector(cloud, DetectorMode.BINARY, ["YES", "NO"], [])
    assert device.get(prior_path(detector_id)).json()["counts"] == [0, 0]
    assert device.get(prior_path("det_" + "N" * 27)).status_code == 404
    assert device.get(prior_path("nonsense")).status_code == 404
    reviewer = run_in_db(cloud.database_url, lambda s: token_for(s, "reviewer"))
    with cloud.client(token=reviewer) as http:
        assert http.get(prior_path(detector_id)).status_code == 403
    with cloud.client(token=None) as anonymous:
        assert anonymous.get(prior_path(detector_id)).status_code == 401


def test_an_edge_escalation_for_a_model_less_detector_is_taken(
    device: httpx.Client, cloud: CloudServer, cloud_db: TestDatabase, digits: list[tuple[bytes, int]]
) -> None:
    detector_id = labelled_detector(cloud, DetectorMode.BINARY, ["YES", "NO"], [])
    payload = escalation(detector_id, reason=EscalationReason.NO_MODEL, confidence=0.5)
    resp = post_escalation(device, payload, digits[0][0])
    assert resp.status_code == 201, resp.text
    reason = "SELECT reason FROM review_items WHERE image_query_id = ?"
    assert db_scalar(cloud_db, reason, payload.image_query_id) == "no_model"
    assert db_scalar(
        cloud_db, "SELECT reason FROM escalations WHERE image_query_id = ?", payload.image_query_id
    ) == ("no_model")
    assert post_escalation(device, payload, digits[0][0]).status_code == 200


# --- the unmodified SDK on a brand-new detector -----------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_ask_ml_answers_from_the_first_response(gl: Groundlight, digits: list[tuple[bytes, int]]) -> None:
    """wait=0 means no polling: the result is the POST's own answer."""
    det = gl.create_detector(unique("prior ml"), "Is this a seven?")
    iq = gl.ask_ml(det, digits[0][0], wait=0)
    assert iq.result is not None and iq.result.source == "ALGORITHM" and iq.result.from_edge is False
    assert iq.result.confidence == pytest.approx(0.5)
    multi = gl.create_multiclass_detector(
        unique("prior colour"), "Which colour?", class_names=["red", "green"]
    )
    answer = gl.ask_ml(multi, digits[1][0], wait=0).result
    assert answer is not None and answer.label == "red" and answer.source == "ALGORITHM"


def test_submit_with_wait_returns_the_prior_when_nobody_answers(
    gl: Groundlight, digits: list[tuple[bytes, int]]
) -> None:
    det = gl.create_detector(unique("prior wait"), "Is this a seven?")
    iq = gl.submit_image_query(det, digits[2][0], wait=0.5)
    assert iq.result is not None and iq.result.source == "ALGORITHM"
    assert iq.result.label.value == "YES"


def test_wait_for_ml_result_after_ask_async_sees_the_prior(
    gl: Groundlight, digits: list[tuple[bytes, int]]
) -> None:
    det = gl.create_detector(unique("prior async"), "Is this a seven?")
    pending = gl.ask_async(det, digits[3][0])
    assert pending.result is None  # the documented async contract
    answered = gl.wait_for_ml_result(pending, timeout_sec=20)
    assert answered.result is not None and answered.result.source == "ALGORITHM"
    assert answered.result.confidence == pytest.approx(0.5)


def test_labels_move_the_prior(gl: Groundlight, digits: list[tuple[bytes, int]]) -> None:
    det = gl.create_detector(unique("prior learns"), "Is this a seven?")
    for image, _ in digits[:3]:
        gl.add_label(gl.ask_ml(det, image, wait=0), "NO")
    iq: Any = gl.ask_ml(det, digits[4][0], wait=0)
    assert iq.result.label.value == "NO" and iq.result.confidence == pytest.approx(4 / 5)
