"""`python -m launcher run`: the cloud and the edge on one machine, in place of `docker compose up`.

Starts what `launcher.services` declares for a local run, in order, each once the one before it is
healthy: the cloud API (which migrates its database and, on its first start, creates the accounts
and the device API token), the cloud worker, then the edge with that token and the local cloud as
its escalation target and the gateway's fallback. Once the demo model bundles exist, their
detectors are registered in the cloud (idempotent). Output goes through `launcher.console`: each
child's lines are shown behind its name as they are ("json", as docker compose shows them) or one
readable line per event ("readable", what `make run` shows), and kept in `<log dir>/<service>.jsonl`
when a log directory is given. Everything stops (newest first) on Ctrl-C or SIGTERM, or as soon as
any service dies, in which case the exit status is non-zero.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from edge.api.settings import ADMIN_TOKEN_FILE
from launcher.console import Console, ConsoleMode, Level
from launcher.gateway import NginxGateway
from launcher.local import LocalLayout, LocalService, local_services
from launcher.processes import (
    ManagedProcess,
    ProcessError,
    StartupCancelled,
    StopFlag,
    StopRequest,
    wait_for_http,
)
from launcher.services import (
    ALL_SERVICES,
    API_TOKEN_VARIABLE,
    CLOUD_API,
    CLOUD_NAMES,
    DEMO_MODELS,
    EDGE_API,
    GATEWAY,
    Service,
)

Stoppable = ManagedProcess | NginxGateway

SEED_DEMO = "demo-detectors"
# Registers the demo detectors (and their bundles) in the local cloud; see cloud/app/seed_demo.py.
SEED_DEMO_ARGV: tuple[str, ...] = ("python", "-m", "cloud.app.seed_demo")
REVIEW_UI_PATH = "/ui"
# Where `python -m launcher run` keeps each service's JSON lines, under the state directory.
LOG_DIR = "logs"
# Exit statuses of a child that stopped because it was asked to (SIGTERM; nginx: SIGQUIT).
_ASKED_TO_STOP = frozenset({0, -signal.SIGTERM, -signal.SIGQUIT})


@dataclass
class RunOptions:
    """What a local run may change; ports and other settings come from `environ` (see launcher.local)."""

    layout: LocalLayout = field(default_factory=LocalLayout)
    environ: Mapping[str, str] = field(default_factory=dict)
    demo_models: bool = True
    # Run the cloud services here; False when the edge uses a cloud elsewhere (or none).
    cloud: bool = True
    # The job that registers the demo detectors in the local cloud (None: skip it).
    seed_argv: Sequence[str] | None = SEED_DEMO_ARGV
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0
    services: Sequence[Service] = ALL_SERVICES
    # "json": every line of every child as it prints it, behind the child's name (as docker compose
    # shows it); "readable": one line per event, request and poll lines only with `verbose`.
    console: ConsoleMode = "json"
    verbose: bool = False
    # Where each service's lines are kept as JSON lines, <service>.jsonl (None: nowhere).
    log_dir: Path | None = None
    # Colour on the readable console: None for only when it is a terminal.
    colour: bool | None = None


def has_model_bundles(model_root: Path) -> bool:
    """True when any detector under the model root has an active version."""
    return model_root.is_dir() and any((detector / "current").exists() for detector in model_root.iterdir())


class LocalStack:
    """The running services of one local run."""

    def __init__(self, options: RunOptions, stream: IO[str] | None = None) -> None:
        self.options = options
        self.stream = stream
        self.table = [s for s in options.services if options.cloud or s.name not in CLOUD_NAMES]
        self.environ = dict(options.environ)
        self.services = local_services(options.layout, self.environ, self.table)
        self.running: list[tuple[str, Stoppable]] = []
        # One column for every name, as docker compose aligns its log prefixes.
        self.width = max(len(name) for name in [*self.services, "launcher", SEED_DEMO]) + 1
        self.console = Console(
            stream,
            mode=options.console,
            verbose=options.verbose,
            width=self.width,
            log_dir=options.log_dir,
            colour=options.colour,
        )

    def say(self, message: str, level: Level = "info") -> None:
        self.console.say(message, level)

    @property
    def cloud(self) -> LocalService | None:
        return self.services.get(CLOUD_API)

    def _process(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> ManagedProcess:
        return ManagedProcess(
            name,
            argv,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=self.options.layout.repo_root,
            output=self.console.sink(name),
        )

    def _run_job(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], stop_event: StopRequest
    ) -> int:
        """Run a one-shot job to its end (stoppable like the servers); its exit status."""
        process = self._process(name, argv, env).start()
        self.running.append((name, process))
        self.console.note(name, f"started (pid {process.pid})")
        while process.poll() is None:
            if stop_event.wait(0.2):
                raise StartupCancelled("stop requested")
        self.running.remove((name, process))
        status = process.stop()
        status = status if status is not None else 1
        if status == 0:
            self.console.note(name, "done")
        else:
            self.console.note(name, f"failed with status {status}", level="error")
        return status

    def _ensure_demo_models(self, job: LocalService, stop_event: StopRequest) -> None:
        """Run the demo-bundle job unless disabled or its model volume already holds a bundle."""
        if not self.options.demo_models or any(has_model_bundles(root) for root in job.directories):
            return
        self.say(f"no model bundles in {', '.join(map(str, job.directories))}: building the demo ones")
        status = self._run_job(job.name, job.argv, job.env, stop_event)
        if status != 0:
            raise ProcessError(
                f"{job.name} failed with status {status} (it needs the training extra: "
                f"pip install -e '.[training]'; or run with --no-demo-models)"
            )

    def _seed_demo_detectors(self, model_roots: Sequence[Path], stop_event: StopRequest) -> None:
        """Register the demo detectors in the local cloud, so their escalations have a home."""
        cloud = self.cloud
        roots = [root for root in model_roots if has_model_bundles(root)]
        if cloud is None or self.options.seed_argv is None or not roots:
            return
        head, *rest = self.options.seed_argv
        argv = [self.options.layout.python if head == "python" else head, *rest]
        argv += ["--model-root", str(roots[0]), "--cloud-url", f"http://127.0.0.1:{cloud.port}"]
        status = self._run_job(SEED_DEMO, argv, cloud.env, stop_event)
        if status != 0:
            raise ProcessError(f"registering the demo detectors in the cloud failed with status {status}")

    def _adopt_cloud_token(self) -> None:
        """Give the edge the device token the local cloud wrote on its first start.

        A token already in the environment (INTELLIOPTICS_API_TOKEN or EDGE_API_TOKEN) wins.
        """
        cloud = self.cloud
        if cloud is None or self.environ.get(API_TOKEN_VARIABLE) or self.environ.get("EDGE_API_TOKEN"):
            return
        path = Path(cloud.env.get("CLOUD_API_TOKEN_FILE") or self.options.layout.api_token_file)
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
        if not token:
            self.say(
                f"no API token in {path}: the cloud will refuse the edge's escalations; set "
                f"{API_TOKEN_VARIABLE}, or remove {cloud.env.get('CLOUD_DATA_DIR')} for a fresh first start",
                level="warning",
            )
            return
        self.environ[API_TOKEN_VARIABLE] = token
        self.services = local_services(self.options.layout, self.environ, self.table)
        self.say(f"the edge escalates to http://127.0.0.1:{cloud.port} with the API token in {path}")

    def _start_gateway(self, service: LocalService) -> NginxGateway:
        return NginxGateway(
            self.options.layout.gateway_prefix,
            port=service.port or 0,
            edge_api_upstream=service.env["EDGE_API_UPSTREAM"],
            cloud_url=service.env["CLOUD_URL"],
            resolvers=self.options.environ.get("NGINX_LOCAL_RESOLVERS") or None,
            output=self.console.sink(service.name),
            startup_timeout=self.options.startup_timeout,
            tls_port=int(service.env["GATEWAY_TLS_PORT"]),
            tls_cert=Path(service.env["GATEWAY_TLS_CERT"]),
            tls_key=Path(service.env["GATEWAY_TLS_KEY"]),
        )

    def start(self, stop_event: StopRequest) -> None:
        """Start every service in order; raise ProcessError or StartupCancelled (after which stop())."""
        for service in self.services.values():
            for directory in service.directories:
                directory.mkdir(parents=True, exist_ok=True)
        for name in list(self.services):
            # Looked up each time: the cloud's token changes what the edge services are given.
            service = self.services[name]
            if name == DEMO_MODELS:
                self._ensure_demo_models(service, stop_event)
                self._seed_demo_detectors(service.directories, stop_event)
                continue
            if service.one_shot:
                continue
            self.console.note(name, None, plain=f"starting {name}")
            started = time.monotonic()
            if name == GATEWAY:
                gateway = self._start_gateway(service)
                self.running.append((name, gateway))
                gateway.start()
                process = gateway.process
                assert process is not None
            else:
                process = self._process(name, service.argv, service.env).start()
                self.running.append((name, process))
            self.console.note(name, f"started (pid {process.pid})")
            if service.health_url:
                wait_for_http(
                    service.health_url,
                    timeout=self.options.startup_timeout,
                    process=process,
                    stop_event=stop_event,
                )
                where = f" at http://127.0.0.1:{service.port}" if service.port else ""
                self.console.note(name, f"ready{where} ({time.monotonic() - started:.1f} s)")
            if name == CLOUD_API:
                self._adopt_cloud_token()

    def banner(self) -> str:
        lines = ["IntelliOptics is up:"]
        for service in self.services.values():
            if service.port is not None:
                lines.append(f"  {service.name:<{self.width}}http://127.0.0.1:{service.port}")
            env = service.env
            if service.name == GATEWAY and "GATEWAY_TLS_PORT" in env:
                lines.append(
                    f"  {'':<{self.width}}https://127.0.0.1:{env['GATEWAY_TLS_PORT']} "
                    f"(certificate {env.get('GATEWAY_TLS_CERT')})"
                )
            if service.name == EDGE_API and "EDGE_DATA_DIR" in env and not env.get("EDGE_ADMIN_TOKEN"):
                token_file = Path(env["EDGE_DATA_DIR"]) / ADMIN_TOKEN_FILE
                lines.append(f"  {'edge operator':<{self.width}}token in {token_file}")
        cloud = self.cloud
        if cloud is not None:
            url = f"http://127.0.0.1:{cloud.port}"
            lines.append(f"  {'review UI':<{self.width}}{url}{REVIEW_UI_PATH} (log in as reviewer or admin)")
            lines.append(
                f"  {'accounts':<{self.width}}printed by cloud-api on its first start; kept in "
                f"{Path(cloud.env.get('CLOUD_DATA_DIR', '')) / 'credentials.json'}"
            )
        lines.append(f"  {'data':<{self.width}}{self.options.layout.data}")
        lines.append("cameras and the SDK use the gateway; Ctrl-C stops everything")
        return "\n".join(lines)

    def watch(self, stop_event: StopRequest, interval: float = 0.2) -> int:
        """Block until a stop is requested (0) or a service exits on its own (1)."""
        while not stop_event.wait(interval):
            for name, process in self.processes().items():
                status = process.poll()
                if status is not None:
                    self.console.note(
                        name,
                        f"exited with status {status}; stopping the others",
                        plain=f"{name} exited with status {status}; stopping the others",
                        level="error",
                    )
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
            readable = (
                "stopped" if status is None or status in _ASKED_TO_STOP else f"stopped (status {status})"
            )
            self.console.note(name, readable, plain=f"stopped {name} (status {status})")
        self.console.close()


@contextmanager
def stop_on_signals(stop_event: StopFlag) -> Iterator[None]:
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
    stop_event = StopFlag()
    stack = LocalStack(options, stream)
    with stop_on_signals(stop_event):
        try:
            stack.start(stop_event)
            stack.say(stack.banner())
            return stack.watch(stop_event)
        except StartupCancelled:
            return 0
        except (ProcessError, OSError, ValueError) as error:
            stack.say(f"cannot start: {error}", level="error")
            return 1
        finally:
            stack.stop()
