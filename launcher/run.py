"""`python -m launcher run`: the edge stack on one machine, in place of `docker compose up`.

Starts what `launcher.services` declares, in order, each once the one before it is healthy; forwards
their output with a name prefix; stops everything (newest first) on Ctrl-C or SIGTERM, or as soon as
any service dies, in which case the exit status is non-zero.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from launcher.gateway import NginxGateway
from launcher.local import LocalLayout, LocalService, local_services
from launcher.processes import (
    ManagedProcess,
    ProcessError,
    StartupCancelled,
    prefixed_printer,
    wait_for_http,
)
from launcher.services import ALL_SERVICES, DEMO_MODELS, GATEWAY, Service

Stoppable = ManagedProcess | NginxGateway


@dataclass
class RunOptions:
    """What a local run may change; ports and other settings come from `environ` (see launcher.local)."""

    layout: LocalLayout = field(default_factory=LocalLayout)
    environ: Mapping[str, str] = field(default_factory=dict)
    demo_models: bool = True
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0
    services: Sequence[Service] = ALL_SERVICES


def has_model_bundles(model_root: Path) -> bool:
    """True when any detector under the model root has an active version."""
    return model_root.is_dir() and any((detector / "current").exists() for detector in model_root.iterdir())


class EdgeStack:
    """The running services of one local run."""

    def __init__(self, options: RunOptions, stream: IO[str] | None = None) -> None:
        self.options = options
        self.stream = stream
        self.services = local_services(options.layout, options.environ, options.services)
        self.running: list[tuple[str, Stoppable]] = []
        # One column for every name, as docker compose aligns its log prefixes.
        self.width = max(len(name) for name in [*self.services, "launcher"]) + 1

    def say(self, message: str) -> None:
        target = self.stream if self.stream is not None else sys.stdout
        print(f"{'launcher':<{self.width}}| {message}", file=target, flush=True)

    def _process(self, service: LocalService) -> ManagedProcess:
        return ManagedProcess(
            service.name,
            service.argv,
            env={**service.env, "PYTHONUNBUFFERED": "1"},
            cwd=self.options.layout.repo_root,
            output=prefixed_printer(service.name, self.stream, self.width),
        )

    def _ensure_demo_models(self, job: LocalService, stop_event: threading.Event) -> None:
        """Run the demo-bundle job unless disabled or its model volume already holds a bundle."""
        if not self.options.demo_models or any(has_model_bundles(root) for root in job.directories):
            return
        self.say(f"no model bundles in {', '.join(map(str, job.directories))}: building the demo ones")
        process = self._process(job).start()
        self.running.append((job.name, process))
        while process.poll() is None:
            if stop_event.wait(0.2):
                raise StartupCancelled("stop requested")
        self.running.remove((job.name, process))
        status = process.stop()
        if status != 0:
            raise ProcessError(
                f"{job.name} failed with status {status} (it needs the training extra: "
                f"pip install -e '.[training]'; or run with --no-demo-models)"
            )

    def _start_gateway(self, service: LocalService) -> NginxGateway:
        return NginxGateway(
            self.options.layout.gateway_prefix,
            port=service.port or 0,
            edge_api_upstream=service.env["EDGE_API_UPSTREAM"],
            cloud_url=service.env["CLOUD_URL"],
            resolvers=self.options.environ.get("NGINX_LOCAL_RESOLVERS") or None,
            output=prefixed_printer(service.name, self.stream, self.width),
            startup_timeout=self.options.startup_timeout,
        )

    def start(self, stop_event: threading.Event) -> None:
        """Start every service in order; raise ProcessError or StartupCancelled (after which stop())."""
        for service in self.services.values():
            for directory in service.directories:
                directory.mkdir(parents=True, exist_ok=True)
        for service in self.services.values():
            if service.name == DEMO_MODELS:
                self._ensure_demo_models(service, stop_event)
                continue
            if service.one_shot:
                continue
            self.say(f"starting {service.name}")
            if service.name == GATEWAY:
                gateway = self._start_gateway(service)
                self.running.append((service.name, gateway))
                gateway.start()
                process = gateway.process
                assert process is not None
            else:
                process = self._process(service).start()
                self.running.append((service.name, process))
            if service.health_url:
                wait_for_http(
                    service.health_url,
                    timeout=self.options.startup_timeout,
                    process=process,
                    stop_event=stop_event,
                )

    def banner(self) -> str:
        lines = ["the edge is up:"]
        for service in self.services.values():
            if service.port is not None:
                lines.append(f"  {service.name:<{self.width}}http://127.0.0.1:{service.port}")
        lines.append(f"  {'data':<{self.width}}{self.options.layout.data}")
        lines.append("cameras and the SDK use the gateway; Ctrl-C stops everything")
        return "\n".join(lines)

    def watch(self, stop_event: threading.Event, interval: float = 0.2) -> int:
        """Block until a stop is requested (0) or a service exits on its own (1)."""
        while not stop_event.wait(interval):
            for name, process in self.processes().items():
                if process.poll() is not None:
                    self.say(f"{name} exited with status {process.poll()}; stopping the others")
                    return 1
        return 0

    def processes(self) -> dict[str, ManagedProcess]:
        """The child processes started so far, by service name, in start order."""
        found: dict[str, ManagedProcess] = {}
        for name, item in self.running:
            process = item.process if isinstance(item, NginxGateway) else item
            if process is not None:
                found[name] = process
        return found

    def stop(self) -> None:
        """Stop what runs, newest first, so nothing is left talking to a stopped service."""
        while self.running:
            name, item = self.running.pop()
            status = item.stop(self.options.stop_timeout)
            self.say(f"stopped {name} (status {status})")


@contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `stop_event` for the duration; restore the old handlers after."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)


def run(options: RunOptions, stream: IO[str] | None = None) -> int:
    """Run the stack until Ctrl-C/SIGTERM (exit 0) or until a service fails (exit 1)."""
    stop_event = threading.Event()
    stack = EdgeStack(options, stream)
    with stop_on_signals(stop_event):
        try:
            stack.start(stop_event)
            stack.say(stack.banner())
            return stack.watch(stop_event)
        except StartupCancelled:
            return 0
        except (ProcessError, OSError, ValueError) as error:
            stack.say(f"cannot start the edge: {error}")
            return 1
        finally:
            stack.stop()
