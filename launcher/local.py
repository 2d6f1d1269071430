"""Map the compose view of the services (`launcher.services`) onto one machine.

Compose gives every service its own hostname and filesystem; locally they share 127.0.0.1 and the
repository. The mapping is mechanical so that the table stays the single source of settings:

- `${NAME:-default}` and `${NAME}` are interpolated from the environment, as compose does;
- a variable the environment sets itself (`EDGE_CLOUD_URL=...`) replaces the table's value;
- `service:port` and `scheme://service:port/...` become `127.0.0.1:<local port>`, where a service's
  local port is its `port_env` variable when set (free ports for tests), else the compose port;
- `0.0.0.0` becomes `127.0.0.1` (only the gateway faces the network);
- `/data/...` lives under `<repo>/.intellioptics/data/...`, `/config/...` under `<repo>/config/...`,
  except the cloud's `/data/cloud`, which is `<repo>/.intellioptics/cloud` with its token file at
  `<repo>/.intellioptics/api-token`: where `python -m cloud.app` keeps them when run by hand;
- a service's `local_environment` replaces its compose values (the embedded database);
- `python` is the interpreter running the launcher (the project's venv).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from launcher.services import (
    ALL_SERVICES,
    CLOUD_API_HOST,
    CLOUD_API_PORT,
    CLOUD_DATA,
    CLOUD_TOKEN_FILE,
    Service,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class LocalLayout:
    """Where a local run keeps what compose keeps in volumes and bind mounts."""

    repo_root: Path = REPO_ROOT
    data_dir: Path | None = None
    config_dir: Path | None = None
    python: str = sys.executable
    # Where everything a run writes lives (default <repo>/.intellioptics); another one runs a second,
    # independent stack beside a developer's `make run` (benchmarks do, on other ports).
    state_root: Path | None = None

    @property
    def state_dir(self) -> Path:
        """Everything a local run writes (ignored by git)."""
        return self.state_root if self.state_root is not None else self.repo_root / ".intellioptics"

    @property
    def data(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.state_dir / "data"

    @property
    def config(self) -> Path:
        return self.config_dir if self.config_dir is not None else self.repo_root / "config"

    @property
    def cloud_data(self) -> Path:
        return self.state_dir / "cloud"

    @property
    def api_token_file(self) -> Path:
        return self.state_dir / "api-token"

    @property
    def gateway_prefix(self) -> Path:
        return self.state_dir / "gateway"

    def container_paths(self) -> dict[str, Path]:
        """Container path -> local path, the most specific first."""
        return {
            CLOUD_TOKEN_FILE: self.api_token_file,
            CLOUD_DATA: self.cloud_data,
            "/data": self.data,
            "/config": self.config,
        }


@dataclass(frozen=True)
class LocalService:
    """One service as the launcher runs it: concrete argv, environment, port and paths."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None
    health_url: str | None
    directories: list[Path] = field(default_factory=list)
    one_shot: bool = False


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose-style `${NAME}` / `${NAME:-default}` (the default also replaces an empty value)."""

    def replace(match: re.Match[str]) -> str:
        current = environ.get(match.group("name"), "")
        default = match.group("default")
        return current if current or default is None else default

    return _INTERPOLATION.sub(replace, value)


class LocalMapper:
    """Turns compose values into local ones for a given set of services, layout and environment."""

    def __init__(self, services: Iterable[Service], layout: LocalLayout, environ: Mapping[str, str]) -> None:
        self.services = list(services)
        self.layout = layout
        self.environ = environ
        # Container port -> local port, per hostname reachable from the services.
        self.hosts: dict[str, tuple[int, int]] = {CLOUD_API_HOST: (CLOUD_API_PORT, CLOUD_API_PORT)}
        for service in self.services:
            if service.port is not None:
                self.hosts[service.name] = (service.port, self.local_port(service))

    def local_port(self, service: Service) -> int:
        if service.port is None:
            raise ValueError(f"{service.name} has no port")
        override = self.environ.get(service.port_env or "")
        return int(override) if override else service.port

    def _host(self, host: str, port: int | None) -> tuple[str, int | None] | None:
        if host not in self.hosts:
            return None
        container_port, local_port = self.hosts[host]
        return LOOPBACK, (local_port if port in (None, container_port) else port)

    def value(self, raw: str) -> str:
        """The local form of one environment value or argument."""
        text = interpolate(raw, self.environ)
        if text == "0.0.0.0":
            return LOOPBACK
        for container_path, local_path in self.layout.container_paths().items():
            if text == container_path or text.startswith(container_path + "/"):
                return str(local_path) + text[len(container_path) :]
        host_port = _HOST_PORT.match(text)
        if host_port:
            mapped = self._host(host_port["host"], int(host_port["port"]))
            return f"{mapped[0]}:{mapped[1]}" if mapped else text
        parts = urlsplit(text)
        if parts.scheme and parts.hostname:
            mapped = self._host(parts.hostname, parts.port)
            if mapped:
                netloc = mapped[0] if mapped[1] is None else f"{mapped[0]}:{mapped[1]}"
                return urlunsplit(parts._replace(netloc=netloc))
        return text

    def env(self, service: Service) -> dict[str, str]:
        env = {
            name: self.environ.get(name) or self.value(service.local_environment.get(name, raw))
            for name, raw in service.environment.items()
        }
        if service.port_env:
            env[service.port_env] = str(self.local_port(service))
        return env

    def argv(self, service: Service) -> list[str]:
        head, *rest = service.argv
        return [self.layout.python if head == "python" else head, *(self.value(arg) for arg in rest)]

    def service(self, service: Service) -> LocalService:
        port = self.local_port(service) if service.port is not None else None
        health = f"http://{LOOPBACK}:{port}{service.health_path}" if port and service.health_path else None
        return LocalService(
            name=service.name,
            argv=self.argv(service),
            env=self.env(service),
            port=port,
            health_url=health,
            directories=[Path(self.value(target)) for target in service.volumes],
            one_shot=service.one_shot,
        )


def local_services(
    layout: LocalLayout,
    environ: Mapping[str, str],
    services: Iterable[Service] = ALL_SERVICES,
) -> dict[str, LocalService]:
    """The services mapped for a local run, in start order, keyed by name."""
    mapper = LocalMapper(services, layout, environ)
    return {service.name: mapper.service(service) for service in mapper.services}
