"""The edge stack as real processes on free ports: inference, edge-api, nginx, and a cloud (the fake
one, or the real one from tests/support/cloud.py).

Every service gets the same internal token (INTERNAL_TOKEN) and edge-api the operator token
ADMIN_TOKEN; cameras use DEVICE_TOKEN, which both clouds vouch for. `DEVICE`, `ADMIN` and `INTERNAL`
are the headers to send.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from edge.api.auth.local_tokens import add_token, read_tokens, token_digest
from edge.api.settings import LOCAL_TOKENS_FILE
from launcher.gateway import NginxGateway
from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.fake_cloud import FakeCloud

ROOT = Path(__file__).resolve().parents[2]

INTERNAL_TOKEN = "internal-token-for-tests-" + "c" * 40
ADMIN_TOKEN = "io_edgeadminfortests_" + "d" * 24
INTERNAL_ENV = {"INTELLIOPTICS_INTERNAL_TOKEN": INTERNAL_TOKEN}
DEVICE = {"x-api-token": DEVICE_TOKEN}
ADMIN = {"x-api-token": ADMIN_TOKEN}
INTERNAL = {"x-internal-token": INTERNAL_TOKEN}


def start_inference(model_root: Path, port: int, **env: str) -> ManagedProcess:
    proc = ManagedProcess(
        "inference",
        [sys.executable, "-m", "edge.inference"],
        env={
            "INFERENCE_PORT": str(port),
            "INFERENCE_MODEL_ROOT": str(model_root),
            "INFERENCE_LOG_LEVEL": "warning",
            **INTERNAL_ENV,
            **env,
        },
        cwd=ROOT,
    ).start()
    wait_for_http(f"http://127.0.0.1:{port}/health/live", process=proc, timeout=60)
    return proc


@dataclass
class EdgeStack:
    workdir: Path
    model_root: Path
    cloud: FakeCloud | CloudServer
    inference_port: int = field(default_factory=free_port)
    edge_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    edge_env: dict[str, str] = field(default_factory=dict)
    # Tokens edge-api accepts without asking the cloud (its local token file): for stacks that start
    # with the cloud down.
    local_tokens: tuple[str, ...] = ()
    inference: ManagedProcess | None = None
    edge: ManagedProcess | None = None
    gateway: NginxGateway | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "edge-config.yaml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "edge-data"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def gateway_tls_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.tls_url

    @property
    def gateway_cert(self) -> Path:
        """The gateway's self-signed certificate (its own CA)."""
        assert self.gateway is not None
        return self.gateway.tls_cert

    def start(self, config: dict[str, Any]) -> EdgeStack:
        self.config_path.write_text(yaml.safe_dump(config))
        self.inference = start_inference(self.model_root, self.inference_port)
        self.start_edge()
        self.gateway = NginxGateway(
            self.workdir / "nginx",
            port=self.gateway_port,
            edge_api_upstream=f"127.0.0.1:{self.edge_port}",
            cloud_url=self.cloud.url,
        )
        self.gateway.start()
        return self

    def start_edge(self) -> None:
        listed = {t.sha256 for t in read_tokens(self.data_dir / LOCAL_TOKENS_FILE)}
        for i, token in enumerate(self.local_tokens):
            if token_digest(token) not in listed:
                add_token(self.data_dir / LOCAL_TOKENS_FILE, token, f"test-{i}")
        self.edge = ManagedProcess(
            "edge-api",
            [sys.executable, "-m", "edge.api"],
            env={
                "EDGE_PORT": str(self.edge_port),
                "EDGE_INFERENCE_URL": self.inference_url,
                "EDGE_CLOUD_URL": self.cloud.url,
                "EDGE_CONFIG_PATH": str(self.config_path),
                "EDGE_DATA_DIR": str(self.data_dir),
                "EDGE_OUTBOX_RETRY_BASE_S": "0.05",
                "EDGE_OUTBOX_RETRY_MAX_S": "0.5",
                "EDGE_CLOUD_PROBE_INTERVAL_S": "0.5",
                "EDGE_LOG_LEVEL": "warning",
                "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
                **INTERNAL_ENV,
                **self.edge_env,
            },
            cwd=ROOT,
        ).start()
        wait_for_http(f"{self.edge_url}/health/live", process=self.edge, timeout=60)

    def kill_edge(self) -> None:
        """SIGKILL: no shutdown hooks, nothing flushed that was not already durable."""
        assert self.edge is not None
        self.edge.send_signal(signal.SIGKILL)
        self.edge.wait(timeout=10)
        self.edge.stop()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for proc in (self.edge, self.inference):
            if proc is not None:
                proc.stop()

    def put_config(self, config: dict[str, Any]) -> None:
        resp = httpx.put(f"{self.edge_url}/edge-config", json=config, headers=ADMIN, timeout=10)
        assert resp.status_code == 200, resp.text

    def status(self) -> dict[str, Any]:
        """edge-api's /status, as the operator reads it."""
        resp = httpx.get(f"{self.edge_url}/status", headers=ADMIN, timeout=10)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def outbox_rows(self) -> list[tuple[str, str, str]]:
        """(image_query_id, reason, state) of what is still waiting in the outbox."""
        with sqlite3.connect(self.data_dir / "edge.sqlite3") as conn:
            return conn.execute("SELECT image_query_id, reason, state FROM outbox").fetchall()
