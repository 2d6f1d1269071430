"""Roles that fit: a camera's device token changes nothing it cannot undo (no detector deletion or
update) and runs no training job; the trainer's `trainer` token runs the whole job (lease, heartbeat,
complete, fail, export, backbone, embeddings, bundle, reports, promote) and can do nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.app.db.models import Role
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import png
from tests.support.cloud_factories_http import (
    DETECTORS,
    new_detector,
    register_tiny_backbone,
    store_embeddings,
    upload_metrics_report,
    upload_tiny_version,
)
from tests.support.cloud_factories_worker import Tokens, private_database, role_clients, seed_tokens

pytestmark = pytest.mark.in_process

JOBS = "/api/v1/training-jobs"


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)  # the lease takes any queued job: a queue of our own


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture(scope="module")
def clients(cloud: CloudServer, tokens: Tokens) -> Iterator[dict[Role, httpx.Client]]:
    yield from role_clients(cloud, tokens)


@pytest.fixture(scope="module")
def device(clients: dict[Role, httpx.Client]) -> httpx.Client:
    return clients[Role.DEVICE]


@pytest.fixture(scope="module")
def trainer(clients: dict[Role, httpx.Client]) -> httpx.Client:
    return clients[Role.TRAINER]


@pytest.fixture(scope="module")
def admin(clients: dict[Role, httpx.Client]) -> httpx.Client:
    return clients[Role.ADMIN]


def queue_job(admin: httpx.Client, detector_id: str) -> str:
    resp = admin.post(JOBS, json={"detector_id": detector_id})
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def lease(client: httpx.Client, owner: str) -> httpx.Response:
    return client.post(f"{JOBS}/lease", json={"owner": owner, "lease_s": 60})


# --- devices ----------------------------------------------------------------------------------------


def test_a_device_cannot_delete_a_detector(device: httpx.Client) -> None:
    detector_id, queries = new_detector(device, images=1)
    assert device.delete(f"{DETECTORS}/{detector_id}").status_code == 403
    assert device.get(f"{DETECTORS}/{detector_id}").status_code == 200
    assert device.get(f"/device-api/v1/image-queries/{queries[0]}").status_code == 200


def test_a_device_cannot_update_a_detector(device: httpx.Client) -> None:
    detector_id, _ = new_detector(device)
    for body in ({"confidence_threshold": 0.5}, {"status": "OFF"}, {"patience_time": 5}):
        assert device.patch(f"{DETECTORS}/{detector_id}", json=body).status_code == 403
    detector = device.get(f"{DETECTORS}/{detector_id}").json()
    assert detector["confidence_threshold"] == 0.9 and detector["status"] == "ON"


def test_a_device_cannot_run_training_jobs(device: httpx.Client, admin: httpx.Client) -> None:
    detector_id, _ = new_detector(device)
    job_id = queue_job(admin, detector_id)
    owner = {"owner": "camera"}
    assert lease(device, "camera").status_code == 403
    assert device.post(f"{JOBS}/{job_id}/heartbeat", json=owner).status_code == 403
    assert (
        device.post(f"{JOBS}/{job_id}/complete", json={**owner, "result_version_id": None}).status_code == 403
    )
    assert device.post(f"{JOBS}/{job_id}/fail", json={**owner, "error": "no"}).status_code == 403
    assert device.post(f"/api/v1/detectors/{detector_id}/exports").status_code == 403
    # Following a job stays open to devices (scripts and benchmarks watch their jobs).
    assert device.get(f"{JOBS}/{job_id}").json()["status"] == "queued"
    assert admin.post(f"{JOBS}/{job_id}/cancel").status_code == 200


# --- the trainer --------------------------------------------------------------------------------------


def test_the_first_start_makes_the_trainer_account_a_trainer(cloud: CloudServer) -> None:
    token = (cloud.data_dir / "trainer-token").read_text().strip()
    with cloud.client(token) as http:
        me = http.get("/device-api/v1/me").json()
        assert http.get("/api/v1/admin/users").status_code == 403
    assert me["username"] == "trainer" and me["role"] == "trainer" and me["is_superuser"] is False


def test_the_trainer_leases_heartbeats_completes_and_fails_jobs(
    trainer: httpx.Client, admin: httpx.Client, device: httpx.Client
) -> None:
    for _ in range(2):
        queue_job(admin, new_detector(device)[0])
    owner = "trainer-roles"
    first = lease(trainer, owner)
    assert first.status_code == 200, first.text
    job_id = first.json()["id"]
    beat = trainer.post(
        f"{JOBS}/{job_id}/heartbeat", json={"owner": owner, "progress": {"epoch": 1}, "log_lines": ["one"]}
    )
    assert beat.status_code == 200 and beat.json()["cancel_requested"] is False
    done = trainer.post(f"{JOBS}/{job_id}/complete", json={"owner": owner, "result_version_id": None})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"

    second = lease(trainer, owner)
    assert second.status_code == 200, second.text
    failed = trainer.post(
        f"{JOBS}/{second.json()['id']}/fail", json={"owner": owner, "error": "out of memory"}
    )
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    assert trainer.get(f"{JOBS}/{job_id}/logs").status_code == 200


def test_the_trainer_uploads_what_a_job_makes(
    trainer: httpx.Client, device: httpx.Client, tmp_path: Path
) -> None:
    """Export, backbone, embeddings, bundle, reports, promote: every call training/service/job.py makes."""
    detector_id, queries = new_detector(device, images=2)
    export = trainer.post(f"/api/v1/detectors/{detector_id}/exports")
    assert export.status_code == 202, export.text
    assert trainer.get(f"/api/v1/exports/{export.json()['id']}").status_code == 200

    assert trainer.get(f"/api/v1/backbones/{'0' * 64}").status_code == 404
    backbone = register_tiny_backbone(trainer, tmp_path)
    assert trainer.get(f"/api/v1/backbones/{backbone.sha256}").status_code == 200
    assert trainer.get(f"/api/v1/backbones/{backbone.sha256}/download").status_code == 200
    assert store_embeddings(trainer, backbone, queries) == 2

    model_id = upload_tiny_version(trainer, detector_id, backbone, tmp_path)["id"]
    upload_metrics_report(trainer, model_id)
    assert trainer.post(f"/api/v1/models/{model_id}/promote").status_code == 200
    fetched = trainer.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/")
    assert fetched.status_code == 200 and fetched.json()["model_version_id"] == model_id
    assert trainer.get(f"/api/v1/models/{model_id}/download").status_code == 200


def test_the_trainer_can_do_nothing_else(
    trainer: httpx.Client, admin: httpx.Client, device: httpx.Client
) -> None:
    detector_id, queries = new_detector(device, images=1)
    job_id = queue_job(admin, detector_id)
    refused = {
        "review": trainer.get("/api/v1/review/queues"),
        "claim": trainer.post("/api/v1/review/claim"),
        "delete a detector": trainer.delete(f"{DETECTORS}/{detector_id}"),
        "update a detector": trainer.patch(f"{DETECTORS}/{detector_id}", json={"status": "OFF"}),
        "create a detector": trainer.post(DETECTORS, json={"name": "nope", "query": "?"}),
        "list detectors": trainer.get(DETECTORS),
        "submit an image": trainer.post(
            "/device-api/v1/image-queries", params={"detector_id": detector_id}, content=png(1)
        ),
        "read a query": trainer.get(f"/device-api/v1/image-queries/{queries[0]}"),
        "label": trainer.post("/device-api/v1/labels", json={"label": "YES", "image_query_id": queries[0]}),
        "users": trainer.get("/api/v1/admin/users"),
        "tokens": trainer.post("/api/v1/admin/tokens", json={"user_id": "usr_x", "name": "more"}),
        "audit log": trainer.get("/api/v1/audit"),
        "restore": trainer.post(f"/api/v1/admin/detectors/{detector_id}/restore"),
        "queue a job": trainer.post(JOBS, json={"detector_id": detector_id}),
        "cancel a job": trainer.post(f"{JOBS}/{job_id}/cancel"),
        "roll back": trainer.post(f"/api/v1/detectors/{detector_id}/models/rollback"),
        "delete a model": trainer.delete("/api/v1/models/mdl_x"),
        "hubs": trainer.get("/api/v1/hubs"),
        "list models": trainer.get(f"/api/v1/detectors/{detector_id}/models"),
    }
    served = {what: resp.status_code for what, resp in refused.items() if resp.status_code != 403}
    assert not served, f"the trainer was served: {served}"
    assert admin.post(f"{JOBS}/{job_id}/cancel").status_code == 200


def test_reviewers_keep_the_queue_and_get_no_training_calls(
    clients: dict[Role, httpx.Client], device: httpx.Client
) -> None:
    reviewer = clients[Role.REVIEWER]
    assert reviewer.get("/api/v1/review/queues").status_code == 200
    assert lease(reviewer, "reviewer").status_code == 403
    assert reviewer.delete(f"{DETECTORS}/{new_detector(device)[0]}").status_code == 403
