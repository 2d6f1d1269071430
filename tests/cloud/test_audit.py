"""The audit log: every administrative change is recorded with who, what, when, the target and the
details, in the same transaction as the change (a refused change leaves no event); admins read it at
`GET /api/v1/audit`, newest first and paged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.app.db.models import Role
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_http import (
    DETECTORS,
    new_detector,
    register_tiny_backbone,
    upload_tiny_version,
)
from tests.support.cloud_factories_worker import (
    Tokens,
    private_database,
    purge_deleted_detectors,
    role_clients,
    seed_tokens,
)

pytestmark = pytest.mark.in_process

AUDIT = "/api/v1/audit"


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture(scope="module")
def clients(cloud: CloudServer, tokens: Tokens) -> Iterator[dict[Role, httpx.Client]]:
    yield from role_clients(cloud, tokens)


@pytest.fixture(scope="module")
def admin(clients: dict[Role, httpx.Client]) -> httpx.Client:
    return clients[Role.ADMIN]


@pytest.fixture(scope="module")
def device(clients: dict[Role, httpx.Client]) -> httpx.Client:
    return clients[Role.DEVICE]


def events(admin: httpx.Client, target_id: str) -> list[dict[str, Any]]:
    """This target's events, oldest first."""
    resp = admin.get(AUDIT, params={"target_id": target_id, "limit": 500})
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()["results"]))


def actions(admin: httpx.Client, target_id: str) -> list[str]:
    return [event["action"] for event in events(admin, target_id)]


def test_user_and_token_changes_are_recorded(admin: httpx.Client) -> None:
    made = admin.post("/api/v1/admin/users", json={"username": "cam-7", "role": "device"}).json()
    token = admin.post("/api/v1/admin/tokens", json={"user_id": made["id"], "name": "line 7"}).json()
    admin.post(f"/api/v1/admin/tokens/{token['id']}/revoke")
    admin.post(f"/api/v1/admin/tokens/{token['id']}/revoke")  # again: no change, no second event
    admin.post(f"/api/v1/admin/users/{made['id']}/deactivate")

    (created, deactivated) = events(admin, made["id"])
    assert created["action"] == "user.create" and created["detail"] == {"username": "cam-7", "role": "device"}
    assert created["actor_role"] == "admin" and created["actor_name"].startswith("admin-")
    assert deactivated["action"] == "user.deactivate"
    assert actions(admin, token["id"]) == ["token.create", "token.revoke"]
    issued = events(admin, token["id"])[0]
    assert issued["detail"]["snippet"] == token["snippet"] and token["token"] not in str(issued)
    assert abs(datetime.fromisoformat(issued["at"]) - datetime.now(UTC)) < timedelta(minutes=5)


def test_detector_changes_are_recorded_with_who_made_them(
    cloud: CloudServer, admin: httpx.Client, device: httpx.Client
) -> None:
    detector_id, _ = new_detector(device)
    admin.patch(f"{DETECTORS}/{detector_id}", json={"confidence_threshold": 0.7})
    admin.patch(f"{DETECTORS}/{detector_id}", json={"confidence_threshold": 0.7})  # no change, no event
    admin.delete(f"{DETECTORS}/{detector_id}")
    admin.post(f"/api/v1/admin/detectors/{detector_id}/restore")
    admin.delete(f"{DETECTORS}/{detector_id}")
    later = datetime.now(UTC) + timedelta(days=31)
    while purged := purge_deleted_detectors(cloud.database_url, cloud.data_dir, later):
        if detector_id in purged:
            break

    log = events(admin, detector_id)
    assert [e["action"] for e in log] == [
        "detector.create",
        "detector.update",
        "detector.delete",
        "detector.restore",
        "detector.delete",
        "detector.purge",
    ]
    create, update, delete, _, _, purge = log
    assert create["actor_role"] == "device" and create["target_type"] == "detector"
    assert update["detail"]["confidence_threshold"] == {"from": 0.9, "to": 0.7}
    assert delete["actor_role"] == "admin" and "purge_after" in delete["detail"]
    assert purge["actor_id"] is None and purge["actor_name"] == "worker"
    assert purge["detail"]["name"] == create["detail"]["name"]


def test_model_alias_changes_are_recorded(
    clients: dict[Role, httpx.Client], admin: httpx.Client, device: httpx.Client, tmp_path: Path
) -> None:
    trainer = clients[Role.TRAINER]
    detector_id, _ = new_detector(device)
    backbone = register_tiny_backbone(trainer, tmp_path)
    first = upload_tiny_version(trainer, detector_id, backbone, tmp_path, "v1-audit", promote=True)
    second = upload_tiny_version(trainer, detector_id, backbone, tmp_path, "v2-audit")
    assert trainer.post(f"/api/v1/models/{second['id']}/promote").status_code == 200
    assert admin.post(f"/api/v1/detectors/{detector_id}/models/rollback").status_code == 200
    # Refused (the production version): no event.
    assert admin.delete(f"/api/v1/models/{first['id']}").status_code == 409
    assert admin.delete(f"/api/v1/models/{second['id']}").status_code == 204

    assert actions(admin, first["id"]) == ["model.promote", "model.rollback"]
    promote, delete = events(admin, second["id"])
    assert promote["action"] == "model.promote" and promote["actor_role"] == "trainer"
    assert promote["detail"] == {
        "detector_id": detector_id,
        "version": "v2-audit",
        "previous_model_id": first["id"],
    }
    assert delete["action"] == "model.delete" and delete["actor_role"] == "admin"


def test_training_jobs_queued_and_cancelled_by_an_admin_are_recorded(
    admin: httpx.Client, device: httpx.Client
) -> None:
    detector_id, _ = new_detector(device)
    job = admin.post("/api/v1/training-jobs", json={"detector_id": detector_id}).json()
    admin.post(f"/api/v1/training-jobs/{job['id']}/cancel")
    assert actions(admin, job["id"]) == ["training_job.create", "training_job.cancel"]


def test_the_log_is_newest_first_paged_and_filtered(admin: httpx.Client, device: httpx.Client) -> None:
    for _ in range(3):
        new_detector(device)
    everything = admin.get(AUDIT, params={"limit": 500}).json()
    ids = [event["id"] for event in everything["results"]]
    assert everything["count"] == len(ids) >= 3
    stamps = [event["at"] for event in everything["results"]]
    assert stamps == sorted(stamps, reverse=True) and ids == sorted(ids, reverse=True)
    page = admin.get(AUDIT, params={"limit": 2, "offset": 1}).json()
    assert [e["id"] for e in page["results"]] == ids[1:3] and page["count"] == everything["count"]
    created = admin.get(AUDIT, params={"action": "detector.create"}).json()
    assert created["count"] >= 3 and {e["action"] for e in created["results"]} == {"detector.create"}
    assert admin.get(AUDIT, params={"limit": 0}).status_code == 400


def test_only_admins_read_the_log(clients: dict[Role, httpx.Client]) -> None:
    for role in (Role.REVIEWER, Role.TRAINER, Role.DEVICE):
        assert clients[role].get(AUDIT).status_code == 403
