"""`make run` brings the cloud and the edge up, answers the README's curl, closes the review loop
through its own stack, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.processes import ManagedProcess, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
DIGIT = "det_DemoWhichDigit0000000000000"
SERVICES = ("gateway", "edge-api", "inference", "cloud-worker", "cloud-api")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout


def claim_in_review(reviewer: httpx.Client, iq_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Claim the digit detector's review items until this query's comes up (skipping any other)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = reviewer.post("/api/v1/review/claim", params={"detector_id": DIGIT})
        assert resp.status_code in (200, 204), resp.text
        if resp.status_code == 200:
            item: dict[str, Any] = resp.json()
            if item["image_query_id"] == iq_id:
                return item
            reviewer.post(f"/api/v1/review/items/{item['id']}/skip")
        else:
            time.sleep(0.5)
    raise AssertionError(f"{iq_id} never reached the review queue")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_make_run_serves_the_readme_curl_and_stops_on_sigterm(tmp_path: Path, digits, photos) -> None:
    ports = {
        "GATEWAY_PORT": free_port(),
        "GATEWAY_TLS_PORT": free_port(),
        "EDGE_PORT": free_port(),
        "INFERENCE_PORT": free_port(),
        "CLOUD_PORT": free_port(),
        "UPDATER_PORT": free_port(),
        "STREAMS_PORT": free_port(),
    }
    env = {k: str(v) for k, v in ports.items()}
    # A cloud of its own (fresh: its first start), beside the repository's demo models.
    token_file = tmp_path / "api-token"
    env["CLOUD_DATA_DIR"] = str(tmp_path / "cloud")
    env["CLOUD_API_TOKEN_FILE"] = str(token_file)
    run = ManagedProcess("make-run", ["make", "--no-print-directory", "run"], env=env, cwd=ROOT)
    run.start()
    try:
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        cloud = f"http://127.0.0.1:{ports['CLOUD_PORT']}"
        # First start on a fresh clone builds the demo models; allow for it.
        wait_for_http(f"{gateway}/health/live", process=run, timeout=900)

        # The cloud is up, wrote its device token on its first start and printed the accounts.
        assert json.loads(curl(f"{cloud}/health/ready"))["status"] == "ok"
        token = token_file.read_text().strip()
        log = run.output_tail(400)
        assert re.search(r"admin +admin / \S+", log) and re.search(r"reviewer +reviewer / \S+", log), log
        assert f"API token {token}" in log
        # The demo detectors are registered there, and the edge was given that token.
        detector = json.loads(curl("-H", f"x-api-token: {token}", f"{cloud}/device-api/v1/detectors/{DIGIT}"))
        assert detector["id"] == DIGIT and detector["mode"] == "MULTI_CLASS"
        assert f"the edge escalates to {cloud} with the API token in {token_file}" in log

        image = tmp_path / "digit.jpg"
        image.write_bytes(digits[0][0])
        iq = json.loads(
            curl(
                "--data-binary",
                f"@{image}",
                "-H",
                "Content-Type: image/jpeg",
                "-H",
                f"x-api-token: {token}",
                f"{gateway}/device-api/v1/image-queries?detector_id={DIGIT}",
            )
        )
        assert iq["id"].startswith("iq_") and iq["detector_id"] == DIGIT
        assert iq["result"]["label"] in [str(i) for i in range(10)]
        # Without a token the gateway refuses; over HTTPS (its own certificate) it answers the same.
        refused = httpx.get(f"{gateway}/device-api/v1/image-queries/{iq['id']}")
        assert refused.status_code == 401, refused.text
        cert = ROOT / ".intellioptics" / "data" / "tls" / "gateway.crt"
        over_tls = httpx.get(
            f"https://127.0.0.1:{ports['GATEWAY_TLS_PORT']}/device-api/v1/image-queries/{iq['id']}",
            headers={"x-api-token": token},
            verify=ssl.create_default_context(cafile=str(cert)),
        )
        assert over_tls.status_code == 200 and over_tls.json()["id"] == iq["id"], over_tls.text

        # The loop through make run's own stack: a photo is out of domain for the digit detector, so the
        # edge escalates it; the reviewer answers it in the cloud, and the edge then returns that answer.
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(photos[0])
        unsure = json.loads(
            curl(
                "--data-binary",
                f"@{photo}",
                "-H",
                "Content-Type: image/jpeg",
                "-H",
                f"x-api-token: {token}",
                f"{gateway}/device-api/v1/image-queries?detector_id={DIGIT}",
            )
        )
        assert unsure["intellioptics"]["escalated"] is True, unsure
        creds = json.loads((tmp_path / "cloud" / "credentials.json").read_text())
        with httpx.Client(base_url=cloud, timeout=30, headers={"Origin": cloud}) as reviewer:
            login = reviewer.post(
                "/login",
                data={"username": creds["reviewer_username"], "password": creds["reviewer_password"]},
            )
            assert login.status_code == 303, login.text
            item = claim_in_review(reviewer, unsure["id"])
            answered = reviewer.post(f"/api/v1/review/items/{item['id']}/answer", json={"label": "3"})
            assert answered.status_code == 200, answered.text
        for base in (gateway, cloud):
            headers = {"x-api-token": token}
            result = httpx.get(f"{base}/device-api/v1/image-queries/{unsure['id']}", headers=headers).json()[
                "result"
            ]
            assert (result["label"], result["confidence"], result["source"]) == ("3", 1.0, "HUMAN"), base
    finally:
        # Like Ctrl-C in a terminal: the signal reaches make and the launcher (one process group).
        run.send_signal(signal.SIGTERM)
        # A hang guard, not a timing: each service gets its stop timeout (10 s) in turn, and on a busy
        # machine the trainer and the updater may use all of theirs.
        run.wait(timeout=180)
        run.stop()
    log = run.output_tail(400)
    for service in SERVICES:
        assert f"stopped {service}" in log, log
    assert all(port_is_free(p) for p in ports.values()), "a service outlived make run"
    assert os.path.isdir(ROOT / ".intellioptics" / "data" / "models")
