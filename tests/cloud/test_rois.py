"""Boxes (ROIs) end to end against the real cloud process: labels with boxes through the unmodified
SDK and raw HTTP, BOUNDING_BOX detectors, review answers with boxes (and their undo), edge escalations
that carry a model's boxes, the dataset export, and the migration that adds the columns."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from alembic import command
from groundlight import Groundlight
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from cloud.app.blobstore import LocalBlobStore
from cloud.app.core.detectors import bundle_labels
from cloud.app.core.exports import create_export, run_export
from cloud.app.core.image_queries import model_result, model_rois
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.migrate import alembic_config
from cloud.app.db.models import Detector, ExportJob
from cloud.app.settings import to_async_url
from common.runtime import Box, Prediction
from common.wire.device_api import EdgeDiagnostics, ImageQuery, Result, ResultType, Roi, utc_now_iso
from common.wire.escalation import EscalationCreate, EscalationReason
from tests.cloud.test_device_api import db_scalar, make_detector
from tests.support import cloud as support
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.cloud_factories import CloudFactory, Reviewer
from tests.support.cloud_factories_worker import private_database
from training.dataset_export import read_export

if TYPE_CHECKING:
    from tests.support.cloud import TestDatabase

IQ_PATH = "/device-api/v1/image-queries"
LABEL_PATH = "/device-api/v1/labels"
ESC_PATH = "/api/v1/escalations"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def box(left: float, top: float, right: float, bottom: float, label: str = "bolt") -> dict[str, Any]:
    """A box as a client may send it: x and y left out (the cloud computes them)."""
    return {
        "label": label,
        "score": 1.0,
        "geometry": {"left": left, "top": top, "right": right, "bottom": bottom},
    }


def geometry(roi: dict[str, Any]) -> tuple[float, ...]:
    g = roi["geometry"]
    return tuple(round(g[k], 6) for k in ("left", "top", "right", "bottom", "x", "y"))


@pytest.fixture(scope="module")
def gl(cloud: CloudServer) -> Groundlight:
    return Groundlight(endpoint=cloud.url, api_token=DEVICE_TOKEN)


@pytest.fixture(scope="module")
def http(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


@pytest.fixture
def jpeg(digits: list[tuple[bytes, int]]) -> bytes:
    return digits[3][0]


def submit(http: httpx.Client, detector_id: str, image: bytes) -> dict[str, Any]:
    resp = http.post(
        IQ_PATH, params={"detector_id": detector_id}, content=image, headers={"Content-Type": "image/jpeg"}
    )
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def label(http: httpx.Client, iq_id: str, value: str | int, rois: Any = None) -> httpx.Response:
    return http.post(LABEL_PATH, json={"label": value, "image_query_id": iq_id, "rois": rois})


def labels_of(db: TestDatabase, iq_id: str) -> int:
    return int(db_scalar(db, "SELECT count(*) FROM labels WHERE image_query_id = ?", iq_id))


# -- the SDK: counting detector, add_label with ROIs ---------------------------------------------------


def export_of(cloud: CloudServer, detector_id: str, work: Path) -> Path:
    """Run one export of the detector in-process (the worker's part) and fetch its archive."""
    blobs = LocalBlobStore(cloud.data_dir / "blobs")

    async def main() -> Path:
        engine = make_engine(to_async_url(cloud.database_url), pool_size=2)
        try:
            sessions = make_sessionmaker(engine)
            async with sessions() as session:
                job_id = (await create_export(session, detector_id, None)).id
            await run_export(sessions, blobs, job_id, work)
            async with sessions() as session:
                job = await session.get(ExportJob, job_id)
                assert job is not None and job.blob_key is not None, job and job.error
                key = job.blob_key
            target = work / "export.tar.gz"
            await blobs.get_to_file(key, target)
            return target
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_sdk_count_label_with_two_rois_round_trips_and_is_exported(
    gl: Groundlight, cloud: CloudServer, cloud_db: TestDatabase, jpeg: bytes, tmp_path: Path
) -> None:
    det = gl.create_counting_detector(unique("roi count"), "How many bolts?", "bolt", max_count=5)
    iq = gl.submit_image_query(det, jpeg, wait=0)
    rois = [gl.create_roi("bolt", (0.1, 0.2), (0.3, 0.4)), gl.create_roi("bolt", (0.5, 0.5), (0.9, 0.95))]
    gl.add_label(iq, 2, rois=rois)

    fetched = gl.get_image_query(iq.id)
    assert fetched.result is not None and fetched.result.count == 2
    assert fetched.rois is not None and len(fetched.rois) == 2
    got = sorted((r.geometry.left, r.geometry.top, r.geometry.right, r.geometry.bottom) for r in fetched.rois)
    assert got == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.95)]
    assert {r.label for r in fetched.rois} == {"bolt"} and all(r.score == 1.0 for r in fetched.rois)
    assert fetched.rois[0].geometry.x == pytest.approx(0.2)
    listed = [
        q for q in gl.list_image_queries(page=1, page_size=50, detector_id=det.id).results if q.id == iq.id
    ]
    assert listed and listed[0].rois is not None and len(listed[0].rois) == 2
    stored = db_scalar(cloud_db, "SELECT rois FROM labels WHERE image_query_id = ?", iq.id)
    assert len(json.loads(stored) if isinstance(stored, str) else stored) == 2

    export = read_export(export_of(cloud, det.id, tmp_path))
    assert export.manifest.format_version == 3
    (item,) = [i for i in export.manifest.items if i.image_query_id == iq.id]
    assert item.label == "2" and item.rois is not None and len(item.rois) == 2
    assert all(isinstance(roi, Roi) for roi in item.rois)
    assert sorted(roi.geometry.right for roi in item.rois) == [0.3, 0.9]


# -- raw HTTP: what is refused -----------------------------------------------------------------------


def test_bad_rois_are_400_with_a_detail_and_store_nothing(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http, mode="COUNT", mode_configuration={"class_name": "bolt", "max_count": 5})
    iq = submit(http, det["id"], jpeg)
    good = box(0.1, 0.1, 0.2, 0.2)
    cases: dict[str, tuple[str, Any]] = {
        "outside [0, 1]": ("1", [box(0.1, 0.1, 1.2, 0.2)]),
        "negative": ("1", [box(-0.1, 0.1, 0.2, 0.2)]),
        "right left of left": ("1", [box(0.5, 0.1, 0.2, 0.2)]),
        "bottom above top": ("1", [box(0.1, 0.5, 0.2, 0.2)]),
        "101 boxes": ("5", [good] * 101),
        "count mismatch": ("3", [good, good]),
        "boxes with UNCLEAR": ("UNCLEAR", [good]),
        "not a list": ("1", {"label": "bolt"}),
        "coordinate as text": ("1", [box(0.1, 0.1, 0.2, 0.2) | {"geometry": {"left": "a"}}]),
    }
    for name, (value, rois) in cases.items():
        resp = label(http, iq["id"], value, rois)
        assert resp.status_code == 400, (name, resp.status_code, resp.text)
        assert isinstance(resp.json()["detail"], str) and resp.json()["detail"], name
    mismatch = label(http, iq["id"], "3", [good, good]).json()["detail"]
    assert "3" in mismatch and "2 boxes" in mismatch
    # JSON's NaN token (json.dumps writes it by default), as a client library may send it.
    body = json.dumps({"label": "1", "image_query_id": iq["id"], "rois": [box(float("nan"), 0.1, 0.2, 0.2)]})
    assert "NaN" in body
    resp = http.post(LABEL_PATH, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "finite" in resp.json()["detail"], resp.text
    assert labels_of(cloud_db, iq["id"]) == 0
    # Without boxes a count label is fine, and so are exactly as many boxes as the count.
    assert label(http, iq["id"], "4").status_code == 201
    assert label(http, iq["id"], "0", []).status_code == 201
    assert label(http, iq["id"], "1", [good]).status_code == 201
    assert labels_of(cloud_db, iq["id"]) == 3


# -- BOUNDING_BOX detectors --------------------------------------------------------------------------


def test_a_bounding_box_detector_round_trips_through_the_sdk(
    gl: Groundlight, http: httpx.Client, jpeg: bytes
) -> None:
    det = gl.create_bounding_box_detector(
        unique("roi boxes"), "Where are the people?", "person", max_num_bboxes=3
    )
    got = gl.get_detector(det.id)
    assert got.mode == "BOUNDING_BOX"
    assert got.mode_configuration == {"class_name": "person", "max_num_bboxes": 3}
    default = gl.create_bounding_box_detector(unique("roi boxes"), "Any people?", "person")
    assert gl.get_detector(default.id).mode_configuration == {"class_name": "person", "max_num_bboxes": 10}

    iq = gl.submit_image_query(det, jpeg, wait=0)
    assert iq.result is not None and iq.result.label in ("NO_OBJECTS", "BOUNDING_BOX", "GREATER_THAN_MAX")
    assert iq.rois is None
    person = [gl.create_roi("person", (0.1, 0.1), (0.4, 0.9))]
    gl.add_label(iq, "BOUNDING_BOX", rois=person)
    fetched = gl.get_image_query(iq.id)
    assert fetched.result is not None and fetched.result.label == "BOUNDING_BOX"
    assert fetched.result.confidence == 1.0
    assert fetched.rois is not None and [r.label for r in fetched.rois] == ["person"]

    good = box(0.1, 0.1, 0.2, 0.2, "person")
    refused = {
        "NO_OBJECTS with boxes": ("NO_OBJECTS", [good]),
        "BOUNDING_BOX without boxes": ("BOUNDING_BOX", None),
        "BOUNDING_BOX with an empty list": ("BOUNDING_BOX", []),
        "more boxes than max_num_bboxes": ("BOUNDING_BOX", [good] * 4),
        "a count as the label": ("2", [good, good]),
    }
    for name, (value, rois) in refused.items():
        resp = label(http, iq.id, value, rois)
        assert resp.status_code == 400, (name, resp.text)
    assert label(http, iq.id, "GREATER_THAN_MAX", [good] * 4).status_code == 201
    assert label(http, iq.id, "no_objects").status_code == 201  # any case, like YES/NO
    cleared = gl.get_image_query(iq.id)
    assert cleared.result is not None and cleared.result.label == "NO_OBJECTS" and cleared.rois is None

    for config in (
        {"class_name": "person", "max_num_bboxes": 0},
        {"class_name": "person", "max_num_bboxes": 101},
    ):
        resp = http.post(
            "/device-api/v1/detectors",
            json={
                "name": unique("roi bad"),
                "query": "q",
                "mode": "BOUNDING_BOX",
                "mode_configuration": config,
            },
        )
        assert resp.status_code == 400 and "max_num_bboxes" in resp.json()["detail"], resp.text
    resp = http.post(
        "/device-api/v1/detectors",
        json={"name": unique("roi bad"), "query": "q", "mode": "BOUNDING_BOX", "mode_configuration": {}},
    )
    assert resp.status_code == 400 and "class_name" in resp.json()["detail"]


def detection(label: str, boxes: tuple[Box, ...], more: bool = False, mode: str = "COUNT") -> Prediction:
    return Prediction(
        detector_id="det_x",
        model_version="v1",
        mode=mode,
        labels=[str(i) for i in range(4)],
        probabilities=[0.1, 0.1, 0.1, 0.7],
        label_index=int(label),
        label=label,
        raw_confidence=0.7,
        in_domain=0.9,
        confidence=0.7,
        boxes=boxes,
        greater_than_max=more,
        class_name="bolt",
    )


def test_the_cloud_model_answers_with_its_boxes_and_count_bucket() -> None:
    """What a cloud detection model's answer stores: boxes labelled with its class, the count (or,
    for BOUNDING_BOX, the bucket) in the result, greater_than_max passed on."""
    boxes = (Box(0.1, 0.1, 0.2, 0.3, 0.9), Box(0.5, 0.5, 0.6, 0.6, 0.8), Box(0.7, 0.7, 0.9, 0.9, 0.6))
    count = Detector(mode="COUNT", labels=[str(i) for i in range(4)])
    result = model_result(count, detection("3", boxes, more=True))
    assert result.count == 3 and result.greater_than_max is True and result.result_type == "counting"
    stored = model_rois(detection("3", boxes))
    assert stored is not None and [r["label"] for r in stored] == ["bolt"] * 3
    assert geometry(stored[0]) == (0.1, 0.1, 0.2, 0.3, 0.15, 0.2)
    assert stored[0]["score"] == 0.9
    boxed = Detector(mode="BOUNDING_BOX", labels=["NO_OBJECTS", "BOUNDING_BOX", "GREATER_THAN_MAX"])
    assert model_result(boxed, detection("0", (), mode="BOUNDING_BOX")).label == "NO_OBJECTS"
    assert model_result(boxed, detection("2", boxes[:2], mode="BOUNDING_BOX")).label == "BOUNDING_BOX"
    over = model_result(boxed, detection("3", boxes, more=True, mode="BOUNDING_BOX"))
    assert over.label == "GREATER_THAN_MAX" and over.result_type == "bounding_box"
    assert model_rois(None) is None
    # A BOUNDING_BOX detector's bundle answers count buckets, like a COUNT one's.
    assert bundle_labels("BOUNDING_BOX", boxed.labels, {"max_num_bboxes": 3}) == ["0", "1", "2", "3"]
    assert bundle_labels("COUNT", ["0", "1"], {"max_count": 1}) == ["0", "1"]


# -- escalations and the review API ------------------------------------------------------------------


def escalate_with_boxes(http: httpx.Client, detector_id: str, image: bytes, boxes: list[Roi]) -> str:
    """What an edge's outbox sends for a detection model's low-confidence answer."""
    iq_id = "iq_" + secrets.token_hex(13)
    iq = ImageQuery(
        id=iq_id,
        created_at=utc_now_iso(),
        query="How many bolts?",
        detector_id=detector_id,
        result_type=ResultType.COUNTING,
        result=Result(
            result_type=ResultType.COUNTING, confidence=0.4, label=str(len(boxes)), count=len(boxes)
        ),
        patience_time=30.0,
        confidence_threshold=0.9,
        rois=boxes,
        intellioptics=EdgeDiagnostics(model_version="v1", escalated=True, escalation_reason="low_confidence"),
    )
    payload = EscalationCreate(
        image_query_id=iq_id,
        detector_id=detector_id,
        reason=EscalationReason.LOW_CONFIDENCE,
        image_query=iq,
        image_content_type="image/jpeg",
        edge_id="edge-rois",
        created_at=iq.created_at,
    )
    files: dict[str, tuple[str | None, bytes | str, str]] = {
        "escalation": (None, payload.model_dump_json(), "application/json"),
        "image": ("image", image, "image/jpeg"),
    }
    resp = http.post(ESC_PATH, files=files)
    assert resp.status_code in (200, 201, 202), resp.text
    return iq_id


def claim(http: httpx.Client, detector_id: str) -> dict[str, Any]:
    resp = http.post("/api/v1/review/claim", params={"detector_id": detector_id})
    assert resp.status_code == 200, resp.text
    item: dict[str, Any] = resp.json()
    return item


def test_review_answers_with_boxes_are_stored_and_undone(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(
        http, query="How many bolts?", mode="COUNT", mode_configuration={"class_name": "bolt", "max_count": 4}
    )
    model_boxes = [Roi.from_box("bolt", 0.7, 0.1, 0.1, 0.3, 0.3)]
    iq_id = escalate_with_boxes(http, det["id"], jpeg, model_boxes)
    with_model = http.get(f"{IQ_PATH}/{iq_id}").json()
    assert [geometry(r) for r in with_model["rois"]] == [geometry(model_boxes[0].model_dump())]

    who: Reviewer = factory.reviewer()
    with cloud.client(token=who.token) as reviewer:
        item = claim(reviewer, det["id"])
        assert item["mode"] == "COUNT" and item["class_name"] == "bolt" and item["max_count"] == 4
        assert item["model_rois"] is not None and len(item["model_rois"]) == 1
        assert item["model_rois"][0]["score"] == pytest.approx(0.7)
        answer_path = f"/api/v1/review/items/{item['id']}/answer"

        drawn = [box(0.1, 0.1, 0.3, 0.3), box(0.6, 0.6, 0.8, 0.9)]
        for value, rois in (("3", drawn), ("2", [box(0.3, 0.1, 0.1, 0.3)]), ("UNCLEAR", drawn)):
            resp = reviewer.post(answer_path, json={"label": value, "rois": rois})
            assert resp.status_code == 400, (value, resp.text)
        resp = reviewer.post(answer_path, json={"label": 2, "rois": drawn})
        assert resp.status_code == 200, resp.text

        answered = http.get(f"{IQ_PATH}/{iq_id}").json()
        assert answered["result"]["count"] == 2 and answered["result"]["source"] == "HUMAN"
        assert sorted(geometry(r) for r in answered["rois"]) == [
            (0.1, 0.1, 0.3, 0.3, 0.2, 0.2),
            (0.6, 0.6, 0.8, 0.9, 0.7, 0.75),
        ]
        stored = db_scalar(cloud_db, "SELECT rois FROM labels WHERE image_query_id = ?", iq_id)
        assert len(json.loads(stored) if isinstance(stored, str) else stored) == 2

        # Undo gives the query back its model answer and the model's boxes.
        assert reviewer.post("/api/v1/review/undo").status_code == 200
        undone = http.get(f"{IQ_PATH}/{iq_id}").json()
        assert undone["result"]["count"] == 1 and undone["result"]["confidence"] == pytest.approx(0.4)
        assert [geometry(r) for r in undone["rois"]] == [geometry(model_boxes[0].model_dump())]
        again = claim(reviewer, det["id"])
        assert again["id"] == item["id"] and len(again["model_rois"]) == 1


def test_a_claimed_bounding_box_item_says_what_to_draw(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory, jpeg: bytes
) -> None:
    det = make_detector(
        http, mode="BOUNDING_BOX", mode_configuration={"class_name": "person", "max_num_bboxes": 6}
    )
    iq = submit(http, det["id"], jpeg)  # no model: answered by the label prior and queued
    assert iq["result"]["result_type"] == "bounding_box" and iq["rois"] is None
    who = factory.reviewer()
    with cloud.client(token=who.token) as reviewer:
        item = claim(reviewer, det["id"])
        assert item["mode"] == "BOUNDING_BOX" and item["class_name"] == "person" and item["max_count"] == 6
        assert item["labels"] == ["NO_OBJECTS", "BOUNDING_BOX", "GREATER_THAN_MAX"]
        assert item["model_rois"] is None
        answer_path = f"/api/v1/review/items/{item['id']}/answer"
        assert reviewer.post(answer_path, json={"label": "BOUNDING_BOX"}).status_code == 400
        assert (
            reviewer.post(answer_path, json={"label": "NO_OBJECTS", "rois": [box(0, 0, 1, 1)]}).status_code
            == 400
        )
        resp = reviewer.post(
            answer_path, json={"label": "BOUNDING_BOX", "rois": [box(0, 0, 0.5, 1, "person")]}
        )
        assert resp.status_code == 200, resp.text
    answered = http.get(f"{IQ_PATH}/{iq['id']}").json()
    assert answered["result"]["label"] == "BOUNDING_BOX" and len(answered["rois"]) == 1


def test_a_binary_detector_item_has_no_box_fields(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory, jpeg: bytes
) -> None:
    det = make_detector(http)
    submit(http, det["id"], jpeg)
    with cloud.client(token=factory.reviewer().token) as reviewer:
        item = claim(reviewer, det["id"])
    assert item["mode"] == "BINARY"
    assert item["class_name"] is None and item["max_count"] is None and item["model_rois"] is None


# -- the migration -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


async def _columns(url: str) -> dict[str, set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: Any) -> dict[str, set[str]]:
                found = inspect(sync_conn)
                return {
                    t: {c["name"] for c in found.get_columns(t)}
                    for t in ("labels", "image_queries", "review_items")
                }

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


def test_the_rois_migration_adds_and_removes_its_columns(own_database: support.TestDatabase) -> None:
    url = to_async_url(own_database.url)
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    columns = asyncio.run(_columns(url))
    assert "rois" in columns["labels"] and "rois" in columns["image_queries"]
    assert "prior_rois" in columns["review_items"]
    command.downgrade(cfg, "0005")
    columns = asyncio.run(_columns(url))
    assert "rois" not in columns["labels"] and "rois" not in columns["image_queries"]
    assert "prior_rois" not in columns["review_items"]
    command.upgrade(cfg, "head")
    assert "rois" in asyncio.run(_columns(url))["labels"]
