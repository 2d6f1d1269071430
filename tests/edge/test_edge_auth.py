"""Who may call the edge, end to end: real inference, edge-api and nginx, a fake cloud that vouches for
DEVICE_TOKEN (a device) and FAKE_ADMIN_TOKEN (an admin), and the unmodified SDK."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from groundlight import ApiTokenError, Groundlight

from common.wire.edge_facts import EdgeFacts
from edge.api.settings import LOCAL_TOKENS_FILE
from launcher.processes import free_port
from tests.edge.conftest import DIGIT, edge_config, wait_until
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FAKE_ADMIN_TOKEN, FakeCloud
from tests.support.stack import ADMIN, DEVICE, INTERNAL, ROOT, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
WRONG = {"x-api-token": "io_wrongtokenfortests_" + "w" * 24}
SECRET_URL = "rtsp://cam:s3cret-pw@10.0.0.7:554/live"
REDACTED_URL = "rtsp://cam:***@10.0.0.7:554/live"


@pytest.fixture(autouse=True)
def _token_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDLIGHT_TOKEN_DIR", str(tmp_path / "sdk-tokens"))


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    cloud = FakeCloud(free_port()).start()
    s = EdgeStack(tmp_path_factory.mktemp("auth"), demo_models, cloud, edge_env={"EDGE_LOG_LEVEL": "info"})
    try:
        s.start(edge_config())
        yield s
    finally:
        s.stop()
        cloud.stop()


def fake(stack: EdgeStack) -> FakeCloud:
    assert isinstance(stack.cloud, FakeCloud)
    return stack.cloud


def submit(stack: EdgeStack, image: bytes, headers: dict[str, str], url: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{url or stack.gateway_url}{IQ_PATH}",
        params={"detector_id": DIGIT},
        content=image,
        headers=headers,
        timeout=15,
    )


def camera_routes(iq_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/edge-config"),
        ("PUT", "/edge-config"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("POST", "/outbox/redrive"),
        ("GET", f"{IQ_PATH}/{iq_id}"),
        ("GET", "/device-api/v1/me"),
        ("GET", f"/device-api/v1/detectors/{DIGIT}"),
        ("GET", "/edge-detector-readiness"),
    ]


def an_image_query(stack: EdgeStack, image: bytes) -> dict[str, Any]:
    resp = submit(stack, image, DEVICE)
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def test_without_a_token_nothing_but_health_answers_and_nothing_goes_to_the_cloud(
    stack: EdgeStack, digits
) -> None:
    iq = an_image_query(stack, digits[0][0])
    before = len(fake(stack).state.fallbacks())
    for headers in ({}, WRONG):
        for method, path in [*camera_routes(iq["id"]), ("POST", f"{IQ_PATH}?detector_id={DIGIT}")]:
            resp = httpx.request(
                method, f"{stack.gateway_url}{path}", headers=headers, content=b"{}", timeout=10
            )
            assert resp.status_code == 401, f"{method} {path}: {resp.status_code} {resp.text}"
            assert resp.json()["detail"] and "Traceback" not in resp.text
    assert len(fake(stack).state.fallbacks()) == before
    assert httpx.get(f"{stack.gateway_url}/health/live", timeout=10).status_code == 200


def test_a_wrong_token_is_asked_about_once_and_fails_the_sdk_constructor(stack: EdgeStack) -> None:
    wrong = WRONG["x-api-token"]
    for _ in range(3):
        assert (
            httpx.get(f"{stack.gateway_url}/device-api/v1/me", headers=WRONG, timeout=10).status_code == 401
        )
    with pytest.raises(ApiTokenError):
        Groundlight(endpoint=stack.gateway_url, api_token=wrong)
    assert fake(stack).state.me_calls[wrong] == 1  # the refusal is kept for a while


def test_a_device_token_may_not_operate_the_edge(stack: EdgeStack) -> None:
    for method, path in camera_routes("iq_x")[:5]:
        resp = httpx.request(method, f"{stack.gateway_url}{path}", headers=DEVICE, content=b"{}", timeout=10)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code} {resp.text}"
        assert "operator" in resp.json()["detail"]


@pytest.mark.parametrize(
    "operator", [ADMIN, {"x-api-token": FAKE_ADMIN_TOKEN}], ids=["edge-admin", "cloud-admin"]
)
def test_the_edge_operator_and_cloud_admins_may(stack: EdgeStack, operator: dict[str, str]) -> None:
    for path in ("/status", "/metrics", "/edge-config"):
        assert httpx.get(f"{stack.gateway_url}{path}", headers=operator, timeout=10).status_code == 200, path
    # Prometheus-style scrapers send a bearer token instead.
    bearer = {"Authorization": f"Bearer {operator['x-api-token']}"}
    assert httpx.get(f"{stack.gateway_url}/metrics", headers=bearer, timeout=10).status_code == 200


def test_camera_passwords_never_leave_the_edge_and_a_redacted_put_keeps_them(stack: EdgeStack) -> None:
    config = {**edge_config(), "streams": [{"name": "dock", "url": SECRET_URL, "detector_id": DIGIT}]}
    put = httpx.put(f"{stack.gateway_url}/edge-config", json=config, headers=ADMIN, timeout=10)
    assert put.status_code == 200, put.text
    assert put.json()["streams"][0]["url"] == REDACTED_URL

    shown = httpx.get(f"{stack.gateway_url}/edge-config", headers=ADMIN, timeout=10).json()
    assert shown["streams"][0]["url"] == REDACTED_URL
    status = httpx.get(f"{stack.gateway_url}/status", headers=ADMIN, timeout=10).json()
    assert status["streams"]["streams"][0]["url"] == REDACTED_URL

    # Send the redacted form back with a change: the stored password stays.
    shown["streams"][0]["fps"] = 3
    again = httpx.put(f"{stack.gateway_url}/edge-config", json=shown, headers=ADMIN, timeout=10)
    assert again.status_code == 200, again.text
    kept = httpx.get(f"{stack.edge_url}/internal/edge-config", headers=INTERNAL, timeout=10).json()
    assert kept["streams"][0] == {**kept["streams"][0], "url": SECRET_URL, "fps": 3}

    # A redacted URL that stands for no stored stream is refused, and changes nothing.
    shown["streams"][0]["name"] = "another"
    bad = httpx.put(f"{stack.gateway_url}/edge-config", json=shown, headers=ADMIN, timeout=10)
    assert bad.status_code == 400 and "streams.0.url" in bad.json()["detail"]
    assert httpx.get(f"{stack.edge_url}/internal/edge-config", headers=INTERNAL, timeout=10).json() == kept
    # Only the edge's own services read the secret; the gateway does not even route there.
    assert httpx.get(f"{stack.edge_url}/internal/edge-config", headers=ADMIN, timeout=10).status_code == 403
    assert (
        httpx.get(f"{stack.gateway_url}/internal/edge-config", headers=INTERNAL, timeout=10).status_code
        == 404
    )

    assert stack.edge is not None
    assert "s3cret-pw" not in stack.edge.output_tail(1000)
    stack.put_config(edge_config())


def test_the_box_s_services_learn_the_edge_id_and_outbox_depth_without_calling_status(
    stack: EdgeStack,
) -> None:
    """The updater's heartbeat reads /internal/facts, which asks no other service (edge-api's /status
    asks the updater: the updater must not ask it back)."""
    facts = httpx.get(f"{stack.edge_url}/internal/facts", headers=INTERNAL, timeout=10)
    assert facts.status_code == 200, facts.text
    parsed = EdgeFacts.model_validate_json(facts.content)
    status = stack.status()
    assert parsed.edge_id == status["edge_id"]
    assert parsed.outbox.model_dump() == {
        k: status["outbox"][k] for k in ("pending", "dead", "oldest_pending_age_s")
    }
    # The edge's own services only: not the operator, and not through the gateway.
    assert httpx.get(f"{stack.edge_url}/internal/facts", headers=ADMIN, timeout=10).status_code == 403
    assert httpx.get(f"{stack.gateway_url}/internal/facts", headers=INTERNAL, timeout=10).status_code == 404


def test_the_internal_services_answer_only_the_internal_token(stack: EdgeStack, digits) -> None:
    infer = f"{stack.inference_url}/infer"
    for headers in ({}, DEVICE, ADMIN, {"x-internal-token": "guess"}):
        resp = httpx.post(
            infer, params={"detector_id": DIGIT}, content=digits[0][0], headers=headers, timeout=10
        )
        assert resp.status_code == 401 and "x-internal-token" in resp.json()["detail"]
        assert httpx.get(f"{stack.inference_url}/models", headers=headers, timeout=10).status_code == 401
    ok = httpx.post(infer, params={"detector_id": DIGIT}, content=digits[0][0], headers=INTERNAL, timeout=10)
    assert ok.status_code == 200
    assert httpx.get(f"{stack.inference_url}/health/live", timeout=10).status_code == 200


# --- the cloud goes away ----------------------------------------------------------------------------------


@pytest.fixture
def outage_stack(demo_models: Path, tmp_path: Path) -> Iterator[EdgeStack]:
    cloud = FakeCloud(free_port()).start()
    s = EdgeStack(tmp_path, demo_models, cloud)
    try:
        s.start(edge_config())
        yield s
    finally:
        s.stop()
        cloud.stop()


def tokens_cli(stack: EdgeStack, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "edge.api.tokens", "--file", str(stack.data_dir / LOCAL_TOKENS_FILE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_with_the_cloud_down_a_seen_token_works_an_unseen_one_is_refused_even_after_a_restart(
    outage_stack: EdgeStack, digits
) -> None:
    stack = outage_stack
    cloud = fake(stack)
    stranger = "io_cameranotseenyet_" + "n" * 24
    cloud.accept_token(stranger, "new-camera")
    assert Groundlight(endpoint=stack.gateway_url, api_token=DEVICE_TOKEN).whoami() == "device@fake.cloud"

    cloud.stop()
    assert submit(stack, digits[1][0], DEVICE).status_code == 200
    refused = submit(stack, digits[1][0], {"x-api-token": stranger})
    assert refused.status_code == 401 and "could not verify" in refused.json()["detail"]
    with pytest.raises(ApiTokenError):
        Groundlight(endpoint=stack.gateway_url, api_token=stranger)

    # edge-api reboots while the cloud is still away: what it verified is kept in its database.
    stack.kill_edge()
    stack.start_edge()
    assert submit(stack, digits[2][0], DEVICE).status_code == 200
    assert Groundlight(endpoint=stack.gateway_url, api_token=DEVICE_TOKEN).whoami() == "device@fake.cloud"
    assert submit(stack, digits[2][0], {"x-api-token": stranger}).status_code == 401

    # A token listed locally works without any cloud, and stops working once removed.
    local = tokens_cli(stack, "add", "dock-camera").strip().splitlines()[-1]
    wait_until(
        lambda: submit(stack, digits[3][0], {"x-api-token": local}).status_code == 200, what="local token"
    )
    assert "dock-camera\tdevice" in tokens_cli(stack, "list")
    tokens_cli(stack, "remove", "dock-camera")
    wait_until(lambda: submit(stack, digits[3][0], {"x-api-token": local}).status_code == 401, what="removal")

    # The cloud is back: the new camera is vouched for within seconds.
    cloud.start()
    wait_until(
        lambda: submit(stack, digits[4][0], {"x-api-token": stranger}).status_code == 200,
        timeout=20,
        what="the new camera accepted once the cloud answers",
    )


def test_a_token_revoked_in_the_cloud_stops_working_after_its_verdict_expires(
    demo_models: Path, tmp_path: Path, digits
) -> None:
    cloud = FakeCloud(free_port()).start()
    stack = EdgeStack(tmp_path, demo_models, cloud, edge_env={"EDGE_TOKEN_TTL_S": "1"})
    token = "io_soontoberevoked_" + "r" * 24
    cloud.accept_token(token)
    try:
        stack.start(edge_config())
        assert submit(stack, digits[0][0], {"x-api-token": token}).status_code == 200
        cloud.revoke_token(token)
        time.sleep(1.2)
        wait_until(
            lambda: submit(stack, digits[0][0], {"x-api-token": token}).status_code == 401,
            timeout=10,
            what="the revoked token refused",
        )
        assert submit(stack, digits[0][0], DEVICE).status_code == 200
    finally:
        stack.stop()
        cloud.stop()
