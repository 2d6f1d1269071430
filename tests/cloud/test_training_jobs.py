"""Training jobs over HTTP: one active job per detector, leases that never go to two trainers,
heartbeats only from the lease holder, expiry, cancellation and completion."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core import training_jobs
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_worker import (
    Tokens,
    add_labels,
    make_detector,
    private_database,
    run_sync,
    seed_tokens,
    sessions_for,
)

pytestmark = pytest.mark.in_process

JOBS = "/api/v1/training-jobs"


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture
def admin(cloud: CloudServer, tokens: Tokens) -> Iterator[httpx.Client]:
    with cloud.client(tokens.admin) as client:
        yield client


@pytest.fixture
def trainer(cloud: CloudServer, tokens: Tokens) -> Iterator[httpx.Client]:
    with cloud.client(tokens.trainer) as client:
        yield client


@pytest.fixture
def empty_queue(trainer: httpx.Client) -> None:
    """Leases away whatever earlier tests left queued, for an hour, so that this test's jobs are next."""
    while trainer.post(f"{JOBS}/lease", json={"owner": "parking", "lease_s": 3600}).status_code == 200:
        pass


def new_detector(cloud_db: support.TestDatabase, labels: int = 0) -> str:
    async def make(session: AsyncSession) -> str:
        detector = await make_detector(session)
        await add_labels(session, detector, labels)
        return detector.id

    detector_id: str = run_sync(cloud_db.url, make)
    return detector_id


def create_job(admin: httpx.Client, detector_id: str, **extra: Any) -> dict[str, Any]:
    resp = admin.post(JOBS, json={"detector_id": detector_id, **extra})
    assert resp.status_code == 201, resp.text
    job: dict[str, Any] = resp.json()
    return job


def lease(trainer: httpx.Client, owner: str, lease_s: float = 60) -> dict[str, Any] | None:
    resp = trainer.post(f"{JOBS}/lease", json={"owner": owner, "lease_s": lease_s})
    if resp.status_code == 204:
        return None
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    return job


def test_a_created_job_is_queued_with_the_label_count(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    detector_id = new_detector(cloud_db, labels=3)
    job = create_job(admin, detector_id, config={"epochs": 2})
    assert job["status"] == "queued" and job["trigger"] == "manual"
    assert job["labels_at_creation"] == 3 and job["config"] == {"epochs": 2}
    assert job["started_at"] is None and job["cancel_requested"] is False

    assert trainer.get(f"{JOBS}/{job['id']}").json() == job
    listed = trainer.get(JOBS, params={"detector_id": detector_id}).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert job["id"] in [j["id"] for j in trainer.get(JOBS, params={"status": "queued"}).json()]
    assert job["id"] not in [j["id"] for j in trainer.get(JOBS, params={"status": "running"}).json()]


def test_a_second_active_job_for_a_detector_is_a_conflict(
    cloud_db: support.TestDatabase, admin: httpx.Client
) -> None:
    detector_id = new_detector(cloud_db)
    create_job(admin, detector_id)
    second = admin.post(JOBS, json={"detector_id": detector_id})
    assert second.status_code == 409, second.text
    assert "already" in second.json()["detail"]


def test_concurrent_creates_for_one_detector_make_one_job(
    cloud_db: support.TestDatabase, admin: httpx.Client
) -> None:
    detector_id = new_detector(cloud_db)
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(lambda _: admin.post(JOBS, json={"detector_id": detector_id}).status_code, range(6))
        )
    assert sorted(codes) == [201] + [409] * 5


def test_jobs_are_created_by_admins_for_known_detectors(
    cloud_db: support.TestDatabase,
    admin: httpx.Client,
    trainer: httpx.Client,
    tokens: Tokens,
    cloud: CloudServer,
) -> None:
    detector_id = new_detector(cloud_db)
    assert trainer.post(JOBS, json={"detector_id": detector_id}).status_code == 403
    with cloud.client(tokens.reviewer) as reviewer:
        assert reviewer.post(JOBS, json={"detector_id": detector_id}).status_code == 403
        assert reviewer.get(JOBS).status_code == 403
    assert admin.post(JOBS, json={"detector_id": "det_" + "0" * 27}).status_code == 404
    assert admin.post(JOBS, json={"detector_id": "not an id"}).status_code == 400
    assert trainer.get(f"{JOBS}/trj_unknown").status_code == 404


@pytest.mark.usefixtures("empty_queue")
def test_concurrent_leases_never_hand_out_one_job_twice(
    cloud_db: support.TestDatabase, admin: httpx.Client, cloud: CloudServer, tokens: Tokens
) -> None:
    created = {create_job(admin, new_detector(cloud_db))["id"] for _ in range(6)}

    def lease_once(index: int) -> tuple[str, str | None]:
        owner = f"trainer-{index}"
        with cloud.client(tokens.trainer) as client:
            job = lease(client, owner)
        return owner, job["id"] if job else None

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lease_once, range(12)))
    leased = [job_id for _, job_id in results if job_id is not None]
    assert len(leased) == len(set(leased)), results
    assert set(leased) == created
    with cloud.client(tokens.trainer) as client:
        for owner, job_id in results:
            if job_id is not None:
                job = client.get(f"{JOBS}/{job_id}").json()
                assert job["status"] == "running" and job["lease_owner"] == owner


@pytest.mark.usefixtures("empty_queue")
async def test_leases_racing_inside_the_database_never_share_a_job(cloud_db: support.TestDatabase) -> None:
    """The same property with the HTTP overhead gone: many sessions look and update at once."""
    async with sessions_for(cloud_db.url) as sessions:
        created = set()
        async with sessions() as session:
            for _ in range(8):
                detector = await make_detector(session)
                created.add((await training_jobs.create_training_job(session, detector.id)).id)

        async def lease_once(index: int) -> str | None:
            async with sessions() as session:
                job = await training_jobs.lease_training_job(session, f"racer-{index}", 60)
                return job.id if job else None

        results = await asyncio.gather(*(lease_once(i) for i in range(20)))
    leased = [job_id for job_id in results if job_id is not None]
    assert len(leased) == len(set(leased)), results
    assert set(leased) == created


@pytest.mark.usefixtures("empty_queue")
def test_only_the_lease_holder_reports_progress(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    created = create_job(admin, new_detector(cloud_db))
    job = lease(trainer, "trainer-a")
    assert job is not None and job["id"] == created["id"]
    assert job["status"] == "running" and job["started_at"] is not None

    stranger = trainer.post(
        f"{JOBS}/{job['id']}/heartbeat", json={"owner": "trainer-b", "progress": {"epoch": 9}}
    )
    assert stranger.status_code == 409, stranger.text

    beat = trainer.post(
        f"{JOBS}/{job['id']}/heartbeat",
        json={"owner": "trainer-a", "progress": {"epoch": 1, "epochs": 4}, "log_lines": ["epoch 1 loss 0.7"]},
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["cancel_requested"] is False
    now = trainer.get(f"{JOBS}/{job['id']}").json()
    assert now["progress"] == {"epoch": 1, "epochs": 4}
    assert now["lease_expires_at"] > job["lease_expires_at"]
    logs = trainer.get(f"{JOBS}/{job['id']}/logs")
    assert logs.headers["content-type"].startswith("text/plain")
    assert "epoch 1 loss 0.7" in logs.text and "leased by trainer-a" in logs.text

    assert trainer.post(f"{JOBS}/{job['id']}/complete", json={"owner": "trainer-b"}).status_code == 409
    done = trainer.post(f"{JOBS}/{job['id']}/complete", json={"owner": "trainer-a"})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["finished_at"] is not None
    assert done.json()["duration_s"] >= 0
    # Finished: no more heartbeats, and the detector may get a new job.
    assert trainer.post(f"{JOBS}/{job['id']}/heartbeat", json={"owner": "trainer-a"}).status_code == 409
    create_job(admin, created["detector_id"])


@pytest.mark.usefixtures("empty_queue")
def test_an_expired_lease_goes_to_another_trainer(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    created = create_job(admin, new_detector(cloud_db))
    first = lease(trainer, "trainer-slow", lease_s=0.5)
    assert first is not None and first["id"] == created["id"]
    assert lease(trainer, "trainer-fast") is None  # still held

    time.sleep(1.0)
    second = lease(trainer, "trainer-fast")
    assert second is not None and second["id"] == created["id"]
    assert second["lease_owner"] == "trainer-fast"
    late = trainer.post(f"{JOBS}/{created['id']}/heartbeat", json={"owner": "trainer-slow"})
    assert late.status_code == 409
    assert (
        trainer.post(f"{JOBS}/{created['id']}/heartbeat", json={"owner": "trainer-fast"}).status_code == 200
    )


@pytest.mark.usefixtures("empty_queue")
def test_cancelling_a_queued_job_cancels_it_at_once(
    cloud_db: support.TestDatabase, admin: httpx.Client
) -> None:
    created = create_job(admin, new_detector(cloud_db))
    resp = admin.post(f"{JOBS}/{created['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled" and resp.json()["finished_at"] is not None
    assert lease(admin, "trainer") is None
    assert admin.post(f"{JOBS}/{created['id']}/cancel").json()["status"] == "cancelled"


@pytest.mark.usefixtures("empty_queue")
def test_cancelling_a_running_job_asks_its_trainer_to_stop(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    created = create_job(admin, new_detector(cloud_db))
    job = lease(trainer, "trainer-a")
    assert job is not None and job["id"] == created["id"]
    asked = admin.post(f"{JOBS}/{job['id']}/cancel")
    assert asked.status_code == 200
    assert asked.json()["status"] == "running" and asked.json()["cancel_requested"] is True

    beat = trainer.post(f"{JOBS}/{job['id']}/heartbeat", json={"owner": "trainer-a"})
    assert beat.json()["cancel_requested"] is True
    stopped = trainer.post(
        f"{JOBS}/{job['id']}/fail", json={"owner": "trainer-a", "error": "cancelled by request"}
    )
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "cancelled"


@pytest.mark.usefixtures("empty_queue")
def test_a_failed_job_keeps_its_error_and_finished_jobs_cannot_be_cancelled(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    created = create_job(admin, new_detector(cloud_db))
    job = lease(trainer, "trainer-a")
    assert job is not None and job["id"] == created["id"]
    failed = trainer.post(f"{JOBS}/{job['id']}/fail", json={"owner": "trainer-a", "error": "out of memory"})
    assert failed.json()["status"] == "failed" and failed.json()["error"] == "out of memory"
    assert admin.post(f"{JOBS}/{job['id']}/cancel").status_code == 409


@pytest.mark.usefixtures("empty_queue")
def test_completing_with_an_unknown_model_version_is_refused(
    cloud_db: support.TestDatabase, admin: httpx.Client, trainer: httpx.Client
) -> None:
    create_job(admin, new_detector(cloud_db))
    job = lease(trainer, "trainer-a")
    assert job is not None
    resp = trainer.post(
        f"{JOBS}/{job['id']}/complete", json={"owner": "trainer-a", "result_version_id": "mdl_unknown"}
    )
    assert resp.status_code == 400
    assert trainer.get(f"{JOBS}/{job['id']}").json()["status"] == "running"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"owner": ""},
        {"owner": "a b"},
        {"owner": "x", "lease_s": 0},
        {"owner": "x", "lease_s": 10_000},
        {"owner": "x", "surprise": 1},
    ],
)
def test_malformed_lease_requests_are_400(trainer: httpx.Client, body: dict[str, Any]) -> None:
    resp = trainer.post(f"{JOBS}/lease", json=body)
    assert resp.status_code == 400, resp.text


def test_malformed_heartbeats_are_400(trainer: httpx.Client) -> None:
    job_id = "trj_" + secrets.token_hex(8)
    for body in (
        {"owner": "x", "progress": {"loss": float("nan")}},
        {"owner": "x", "log_lines": ["nul\u0000"]},
        {"owner": "x", "log_lines": ["x"] * 1001},
    ):
        resp = trainer.post(
            f"{JOBS}/{job_id}/heartbeat",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 400, (body, resp.text)
