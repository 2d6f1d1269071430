"""The edge chain as real processes on free ports: inference, edge-api and the nginx gateway.

Built from the launcher's own pieces (ManagedProcess, NginxGateway), with settings pinned so a run is
reproducible whatever the caller's shell exports. The cloud URL points at a port nobody listens on:
the benchmark's detectors are edge-only, so nothing should ever go there, and if something did it
would come back as an error and be counted.

Credentials are made per stack: an internal token that inference and edge-api share (the only
header inference answers), a device token listed in edge-api's local token file (so it is accepted
with the cloud dead) and an operator token. `headers_for(port)` is what a request to one of the
stack's ports must carry.

With `profile_dir`, both Python services run under `bench.profiled`: `start_profiling` and
`stop_profiling` bracket the steady-state load, and one `.prof` file per service lands there.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from bench.loadgen import process_group_pids
from common.internal_auth import INTERNAL_TOKEN_HEADER
from edge.api.auth.local_tokens import add_token, read_tokens, token_digest
from edge.api.settings import LOCAL_TOKENS_FILE
from launcher.gateway import NginxGateway
from launcher.processes import ManagedProcess, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
_SCRUB = ("EDGE_", "INFERENCE_", "GATEWAY_", "GROUNDLIGHT_", "INTELLIOPTICS_")
DEVICE_TOKEN_HEADER = "x-api-token"


def edge_only_config(detector_ids: list[str]) -> dict[str, Any]:
    """Every detector answers from the edge, never escalates, never audits (no outbox writes)."""
    return {
        "global_config": {"confident_audit_rate": 0.0},
        "detectors": [{"detector_id": d, "edge_inference_config": "edge_only"} for d in detector_ids],
        "edge_inference_configs": {
            "edge_only": {"always_return_edge_prediction": True, "disable_cloud_escalation": True}
        },
    }


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(extra)
    return env


class BenchStack:
    def __init__(
        self,
        workdir: Path,
        model_root: Path,
        config: dict[str, Any],
        worker_threads: int,
        intra_op_threads: int = 1,
        profile_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.model_root = model_root
        self.config = config
        self.worker_threads = worker_threads
        self.intra_op_threads = intra_op_threads
        self.profile_dir = profile_dir
        self.inference_port = free_port()
        self.edge_port = free_port()
        self.gateway_port = free_port()
        self.dead_cloud_port = free_port()
        self.internal_token = secrets.token_urlsafe(32)
        self.device_token = secrets.token_urlsafe(32)
        self.admin_token = secrets.token_urlsafe(32)
        self.inference: ManagedProcess | None = None
        self.edge: ManagedProcess | None = None
        self.gateway: NginxGateway | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "edge-data"

    @property
    def device_headers(self) -> dict[str, str]:
        """What a camera sends (to the gateway or straight to edge-api)."""
        return {DEVICE_TOKEN_HEADER: self.device_token}

    @property
    def admin_headers(self) -> dict[str, str]:
        """The edge operator's header (edge-api's /status, /metrics, /edge-config)."""
        return {DEVICE_TOKEN_HEADER: self.admin_token}

    @property
    def internal_headers(self) -> dict[str, str]:
        """What the edge's own services send each other (the only caller inference answers)."""
        return {INTERNAL_TOKEN_HEADER: self.internal_token}

    def headers_for(self, port: int) -> dict[str, str]:
        """The credential header a request to one of this stack's ports needs."""
        if port in (self.gateway_port, self.edge_port):
            return self.device_headers
        if port == self.inference_port:
            return self.internal_headers
        raise ValueError(f"port {port} is none of this stack's services")

    def _argv(self, module: str) -> list[str]:
        if self.profile_dir is None:
            return [sys.executable, "-m", module]
        return [sys.executable, "-m", "bench.profiled", module, str(self.profile_path(module))]

    def profile_path(self, module: str) -> Path:
        assert self.profile_dir is not None
        return self.profile_dir / f"{module}.prof"

    def _profiled(self) -> list[tuple[str, ManagedProcess]]:
        return [
            (m, p) for m, p in (("edge.api", self.edge), ("edge.inference", self.inference)) if p is not None
        ]

    def start_profiling(self) -> None:
        for _, proc in self._profiled():
            proc.send_signal(signal.SIGUSR1)

    def stop_profiling(self) -> None:
        """Ask the profilers to stop and write their files (see `profiles`)."""
        for module, proc in self._profiled():
            self.profile_path(module).unlink(missing_ok=True)
            proc.send_signal(signal.SIGUSR2)

    def profiles(self, timeout: float = 30.0) -> list[Path]:
        """The profile files once written completely (each is written between two requests)."""
        written = []
        for module, _ in self._profiled():
            path = self.profile_path(module)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                size = path.stat().st_size if path.exists() else 0
                time.sleep(0.2)
                if size and path.stat().st_size == size:
                    written.append(path)
                    break
        return written

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "edge-config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        tokens_file = self.data_dir / LOCAL_TOKENS_FILE
        digest = token_digest(self.device_token)
        if digest not in {t.sha256 for t in read_tokens(tokens_file)}:
            add_token(tokens_file, self.device_token, f"bench-{digest[:12]}")
        self.inference = ManagedProcess(
            "inference",
            self._argv("edge.inference"),
            env=_clean_env(
                {
                    "INFERENCE_PORT": str(self.inference_port),
                    "INFERENCE_MODEL_ROOT": str(self.model_root),
                    "INFERENCE_WORKER_THREADS": str(self.worker_threads),
                    "INFERENCE_INTRA_OP_THREADS": str(self.intra_op_threads),
                    "INFERENCE_LOG_LEVEL": "warning",
                    "INTELLIOPTICS_INTERNAL_TOKEN": self.internal_token,
                }
            ),
            inherit_env=False,
            cwd=ROOT,
        ).start()
        wait_for_http(f"{self.inference_url}/health/live", process=self.inference, timeout=60)
        self.edge = ManagedProcess(
            "edge-api",
            self._argv("edge.api"),
            env=_clean_env(
                {
                    "EDGE_PORT": str(self.edge_port),
                    "EDGE_INFERENCE_URL": self.inference_url,
                    "EDGE_CLOUD_URL": f"http://127.0.0.1:{self.dead_cloud_port}",
                    "EDGE_CONFIG_PATH": str(config_path),
                    "EDGE_DATA_DIR": str(self.data_dir),
                    "EDGE_ADMIN_TOKEN": self.admin_token,
                    "EDGE_LOG_LEVEL": "warning",
                    "INTELLIOPTICS_INTERNAL_TOKEN": self.internal_token,
                }
            ),
            inherit_env=False,
            cwd=ROOT,
        ).start()
        wait_for_http(f"{self.edge_url}/health/live", process=self.edge, timeout=60)
        self.gateway = NginxGateway(
            self.workdir / "nginx",
            port=self.gateway_port,
            edge_api_upstream=f"127.0.0.1:{self.edge_port}",
            cloud_url=f"http://127.0.0.1:{self.dead_cloud_port}",
            resolvers="127.0.0.1",
        )
        self.gateway.start()

    def pid_groups(self) -> dict[str, list[int]]:
        """Live pids per service (nginx: master and workers), for CPU accounting."""
        groups: dict[str, list[int]] = {}
        gateway = self.gateway.process if self.gateway is not None else None
        for name, proc in (("nginx", gateway), ("edge-api", self.edge), ("inference", self.inference)):
            if proc is not None and proc.pid is not None:
                groups[name] = process_group_pids(proc.pid)
        return groups

    def check_alive(self) -> None:
        gateway = self.gateway.process if self.gateway is not None else None
        for proc in (gateway, self.edge, self.inference):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.poll()}:\n{proc.output_tail()}")

    def stop(self) -> None:
        """Gateway first (no new traffic), then edge-api, then inference; each is tried regardless."""
        errors: list[BaseException] = []
        if self.gateway is not None:
            try:
                self.gateway.stop()
            except Exception as exc:
                errors.append(exc)
        for proc in (self.edge, self.inference):
            if proc is not None:
                try:
                    proc.stop(timeout=20)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
