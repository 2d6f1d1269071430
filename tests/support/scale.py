"""A scaled-out deployment as real processes on one machine, as docker-compose.cloud.yml runs it with
`--scale cloud-api=N` and many edge boxes point at it.

One PostgreSQL database; N cloud-api replicas (`python -m cloud.app`, each on its own port, sharing one
data directory for blobs, as the replicas share the `cloud-data` volume) behind the cloud gateway
(launcher.cloud_gateway: nginx, round robin, retry on a dead replica); one cloud worker; and M edges,
each with its own inference, edge-api and updater, ports, data directory and edge id, all talking to
the cloud through the gateway only. tests/test_scale_out.py and bench/scale.py run it.
"""

from __future__ import annotations

import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from launcher.cloud_gateway import CloudGateway
from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.cloud import (
    ADMIN_PASSWORD,
    DEVICE_TOKEN,
    CloudServer,
    TestDatabase,
)
from tests.support.stack import EdgeStack, start_inference
from tests.support.updater import start_updater

ROOT = Path(__file__).resolve().parents[2]
IQ_PATH = "/device-api/v1/image-queries"


@dataclass
class CloudReplicas:
    """N cloud-api replicas on one database behind the cloud gateway, and one worker."""

    workdir: Path
    database: TestDatabase
    count: int = 2
    gateway_port: int = field(default_factory=free_port)
    worker_poll_s: float = 0.5
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    replicas: list[ManagedProcess | None] = field(default_factory=list)
    gateway: CloudGateway | None = None
    worker: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """Where edges, reviewers and scripts reach the cloud: the gateway."""
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def data_dir(self) -> Path:
        """The one data directory every replica and the worker use (the shared `cloud-data` volume)."""
        return self.workdir / "cloud-data"

    def replica_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def server(self) -> CloudServer:
        """The replicas as one CloudServer (at the gateway's address) for the helpers that take one."""
        return CloudServer(self.database.url, self.workdir, port=self.gateway_port)

    def _replica(self, index: int) -> ManagedProcess:
        # Model links and pages point at the gateway, never at one replica; every replica shares
        # the workdir's data directory (blobs) and first-start token file.
        replica = CloudServer(
            self.database.url,
            self.workdir,
            port=self.ports[index],
            env={"CLOUD_PUBLIC_URL": self.url, **self.env},
        )
        return replica.launch(f"cloud-api-{index}")

    def start(self) -> CloudReplicas:
        """All replicas at once on the empty database (their first starts race), then the gateway and
        the worker."""
        self.ports = [free_port() for _ in range(self.count)]
        self.replicas = [self._replica(i) for i in range(self.count)]
        for i, process in enumerate(self.replicas):
            wait_for_http(f"{self.replica_url(i)}/health/ready", process=process, timeout=120)
        self.gateway = CloudGateway(
            self.workdir / "cloud-gateway",
            port=self.gateway_port,
            upstreams=[f"127.0.0.1:{port}" for port in self.ports],
        ).start()
        self.worker = ManagedProcess(
            "cloud-worker",
            [sys.executable, "-m", "cloud.worker"],
            env={
                "DATABASE_URL": self.database.url,
                "CLOUD_DATA_DIR": str(self.data_dir),
                "CLOUD_WORKER_POLL_S": str(self.worker_poll_s),
                "CLOUD_LOG_LEVEL": "warning",
            },
            cwd=ROOT,
        ).start()
        return self

    def kill(self, index: int) -> None:
        """SIGKILL one replica: no shutdown, requests in flight on it are cut."""
        process = self.replicas[index]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stop()
        self.replicas[index] = None

    def restart(self, index: int) -> None:
        process = self.start_replica(index)
        wait_for_http(f"{self.replica_url(index)}/health/ready", process=process, timeout=120)

    def start_replica(self, index: int) -> ManagedProcess:
        """Start a stopped (or killed) replica without waiting for it to be ready (restart() waits)."""
        assert self.replicas[index] is None, "stop or kill it first"
        process = self._replica(index)
        self.replicas[index] = process
        return process

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.gateway is not None:
            self.gateway.stop()
        for process in self.replicas:
            if process is not None:
                process.stop()


@dataclass
class ScaledEdge:
    """One edge box: inference, edge-api and updater on their own ports, talking to `cloud_url`."""

    index: int
    workdir: Path
    model_root: Path
    cloud: CloudServer
    updater_port: int = field(default_factory=free_port)
    stack: EdgeStack | None = None
    updater: ManagedProcess | None = None
    # The threads that started this edge's processes (see start_edges); stop_edges ends them.
    starter: ThreadPoolExecutor | None = None

    @property
    def edge_id(self) -> str:
        return f"edge-{self.index:02d}"

    @property
    def edge_url(self) -> str:
        assert self.stack is not None
        return self.stack.edge_url

    @property
    def updater_url(self) -> str:
        return f"http://127.0.0.1:{self.updater_port}"

    def start(
        self,
        config: dict[str, Any],
        edge_env: dict[str, str] | None = None,
        updater_env: dict[str, str] | None = None,
    ) -> ScaledEdge:
        stack = EdgeStack(
            self.workdir,
            self.model_root,
            self.cloud,
            edge_env={
                "EDGE_API_TOKEN": DEVICE_TOKEN,
                "EDGE_EDGE_ID": self.edge_id,
                "EDGE_UPDATER_URL": self.updater_url,
                **(edge_env or {}),
            },
        )
        self.stack = stack
        stack.config_path.write_text(yaml.safe_dump(config))
        # No edge gateway: the cameras of this simulation post to edge-api itself.
        stack.inference = start_inference(self.model_root, stack.inference_port)
        stack.start_edge()
        self.updater, _ = start_updater(
            cloud_url=self.cloud.url,
            model_root=self.model_root,
            inference_url=stack.inference_url,
            edge_api_url=stack.edge_url,
            port=self.updater_port,
            **{"UPDATER_LOG_LEVEL": "warning", **(updater_env or {})},
        )
        return self

    def status(self) -> dict[str, Any]:
        assert self.stack is not None
        return self.stack.status()

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()
        if self.stack is not None:
            self.stack.stop()


def start_edges(
    workdir: Path,
    cloud: CloudServer,
    model_root: Path,
    count: int,
    config: dict[str, Any],
    edge_env: dict[str, str] | None = None,
    updater_env: dict[str, str] | None = None,
) -> list[ScaledEdge]:
    """`count` edges, each with a private copy of `model_root`, started side by side. `updater_env`
    overrides the test updater's settings (tests.support.updater: config polled every 0.5 s, a
    heartbeat every second), as a benchmark of many edges wants their defaults."""
    edges = []
    for i in range(count):
        own = workdir / f"edge-{i:02d}"
        own.mkdir(parents=True, exist_ok=True)
        shutil.copytree(model_root, own / "models", symlinks=True)
        edges.append(ScaledEdge(i, own, own / "models", cloud))
    # A child gets SIGTERM when the *thread* that started it ends (ManagedProcess's die_with_parent is
    # PR_SET_PDEATHSIG, which follows the thread), so these threads must outlive the edges: the pool
    # is kept on each edge and shut down by stop_edges, after the edges stopped.
    pool = ThreadPoolExecutor(min(count, 8), thread_name_prefix="edge-starter")
    for edge in edges:
        edge.starter = pool
    started = list(pool.map(lambda edge: _start_or_none(edge, config, edge_env, updater_env), edges))
    failed = [error for error in started if error is not None]
    if failed:
        stop_edges(edges)
        raise failed[0]
    return edges


def _start_or_none(
    edge: ScaledEdge,
    config: dict[str, Any],
    env: dict[str, str] | None,
    updater_env: dict[str, str] | None = None,
) -> BaseException | None:
    try:
        edge.start(config, env, updater_env)
    except BaseException as error:  # reported by start_edges, after every edge was stopped
        return error
    return None


def stop_edges(edges: list[ScaledEdge]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda edge: edge.stop(), edges))
    for starter in {id(e.starter): e.starter for e in edges if e.starter is not None}.values():
        starter.shutdown(wait=False)
    for edge in edges:
        edge.starter = None


def admin_client(cloud: CloudReplicas) -> httpx.Client:
    """An admin's session at the gateway (cookie, with the Origin a browser sends)."""
    return cloud.server().login("admin", ADMIN_PASSWORD)
