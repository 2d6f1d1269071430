"""`make run` brings the cloud and the edge up, answers the README's curl, closes the review loop
through its own stack, and stops cleanly on SIGTERM; its console has one readable line per event and
no request or poll lines, which its JSON log files keep."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.processes import ManagedProcess, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
DIGIT = "det_DemoWhichDigit0000000000000"
SERVICES = ("gateway", "edge-api", "inference", "cloud-worker", "cloud-api")
# Every service `make run` starts, and those it waits for until they answer their health check.
STARTED = (*SERVICES, "trainer", "updater", "streams")
HEALTHY = ("cloud-api", "inference", "edge-api", "updater", "gateway", "streams")
LOGS = ROOT / ".intellioptics" / "logs"
# What per-request and poll lines look like, in JSON or rendered (`--verbose`).
REQUEST_LINES = re.compile(r'"msg": "request"|HTTP Request:|/health/|training-jobs/lease|-> \d{3} in ')


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout


def logged_since(started: float, service: str) -> list[dict[str, Any]]:
    """The records of a service's JSON log files (runs append to them, rotated: .1 is older) since then."""
    records = []
    for path in (LOGS / f"{service}.jsonl.1", LOGS / f"{service}.jsonl"):
        text = path.read_text() if path.exists() else ""
        # While make run writes, its last line may not be whole yet: only whole lines count.
        records += [json.loads(line) for line in text.split("\n")[:-1]]
    return [record for record in records if record.get("ts", 0) >= started]


def lease_polls(started: float) -> list[dict[str, Any]]:
    return [r for r in logged_since(started, "cloud-api") if r.get("path") == "/api/v1/training-jobs/lease"]


def wait_until(done: Callable[[], bool], run: ManagedProcess, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert run.poll() is None, f"make run exited before {what}:\n{run.output_tail()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{run.output_tail()}"
        time.sleep(0.2)


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
    # The trainer's token is where that cloud writes it: the trainer polls it for jobs every 5 s.
    env["TRAINER_API_TOKEN_FILE"] = str(tmp_path / "cloud" / "trainer-token")
    started = time.time()
    console: list[str] = []
    run = ManagedProcess(
        "make-run", ["make", "--no-print-directory", "run"], env=env, cwd=ROOT, output=console.append
    )
    run.start()
    # Sent with the README's curl: the edge's JSON log must hold its request line, the console not.
    request_id = "req_maketest" + secrets.token_hex(8)
    try:
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        cloud = f"http://127.0.0.1:{ports['CLOUD_PORT']}"
        # First start on a fresh clone builds the demo models; allow for it.
        wait_for_http(f"{gateway}/health/live", process=run, timeout=900)
        wait_until(lambda: any("IntelliOptics is up" in line for line in console), run, "the banner")

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
                "-H",
                f"x-request-id: {request_id}",
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
        wait_until(lambda: bool(lease_polls(started)), run, "a lease poll of the trainer")
    finally:
        # Like Ctrl-C in a terminal: the signal reaches make and the launcher (one process group).
        run.send_signal(signal.SIGTERM)
        # A hang guard, not a timing: each service gets its stop timeout (10 s) in turn, and on a busy
        # machine the trainer and the updater may use all of theirs.
        try:
            run.wait(timeout=180)
        except subprocess.TimeoutExpired:
            stuck = run.output_tail(60)
        else:
            stuck = ""
        run.stop()
    assert not stuck, f"make run still ran 180 s after SIGTERM; its last lines:\n{stuck}"
    log = "\n".join(console)
    # One readable line per event: each service started, the HTTP ones ready, all of them stopped.
    for service in STARTED:
        assert re.search(rf"^\d\d:\d\d:\d\d {re.escape(service)} +started \(pid \d+\)$", log, re.M), log
        # (With its status when it did not stop in its time and was killed.)
        assert re.search(rf"^\d\d:\d\d:\d\d {re.escape(service)} +stopped( \(status -?\d+\))?$", log, re.M), (
            log
        )
    for service in HEALTHY:
        assert re.search(
            rf"^\d\d:\d\d:\d\d {re.escape(service)} +ready at http://127\.0\.0\.1:\d+ ", log, re.M
        ), log
    assert re.search(rf"cloud-api +escalated {unsure['id']} for review \(.*; detector {DIGIT}", log), log
    assert re.search(r"cloud-api +review item \S+ answered by a person$", log, re.M), log
    # No request or poll lines, and no JSON record as it is, although requests were made all along.
    assert not [line for line in console if REQUEST_LINES.search(line) or '{"ts": ' in line], log
    assert request_id not in log and "\x1b[" not in log
    # The JSON log files hold them: the curl's request at the edge, the trainer's lease polls at the cloud.
    edge_api = logged_since(started, "edge-api")
    assert any(r.get("request_id") == request_id and r.get("status") == 200 for r in edge_api), edge_api[-5:]
    assert lease_polls(started)
    notes = logged_since(started, "launcher")
    assert any(r.get("service") == "trainer" and r["msg"].startswith("started (pid ") for r in notes), notes
    assert all(port_is_free(p) for p in ports.values()), "a service outlived make run"
    assert os.path.isdir(ROOT / ".intellioptics" / "data" / "models")
