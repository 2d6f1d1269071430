"""Administration of users and API tokens: tokens are shown once and stored hashed, revoked tokens
and deactivated users stop working, and only admins reach these routes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import PRINCIPAL_CACHE_TTL_S
from cloud.app.db.models import ApiToken
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_worker import Tokens, eventually, private_database, run_sync, seed_tokens

pytestmark = pytest.mark.in_process

# Other API processes may trust a credential they saw for this long after it is revoked.
REVOCATION_WAIT_S = PRINCIPAL_CACHE_TTL_S + 10


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


def create_user(cloud: CloudServer, admin_token: str, role: str, **extra: Any) -> dict[str, Any]:
    body = {"username": f"{role}-{secrets.token_hex(4)}", "role": role, **extra}
    if role != "device":
        body.setdefault("password", "a-long-password")
    with cloud.client(admin_token) as admin:
        resp = admin.post("/api/v1/admin/users", json=body)
    assert resp.status_code == 201, resp.text
    user: dict[str, Any] = resp.json()
    return user


def create_token(cloud: CloudServer, admin_token: str, user_id: str, name: str = "tests") -> dict[str, Any]:
    with cloud.client(admin_token) as admin:
        resp = admin.post("/api/v1/admin/tokens", json={"user_id": user_id, "name": name})
    assert resp.status_code == 201, resp.text
    token: dict[str, Any] = resp.json()
    return token


def status_of(cloud: CloudServer, token: str, path: str = "/device-api/v1/detectors") -> int:
    with cloud.client(token) as caller:
        return caller.get(path).status_code


def test_a_new_reviewer_token_works_and_its_secret_is_stored_hashed(
    cloud: CloudServer, cloud_db: support.TestDatabase, tokens: Tokens
) -> None:
    user = create_user(cloud, tokens.admin, "reviewer")
    assert user["role"] == "reviewer" and user["is_active"] is True
    created = create_token(cloud, tokens.admin, user["id"], name="ana's laptop")
    secret = created["token"]
    assert secret.startswith("io_") and created["snippet"] == secret[:20]

    # The reviewer is known (403 on an admin route, not 401) and a device route is refused by role.
    assert status_of(cloud, secret, "/api/v1/admin/users") == 403
    assert status_of(cloud, secret, "/device-api/v1/detectors") == 403

    async def stored(session: AsyncSession) -> list[str]:
        row = (await session.execute(select(ApiToken).where(ApiToken.id == created["id"]))).scalar_one()
        return [row.token_hash, row.snippet]

    token_hash, snippet = run_sync(cloud_db.url, stored)
    assert token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (token_hash, snippet)

    with cloud.client(tokens.admin) as admin:
        listed = admin.get("/api/v1/admin/tokens", params={"user_id": user["id"]}).json()
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0]
    assert listed[0]["name"] == "ana's laptop" and listed[0]["username"] == user["username"]
    assert listed[0]["last_used_at"] is not None and listed[0]["revoked_at"] is None


def test_a_device_token_created_by_an_admin_reaches_device_routes(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "device")
    secret = create_token(cloud, tokens.admin, user["id"])["token"]
    assert status_of(cloud, secret, "/device-api/v1/detectors") == 200
    assert status_of(cloud, secret, "/api/v1/admin/tokens") == 403


def test_a_revoked_token_is_refused(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "device")
    created = create_token(cloud, tokens.admin, user["id"])
    assert status_of(cloud, created["token"]) == 200

    with cloud.client(tokens.admin) as admin:
        revoked = admin.post(f"/api/v1/admin/tokens/{created['id']}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        # Revoking again changes nothing.
        assert admin.post(f"/api/v1/admin/tokens/{created['id']}/revoke").json() == revoked.json()
    eventually(lambda: status_of(cloud, created["token"]) == 401, timeout=REVOCATION_WAIT_S)


def test_a_deactivated_user_is_refused_with_every_token(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "device")
    first = create_token(cloud, tokens.admin, user["id"])["token"]
    second = create_token(cloud, tokens.admin, user["id"])["token"]
    assert status_of(cloud, first) == status_of(cloud, second) == 200

    with cloud.client(tokens.admin) as admin:
        resp = admin.post(f"/api/v1/admin/users/{user['id']}/deactivate")
        assert resp.status_code == 200, resp.text
        assert resp.json()["is_active"] is False
        listed = {u["id"]: u for u in admin.get("/api/v1/admin/users").json()}
        assert listed[user["id"]]["is_active"] is False
        # A deactivated user gets no new tokens.
        refused = admin.post("/api/v1/admin/tokens", json={"user_id": user["id"], "name": "again"})
        assert refused.status_code == 409
    eventually(lambda: status_of(cloud, first) == status_of(cloud, second) == 401, timeout=REVOCATION_WAIT_S)


def test_reviewers_and_devices_are_forbidden_on_admin_routes(cloud: CloudServer, tokens: Tokens) -> None:
    for token in (tokens.reviewer, tokens.device):
        with cloud.client(token) as caller:
            assert caller.get("/api/v1/admin/users").status_code == 403
            assert caller.get("/api/v1/admin/tokens").status_code == 403
            forbidden = caller.post(
                "/api/v1/admin/users", json={"username": "sneaky", "role": "admin", "password": "12345678"}
            )
            assert forbidden.status_code == 403
    with cloud.client(token=None) as anonymous:
        assert anonymous.get("/api/v1/admin/users").status_code == 401


def test_people_need_a_password_and_devices_get_none(cloud: CloudServer, tokens: Tokens) -> None:
    with cloud.client(tokens.admin) as admin:
        no_password = admin.post("/api/v1/admin/users", json={"username": "nopass", "role": "reviewer"})
        assert no_password.status_code == 400
        device_password = admin.post(
            "/api/v1/admin/users",
            json={"username": "devpass", "role": "device", "password": "a-long-password"},
        )
        assert device_password.status_code == 400
        bad_role = admin.post(
            "/api/v1/admin/users", json={"username": "x", "role": "root", "password": "12345678"}
        )
        assert bad_role.status_code == 400
        trainer_password = admin.post(
            "/api/v1/admin/users",
            json={"username": "trainpass", "role": "trainer", "password": "a-long-password"},
        )
        assert trainer_password.status_code == 400
        trainer = admin.post("/api/v1/admin/users", json={"username": "trainer-2", "role": "trainer"})
        assert trainer.status_code == 201 and trainer.json()["role"] == "trainer"


def test_a_taken_username_is_a_conflict(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "reviewer")
    with cloud.client(tokens.admin) as admin:
        again = admin.post(
            "/api/v1/admin/users",
            json={"username": user["username"], "role": "reviewer", "password": "another-password"},
        )
    assert again.status_code == 409


def test_the_last_active_admin_cannot_be_deactivated(cloud: CloudServer, tokens: Tokens) -> None:
    with cloud.client(tokens.admin) as admin:
        me = admin.get("/device-api/v1/me").json()["username"]
        others = [
            u
            for u in admin.get("/api/v1/admin/users").json()
            if u["role"] == "admin" and u["is_active"] and u["username"] != me
        ]
        # First start's admin besides this module's (the trainer account is no admin): all but the last may go.
        assert "admin" in {u["username"] for u in others}
        for user in others:
            assert admin.post(f"/api/v1/admin/users/{user['id']}/deactivate").status_code == 200
        remaining = [
            u for u in admin.get("/api/v1/admin/users").json() if u["role"] == "admin" and u["is_active"]
        ]
        assert [u["username"] for u in remaining] == [me]
        resp = admin.post(f"/api/v1/admin/users/{remaining[0]['id']}/deactivate")
        assert resp.status_code == 409
        assert admin.get("/api/v1/admin/users").status_code == 200


def test_unknown_users_and_tokens_are_404(cloud: CloudServer, tokens: Tokens) -> None:
    with cloud.client(tokens.admin) as admin:
        assert admin.post("/api/v1/admin/users/usr_unknown/deactivate").status_code == 404
        assert admin.post("/api/v1/admin/tokens/tok_unknown/revoke").status_code == 404
        assert (
            admin.post("/api/v1/admin/tokens", json={"user_id": "usr_unknown", "name": "x"}).status_code
            == 404
        )


def change_role(cloud: CloudServer, token: str, user_id: str, role: str) -> Any:
    with cloud.client(token) as caller:
        return caller.patch(f"/api/v1/admin/users/{user_id}", json={"role": role})


def test_a_role_change_applies_at_once_and_is_audited(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "reviewer")
    secret = create_token(cloud, tokens.admin, user["id"])["token"]
    assert status_of(cloud, secret, "/api/v1/admin/users") == 403

    promoted = change_role(cloud, tokens.admin, user["id"], "admin")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin" and promoted.json()["id"] == user["id"]
    # The cached credential was forgotten: no wait for its TTL in the process that made the change.
    assert status_of(cloud, secret, "/api/v1/admin/users") == 200
    assert change_role(cloud, tokens.admin, user["id"], "reviewer").json()["role"] == "reviewer"
    assert status_of(cloud, secret, "/api/v1/admin/users") == 403
    # The same role again changes nothing and records nothing.
    assert change_role(cloud, tokens.admin, user["id"], "reviewer").status_code == 200

    with cloud.client(tokens.admin) as admin:
        listed = {u["id"]: u for u in admin.get("/api/v1/admin/users").json()}
        audit = admin.get("/api/v1/audit", params={"target_id": user["id"], "action": "user.update"}).json()
    assert listed[user["id"]]["role"] == "reviewer"
    changes = [(e["detail"]["previous_role"], e["detail"]["role"]) for e in reversed(audit["results"])]
    assert changes == [("reviewer", "admin"), ("admin", "reviewer")]


def test_an_admin_cannot_demote_or_deactivate_themselves(cloud: CloudServer, tokens: Tokens) -> None:
    # A second admin, so that it is the self-check that refuses and not the last-admin one.
    other = create_user(cloud, tokens.admin, "admin")
    other_token = create_token(cloud, tokens.admin, other["id"])["token"]
    demoted = change_role(cloud, other_token, other["id"], "reviewer")
    assert demoted.status_code == 409 and "your own account" in demoted.json()["detail"]
    with cloud.client(other_token) as caller:
        gone = caller.post(f"/api/v1/admin/users/{other['id']}/deactivate")
        assert gone.status_code == 409 and "your own account" in gone.json()["detail"]
        assert caller.get("/api/v1/admin/users").status_code == 200  # still an active admin
    # Another admin can.
    assert change_role(cloud, tokens.admin, other["id"], "reviewer").json()["role"] == "reviewer"
    assert status_of(cloud, other_token, "/api/v1/admin/users") == 403


def test_people_stay_people_and_devices_stay_devices(cloud: CloudServer, tokens: Tokens) -> None:
    person = create_user(cloud, tokens.admin, "reviewer")
    device = create_user(cloud, tokens.admin, "device")
    to_device = change_role(cloud, tokens.admin, person["id"], "device")
    assert to_device.status_code == 409 and "create a new account" in to_device.json()["detail"]
    to_reviewer = change_role(cloud, tokens.admin, device["id"], "reviewer")
    assert to_reviewer.status_code == 409 and "API tokens only" in to_reviewer.json()["detail"]
    assert change_role(cloud, tokens.admin, device["id"], "trainer").json()["role"] == "trainer"


def test_a_bad_role_change_is_a_clear_4xx(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "reviewer")
    with cloud.client(tokens.admin) as admin:
        url = f"/api/v1/admin/users/{user['id']}"
        for body in ({"role": "root"}, {}, {"role": "admin", "password": "sneaky-extra"}, {"role": 7}):
            resp = admin.patch(url, json=body)
            assert resp.status_code == 400 and resp.json()["detail"], (body, resp.text)
        assert (
            admin.patch(url, content=b"not json", headers={"content-type": "application/json"}).status_code
            == 400
        )
        assert admin.patch("/api/v1/admin/users/usr_unknown", json={"role": "admin"}).status_code == 404
        assert admin.patch("/api/v1/admin/users/bad%20id", json={"role": "admin"}).status_code == 400


def test_only_admins_change_roles(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "reviewer")
    for token in (tokens.reviewer, tokens.device, tokens.trainer):
        assert change_role(cloud, token, user["id"], "admin").status_code == 403
        with cloud.client(token) as caller:
            assert caller.post(f"/api/v1/admin/users/{user['id']}/activate").status_code == 403
    assert change_role(cloud, "", user["id"], "admin").status_code == 401


def test_a_deactivated_user_can_be_activated_again(cloud: CloudServer, tokens: Tokens) -> None:
    user = create_user(cloud, tokens.admin, "device")
    secret = create_token(cloud, tokens.admin, user["id"])["token"]
    with cloud.client(tokens.admin) as admin:
        assert admin.post(f"/api/v1/admin/users/{user['id']}/deactivate").status_code == 200
        assert status_of(cloud, secret) == 401
        back = admin.post(f"/api/v1/admin/users/{user['id']}/activate")
        assert back.status_code == 200 and back.json()["is_active"] is True
        assert admin.post(f"/api/v1/admin/users/{user['id']}/activate").status_code == 200  # idempotent
        audit = admin.get("/api/v1/audit", params={"target_id": user["id"]}).json()
    assert status_of(cloud, secret) == 200
    assert [e["action"] for e in audit["results"]][:2] == ["user.activate", "user.deactivate"]
