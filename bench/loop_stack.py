"""The whole system for bench/learning_loop.py, started by the launcher's own Python API.

`make run` runs the same services (`launcher.run.LocalStack`: cloud API, worker, trainer, then the edge
with its model updater, inference, edge-api and the nginx gateway), here with:

- its own state directory (`LocalLayout.state_root`): databases, accounts, model bundles, nginx files
  and the edge config live there, so a developer's `.intellioptics` is never read or written;
- a free port for every service that has one (each `port_env` variable), so a `make run` on the
  default ports keeps running beside it;
- settings pinned in this process's environment, which every child inherits: the variables of a
  developer's shell that would change a service (EDGE_*, CLOUD_*, TRAINER_*, ...) are dropped first;
- short periods for the loop: the worker polls every second and queues a retrain every `min_labels`
  labels (the timer trigger is pushed out of the run), the trainer asks for work every second, and
  the updater follows the edge config's `refresh_rate`. With `min_labels=None` the worker, trainer
  and updater keep the system's defaults (first job once every class has 3 labels, then every 10 %
  more; default poll periods), as the camera-paced scenarios want;
- `extra_env`: variables set last (e.g. TRAINER_BACKBONE_CACHE, so a trainer reuses an exported
  backbone instead of exporting its own on the first job).

No demo models are built and no demo detectors are seeded: the benchmark's detector starts with none.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import IO, Any

import yaml

from launcher.local import LocalLayout
from launcher.processes import ManagedProcess, free_port
from launcher.run import LocalStack, RunOptions
from launcher.services import ALL_SERVICES, CLOUD_API, GATEWAY

# Variables of the caller's shell that would change what a service does.
SCRUB_PREFIXES = (
    "EDGE_",
    "INFERENCE_",
    "GATEWAY_",
    "CLOUD_",
    "TRAINER_",
    "UPDATER_",
    "STREAMS_",
    "INTELLIOPTICS_",
    "GROUNDLIGHT_",
    "POSTGRES_",
    "NGINX_",
)
SCRUB_NAMES = ("DATABASE_URL",)
REVIEWER = "reviewer"


class LoopStack:
    """Start with `start()`, stop with `stop()` (always, also after a failed start)."""

    def __init__(
        self,
        state_dir: Path,
        edge_config: dict[str, Any],
        *,
        min_labels: int | None,
        log_stream: IO[str],
        startup_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.config_dir = state_dir / "config"
        self.edge_config = edge_config
        self.min_labels = min_labels
        self.log_stream = log_stream
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.reviewer_password = secrets.token_urlsafe(18)
        # The edge operator's token (edge config, status): chosen here, so the bench can send it.
        self.edge_admin_token = secrets.token_urlsafe(24)
        self.ports: dict[str, int] = {}
        self.stack: LocalStack | None = None
        self.stop_event = threading.Event()

    def _environment(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_NAMES
        }
        for service in ALL_SERVICES:
            if service.port_env and service.port is not None:
                self.ports[service.name] = free_port()
                env[service.port_env] = str(self.ports[service.name])
        env.update(
            {
                "CLOUD_BOOTSTRAP_REVIEWER_PASSWORD": self.reviewer_password,
                "EDGE_ADMIN_TOKEN": self.edge_admin_token,
                "INTELLIOPTICS_EDGE_ADMIN_TOKEN": self.edge_admin_token,
                "CLOUD_LOG_LEVEL": "warning",
                "EDGE_LOG_LEVEL": "warning",
                "INFERENCE_LOG_LEVEL": "warning",
                # The gateway resolves no names here (every upstream is 127.0.0.1).
                "NGINX_LOCAL_RESOLVERS": "127.0.0.1",
            }
        )
        if self.min_labels is not None:
            env.update(
                {
                    "CLOUD_RETRAIN_MIN_LABELS": str(self.min_labels),
                    # Only the label trigger: the timer would retrain on a handful of labels mid-run.
                    "CLOUD_RETRAIN_INTERVAL_S": "86400",
                    "CLOUD_WORKER_POLL_S": "1",
                    "TRAINER_POLL_S": "1",
                    "TRAINER_DEVICE": "cpu",
                    "UPDATER_CONFIG_POLL_S": "2",
                }
            )
        env.update(self.extra_env)
        return env

    def start(self) -> LoopStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "edge-config.yaml").write_text(yaml.safe_dump(self.edge_config, sort_keys=False))
        env = self._environment()
        # Children inherit this process's environment: make it the pinned one for the run.
        os.environ.clear()
        os.environ.update(env)
        options = RunOptions(
            layout=LocalLayout(state_root=self.state_dir, config_dir=self.config_dir),
            environ=env,
            demo_models=False,
            seed_argv=None,
            startup_timeout=self.startup_timeout,
        )
        self.stack = LocalStack(options, self.log_stream)
        self.stack.start(self.stop_event)
        return self

    @property
    def service_names(self) -> list[str]:
        return list(self.stack.services) if self.stack is not None else []

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def gateway_url(self) -> str:
        return self.url(GATEWAY)

    @property
    def cloud_url(self) -> str:
        return self.url(CLOUD_API)

    def device_token(self) -> str:
        """The device API token the cloud's first start wrote (the edge escalates with it too)."""
        return (self.state_dir / "api-token").read_text().strip()

    def processes(self) -> dict[str, ManagedProcess]:
        return self.stack.processes() if self.stack is not None else {}

    def check_alive(self) -> None:
        for name, process in self.processes().items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.poll()}:\n{process.output_tail()}")

    def stop(self) -> None:
        self.stop_event.set()
        if self.stack is not None:
            self.stack.stop()
