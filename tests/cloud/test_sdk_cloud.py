"""The unmodified `groundlight` SDK (1.3.1) against the cloud: the calls a camera script makes."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from groundlight import Groundlight, NotFoundError
from groundlight_openapi_client.exceptions import ForbiddenException
from sqlalchemy import select

from cloud.app.core.users import create_token
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import User
from cloud.app.settings import to_async_url
from common.bundle_archive import pack_bundle
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.models import clone_bundle

IQ_PATH = "/device-api/v1/image-queries"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def gl(cloud: CloudServer) -> Groundlight:
    return Groundlight(endpoint=cloud.url, api_token=DEVICE_TOKEN)


@pytest.fixture
def jpeg(digits: list[tuple[bytes, int]]) -> bytes:
    return digits[2][0]


def label_when_submitted(cloud: CloudServer, detector_id: str, label: str) -> threading.Thread:
    """A second client, as a reviewer would be: waits for the detector's first query, then answers it."""

    def run() -> None:
        with cloud.client() as http:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                page = http.get(IQ_PATH, params={"detector_id": detector_id}).json()
                if page["results"]:
                    iq_id = page["results"][0]["id"]
                    resp = http.post("/device-api/v1/labels", json={"label": label, "image_query_id": iq_id})
                    assert resp.status_code == 201, resp.text
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_constructor_handshake_and_whoami(gl: Groundlight) -> None:
    assert gl.whoami() == "device@intellioptics.local"
    usage = gl.get_month_to_date_usage()
    assert usage.iqs >= 0 and usage.active_detectors >= 0


def test_detector_lifecycle(gl: Groundlight, admin_gl: Groundlight) -> None:
    name = unique("sdk door")
    det = gl.create_detector(name, "Is the door closed?", confidence_threshold=0.8, patience_time=20)
    assert det.id.startswith("det_") and det.confidence_threshold == 0.8 and det.patience_time == 20
    assert gl.get_detector(det.id).name == name
    assert gl.get_detector_by_name(name).id == det.id
    assert gl.get_or_create_detector(name, "Is the door closed?").id == det.id
    listed = gl.list_detectors(page=1, page_size=100)
    assert listed.count >= 1 and det.id in {d.id for d in listed.results}
    with pytest.raises(NotFoundError):
        gl.get_detector_by_name(unique("absent"))
    with pytest.raises(ForbiddenException):
        gl.delete_detector(det)
    with pytest.raises(ForbiddenException):
        gl.update_detector_confidence_threshold(det, 0.5)
    admin_gl.update_detector_confidence_threshold(det, 0.5)
    assert gl.get_detector(det.id).confidence_threshold == 0.5
    admin_gl.delete_detector(det)
    with pytest.raises(NotFoundError):
        gl.get_detector(det.id)
    assert det.id not in {d.id for d in gl.list_detectors(page=1, page_size=100).results}
    # The name is free again at once.
    assert gl.create_detector(name, "Is the door closed?").id != det.id


def test_get_or_create_creates_a_missing_detector(gl: Groundlight) -> None:
    name = unique("sdk a+b")
    det = gl.get_or_create_detector(name, "Is it there?")
    assert gl.get_detector_by_name(name).id == det.id


def test_wait_returns_a_human_answer_given_from_another_client(
    gl: Groundlight, cloud: CloudServer, jpeg: bytes
) -> None:
    det = gl.create_detector(unique("sdk wait"), "Is this a seven?")
    labeller = label_when_submitted(cloud, det.id, "YES")
    iq = gl.submit_image_query(det, jpeg, wait=30)
    labeller.join(timeout=30)
    assert iq.result is not None and iq.result.label.value == "YES"
    assert iq.result.confidence == 1.0


def test_add_label_list_and_get_image(gl: Groundlight, jpeg: bytes) -> None:
    det = gl.create_detector(unique("sdk label"), "Is this a seven?")
    iq = gl.submit_image_query(det, jpeg, wait=0, metadata={"camera": "sdk"})
    assert iq.metadata == {"camera": "sdk"}
    assert iq.result is not None and iq.result.source == "ALGORITHM"  # the prior, until a person answers
    gl.add_label(iq, "NO")
    answered = gl.get_image_query(iq.id)
    assert answered.result is not None and answered.result.label.value == "NO"
    page = gl.list_image_queries(page=1, page_size=10, detector_id=det.id)
    assert page.count == 1 and page.results[0].id == iq.id
    assert gl.get_image(iq.id).read() == jpeg


def test_client_chosen_id_and_async_submission(gl: Groundlight, jpeg: bytes) -> None:
    det = gl.create_detector(unique("sdk async"), "Is this a seven?")
    iq_id = "iq_sdk" + secrets.token_hex(10)
    iq = gl.submit_image_query(det, jpeg, wait=0, image_query_id=iq_id)
    assert iq.id == iq_id
    pending = gl.ask_async(det, jpeg)
    assert pending.result is None and gl.get_image_query(pending.id).id == pending.id


def test_ask_ml_without_a_model_answers_at_once_with_the_label_prior(gl: Groundlight, jpeg: bytes) -> None:
    """wait=0: the SDK does not poll, so the answer is the POST's own; a brand-new detector has one."""
    det = gl.create_detector(unique("sdk ml"), "Is this a seven?")
    iq = gl.ask_ml(det, jpeg, wait=0)
    assert iq.result is not None and iq.result.source == "ALGORITHM" and iq.result.from_edge is False
    assert iq.result.label.value == "YES" and iq.result.confidence == pytest.approx(0.5)


def test_multiclass_and_counting_answers(gl: Groundlight, jpeg: bytes) -> None:
    multi = gl.create_multiclass_detector(unique("sdk colour"), "Which colour?", class_names=["red", "green"])
    iq = gl.submit_image_query(multi, jpeg, wait=0)
    gl.add_label(iq, "green")
    result = gl.get_image_query(iq.id).result
    assert result is not None and result.label == "green"

    counting = gl.create_counting_detector(unique("sdk count"), "How many bolts?", "bolt", max_count=5)
    iq = gl.submit_image_query(counting, jpeg, wait=0)
    gl.add_label(iq, 2)
    result = gl.get_image_query(iq.id).result
    assert result is not None and result.count == 2


# --- answered by the cloud's own model ---------------------------------------------------------


async def _admin_token(database_url: str) -> str:
    engine = make_engine(to_async_url(database_url))
    try:
        async with make_sessionmaker(engine)() as session:
            admin = (await session.scalars(select(User).where(User.username == "admin"))).one()
            token = await create_token(session, admin, unique("tests admin"))
            await session.commit()
            return token
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def admin_token(cloud: CloudServer) -> str:
    return asyncio.run(_admin_token(cloud.database_url))


@pytest.fixture(scope="module")
def admin_http(cloud: CloudServer, admin_token: str) -> Iterator[httpx.Client]:
    with cloud.client(token=admin_token) as client:
        yield client


@pytest.fixture(scope="module")
def admin_gl(cloud: CloudServer, admin_token: str) -> Groundlight:
    """A script with an admin's token: it may update and delete detectors, which cameras may not."""
    return Groundlight(endpoint=cloud.url, api_token=admin_token)


def upload_production_model(
    admin_http: httpx.Client, demo_models: Path, detector_id: str, work: Path
) -> Path:
    """The demo 'is this a seven' bundle, re-issued for `detector_id`, registered and promoted.
    Returns the local copy of the bundle."""
    from training.demo_bundles import DEMO_SEVEN_ID

    bundle = clone_bundle(demo_models / DEMO_SEVEN_ID / "current", detector_id, work / "models")
    archive = work / "bundle.tar.gz"
    pack_bundle(bundle, archive)
    resp = admin_http.post(
        f"/api/v1/detectors/{detector_id}/models",
        files={"bundle": ("bundle.tar.gz", archive.read_bytes(), "application/gzip")},
        data={"promote": "true"},
    )
    assert resp.status_code == 201, resp.text
    return bundle


def test_the_cloud_answers_with_the_production_model_as_the_runtime_does(
    gl: Groundlight,
    cloud: CloudServer,
    admin_http: httpx.Client,
    demo_models: Path,
    digits: list[tuple[bytes, int]],
    photos: list[bytes],
    tmp_path: Path,
) -> None:
    det = gl.create_detector(unique("sdk seven"), "Is this digit a 7?", confidence_threshold=0.6)
    runtime = ModelRuntime(upload_production_model(admin_http, demo_models, det.id, tmp_path))
    sevens = [image for image, digit in digits if digit == 7][:3]
    others = [image for image, digit in digits if digit != 7][:2]

    for image in [*sevens, *others]:
        expected = runtime.predict(image, ImageLimits())
        iq = gl.ask_ml(det, image, wait=0)
        assert iq.result is not None and iq.result.source == "ALGORITHM" and iq.result.from_edge is False
        assert iq.result.label.value == expected.label
        assert iq.result.confidence == pytest.approx(expected.confidence, abs=1e-5)
    assert sum(gl.ask_ml(det, image, wait=0).result.label.value == "YES" for image in sevens) >= 2

    with cloud.client() as http:
        confident = next(image for image in others if runtime.predict(image, ImageLimits()).confidence >= 0.6)
        raw = http.post(IQ_PATH, params={"detector_id": det.id}, content=confident).json()
        assert raw["done_processing"] is True and raw["intellioptics"]["model_version"] == runtime.version
        # A photo is out of the model's domain: its confidence drifts towards chance, below 0.99.
        assert runtime.predict(photos[0], ImageLimits()).confidence < 0.99
        unsure = http.post(
            IQ_PATH, params={"detector_id": det.id, "confidence_threshold": "0.99"}, content=photos[0]
        ).json()
        assert unsure["result"]["source"] == "ALGORITHM" and unsure["done_processing"] is False
        assert unsure["intellioptics"]["escalation_reason"] == "low_confidence"


def test_the_detectors_people_review_policy_decides_for_queries_that_leave_it_to_it(
    gl: Groundlight,
    cloud: CloudServer,
    admin_http: httpx.Client,
    demo_models: Path,
    digits: list[tuple[bytes, int]],
    tmp_path: Path,
) -> None:
    det = gl.create_detector(unique("sdk policy"), "Is this digit a 7?", confidence_threshold=0.5)
    runtime = ModelRuntime(upload_production_model(admin_http, demo_models, det.id, tmp_path))
    image = next(i for i, _ in digits if runtime.predict(i, ImageLimits()).confidence >= 0.5)
    patch = f"/device-api/v1/detectors/{det.id}"
    assert admin_http.patch(patch, json={"human_review": "ALWAYS"}).status_code == 200
    with cloud.client() as http:
        queued = http.post(IQ_PATH, params={"detector_id": det.id}, content=image).json()
        assert queued["result"]["source"] == "ALGORITHM" and queued["done_processing"] is False
        assert queued["intellioptics"]["escalation_reason"] == "human_review_always"
        own = http.post(
            IQ_PATH, params={"detector_id": det.id, "human_review": "NEVER"}, content=image
        ).json()
        assert own["done_processing"] is True  # the query's own choice wins
        assert (
            admin_http.patch(patch, json={"human_review": "NEVER", "confidence_threshold": 1.0}).status_code
            == 200
        )
        unsure = http.post(IQ_PATH, params={"detector_id": det.id}, content=image).json()
        assert unsure["result"]["confidence"] < 1.0 and unsure["done_processing"] is True
        assert http.get(f"/edge-api/v1/detectors/{det.id}/prior").json()["human_review"] == "NEVER"
    assert admin_http.patch(patch, json={"human_review": "SOMETIMES"}).status_code in (400, 422)


def test_an_async_query_gets_the_model_answer_after_the_response(
    gl: Groundlight, admin_http: httpx.Client, demo_models: Path, jpeg: bytes, tmp_path: Path
) -> None:
    det = gl.create_detector(unique("sdk async seven"), "Is this digit a 7?")
    runtime = ModelRuntime(upload_production_model(admin_http, demo_models, det.id, tmp_path))
    pending = gl.ask_async(det, jpeg)
    assert pending.result is None
    answered = gl.wait_for_ml_result(pending, timeout_sec=20)
    assert answered.result is not None and answered.result.source == "ALGORITHM"
    assert answered.result.label.value == runtime.predict(jpeg, ImageLimits()).label


def test_a_detector_with_a_production_model_can_be_deleted(
    gl: Groundlight,
    admin_gl: Groundlight,
    admin_http: httpx.Client,
    demo_models: Path,
    jpeg: bytes,
    tmp_path: Path,
) -> None:
    det = gl.create_detector(unique("sdk doomed"), "Is this digit a 7?")
    upload_production_model(admin_http, demo_models, det.id, tmp_path)
    gl.ask_ml(det, jpeg, wait=0)
    admin_gl.delete_detector(det)
    with pytest.raises(NotFoundError):
        gl.get_detector(det.id)
