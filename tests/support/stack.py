"""The edge stack as real processes on free ports: inference, edge-api, nginx, and a cloud (the fake
one, or the real one from tests/support/cloud.py)."""

from __future__ import annotations

import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from launcher.gateway import NginxGateway
from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.cloud import CloudServer
from tests.support.fake_cloud import FakeCloud

ROOT = Path(__file__).resolve().parents[2]


def start_inference(model_root: Path, port: int, **env: str) -> ManagedProcess:
    proc = ManagedProcess(
        "inference",
        [sys.executable, "-m", "edge.inference"],
        env={
            "INFERENCE_PORT": str(port),
            "INFERENCE_MODEL_ROOT": str(model_root),
            "INFERENCE_LOG_LEVEL": "warning",
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
        resp = httpx.put(f"{self.edge_url}/edge-config", json=config, timeout=10)
        assert resp.status_code == 200, resp.text

    def outbox_rows(self) -> list[tuple[str, str, str]]:
        """(image_query_id, reason, state) of what is still waiting in the outbox."""
        with sqlite3.connect(self.data_dir / "edge.sqlite3") as conn:
            return conn.execute("SELECT image_query_id, reason, state FROM outbox").fetchall()
