"""`make run` brings the local stack up, answers the README's curl, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from launcher.processes import ManagedProcess, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
DIGIT = "det_DemoWhichDigit0000000000000"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_run_serves_the_readme_curl_and_stops_on_sigterm(tmp_path: Path, digits) -> None:
    ports = {"GATEWAY_PORT": free_port(), "EDGE_PORT": free_port(), "INFERENCE_PORT": free_port()}
    env = {k: str(v) for k, v in ports.items()}
    env["INTELLIOPTICS_CLOUD_URL"] = f"http://127.0.0.1:{free_port()}"  # no cloud: offline edge
    run = ManagedProcess("make-run", ["make", "--no-print-directory", "run"], env=env, cwd=ROOT)
    run.start()
    try:
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        # First start on a fresh clone builds the demo models; allow for it.
        wait_for_http(f"{gateway}/health/live", process=run, timeout=600)
        image = tmp_path / "digit.jpg"
        image.write_bytes(digits[0][0])
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--fail-with-body",
                "--data-binary",
                f"@{image}",
                "-H",
                "Content-Type: image/jpeg",
                f"{gateway}/device-api/v1/image-queries?detector_id={DIGIT}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        iq = json.loads(out.stdout)
        assert iq["id"].startswith("iq_") and iq["detector_id"] == DIGIT
        assert iq["result"]["label"] in [str(i) for i in range(10)]
    finally:
        # Like Ctrl-C in a terminal: the signal reaches make and the launcher (one process group).
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        run.stop()
    log = run.output_tail(400)
    for service in ("gateway", "edge-api", "inference"):
        assert f"stopped {service}" in log, log
    assert all(port_is_free(p) for p in ports.values()), "a service outlived make run"
    assert os.path.isdir(ROOT / ".intellioptics" / "data" / "models")
