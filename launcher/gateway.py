"""The nginx gateway outside Docker: render the same template the image renders, run Debian's nginx.

The official nginx image fills `/etc/nginx/templates/*.template` with envsubst; `render_gateway` does
the same with `string.Template`, so the container and a local run serve one config. `NginxGateway`
runs it on any port (tests use free ones) from a prefix directory of its own.

What any nginx run from a prefix needs (the prefix, `nginx -t`, the process, the self-signed
certificate, waiting for the ports) is `NginxServer`, which the cloud's gateway
(`launcher.cloud_gateway`) shares.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from launcher.processes import LineSink, ManagedProcess, ProcessError, free_port, wait_for_port
from launcher.tls import CertificateError, ensure_certificate

NGINX_DIR = Path(__file__).resolve().parents[1] / "nginx"
TEMPLATE_PATH = NGINX_DIR / "gateway.conf.template"
MAIN_CONF_PATH = NGINX_DIR / "nginx.conf"

PLACEHOLDERS = (
    "GATEWAY_PORT",
    "GATEWAY_TLS_PORT",
    "GATEWAY_TLS_CERT",
    "GATEWAY_TLS_KEY",
    "EDGE_API_UPSTREAM",
    "CLOUD_URL",
    "NGINX_LOCAL_RESOLVERS",
)
DEFAULT_TLS_PORT = 30143
# Where a gateway without certificate paths of its own keeps its self-signed one (in its prefix).
TLS_DIR = "tls"

_UPSTREAM = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
_LEFTOVER = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)\}?")


class GatewayConfigError(ValueError):
    """The gateway settings or the rendered config are not usable."""


def local_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    """The machine's DNS servers in nginx `resolver` syntax, as the image's entrypoint derives them."""
    servers: list[str] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver" or "%" in fields[1]:
            continue  # nginx cannot use link-local addresses with a zone
        address = fields[1]
        servers.append(f"[{address}]" if ":" in address else address)
    # nginx needs at least one; with none, cloud names fail to resolve and fallbacks answer 502.
    return " ".join(servers) or "127.0.0.1"


def normalize_cloud_url(cloud_url: str) -> str:
    """Check the cloud origin and drop a trailing slash (the request URI is appended to it)."""
    parts = urlsplit(cloud_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayConfigError(f"CLOUD_URL must be an http(s) URL, got {cloud_url!r}")
    if parts.query or parts.fragment:
        raise GatewayConfigError(f"CLOUD_URL must not have a query or fragment, got {cloud_url!r}")
    return cloud_url.rstrip("/")


def is_host_port(value: str) -> bool:
    """Whether `value` is `host:port` (a name, IPv4 address or [IPv6] address, and a TCP port)."""
    return _UPSTREAM.match(value) is not None and 0 < int(value.rpartition(":")[2]) < 65536


def check_ports(ports: Mapping[str, int]) -> None:
    """Each a TCP port, all different; raise GatewayConfigError naming the placeholder otherwise."""
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise GatewayConfigError(f"{name} must be a TCP port, got {port}")
    names = list(ports)
    for i, name in enumerate(names):
        for other in names[i + 1 :]:
            if ports[name] == ports[other]:
                raise GatewayConfigError(f"{other} must differ from {name}")


def check_plain_paths(paths: Mapping[str, Path]) -> None:
    """Paths nginx takes as one bare word: nothing that would end or quote the directive."""
    for name, path in paths.items():
        if any(c in str(path) for c in " ;{}'\"$"):
            raise GatewayConfigError(f"{name} must be a plain path, got {str(path)!r}")


def substitute(template_text: str, values: Mapping[str, str], what: str = "gateway") -> str:
    """Fill upper-case `${NAME}`s as envsubst does; refuse `$$` and any placeholder left unfilled."""
    if "$$" in template_text:
        # string.Template would turn it into "$", envsubst would not: the two renderings would differ.
        raise GatewayConfigError(f"the {what} template must not contain '$$'")
    rendered = Template(template_text).safe_substitute(values)
    leftover = sorted({match.group(1) for match in _LEFTOVER.finditer(rendered)})
    if leftover:
        raise GatewayConfigError(f"the {what} template uses unknown placeholders: {', '.join(leftover)}")
    return rendered


def render_gateway(
    template_text: str,
    gateway_port: int,
    edge_api_upstream: str,
    cloud_url: str,
    resolvers: str | None = None,
    *,
    tls_port: int = DEFAULT_TLS_PORT,
    tls_cert: Path = Path("/data/tls/gateway.crt"),
    tls_key: Path = Path("/data/tls/gateway.key"),
) -> str:
    """Fill the gateway template; nginx's own (lower-case) `$variables` are left alone."""
    check_ports({"GATEWAY_PORT": gateway_port, "GATEWAY_TLS_PORT": tls_port})
    check_plain_paths({"GATEWAY_TLS_CERT": tls_cert, "GATEWAY_TLS_KEY": tls_key})
    if not is_host_port(edge_api_upstream):
        raise GatewayConfigError(f"EDGE_API_UPSTREAM must be host:port, got {edge_api_upstream!r}")
    values = {
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_TLS_PORT": str(tls_port),
        "GATEWAY_TLS_CERT": str(tls_cert),
        "GATEWAY_TLS_KEY": str(tls_key),
        "EDGE_API_UPSTREAM": edge_api_upstream,
        "CLOUD_URL": normalize_cloud_url(cloud_url),
        "NGINX_LOCAL_RESOLVERS": resolvers if resolvers is not None else local_resolvers(),
    }
    return substitute(template_text, values)


def nginx_binary() -> str:
    """`$NGINX_BIN`, else nginx on PATH, else Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    candidates = [os.environ.get("NGINX_BIN"), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("nginx not found: install it (apt-get install nginx) or set NGINX_BIN")


def nginx_argv(prefix: Path, *, nginx_bin: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The command that runs nginx in the foreground from `prefix` (see `write_prefix`)."""
    binary = nginx_bin or nginx_binary()
    directives = "daemon off;"
    if os.geteuid() == 0:
        # Workers would otherwise drop to "nobody", which cannot write request bodies into a prefix
        # under a private directory (/root, pytest's tmp): run them as the invoking user, like the
        # other local services.
        directives += " user root;"
    # "-e stderr" keeps even early errors out of /var/log/nginx.
    return [binary, "-e", "stderr", "-p", f"{prefix}/", "-c", "nginx.conf", *extra, "-g", directives]


def write_prefix(prefix: Path, gateway_conf: str, *, main_conf: Path = MAIN_CONF_PATH) -> Path:
    """Lay out a runnable nginx prefix: nginx.conf, the rendered gateway.conf and tmp/.

    nginx.conf includes `gateway.conf`: whichever gateway runs from this prefix (the edge's or the
    cloud's; each has a prefix of its own) writes its rendered template there.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    shutil.copyfile(main_conf, prefix / "nginx.conf")
    (prefix / "gateway.conf").write_text(gateway_conf)
    return prefix


def check_config(prefix: Path, *, nginx_bin: str | None = None) -> None:
    """Run `nginx -t` on a prefix; raise GatewayConfigError with nginx's message if it is invalid."""
    argv = nginx_argv(prefix, nginx_bin=nginx_bin, extra=("-t", "-q"))
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GatewayConfigError(f"nginx rejects {prefix / 'gateway.conf'}:\n{result.stderr.strip()}")


class NginxServer(ABC):
    """nginx from a prefix of its own, on `port` (HTTP) and `tls_port` (HTTPS), serving `render()`.

    Use as a context manager (or call start/stop): start() makes the self-signed certificate if there
    is none yet (launcher.tls), renders and checks the config, runs nginx and returns once the ports
    accept connections; stop() quits nginx gracefully, killing it if it lingers. Without a TLS port a
    free one is taken; without certificate paths the certificate lives in `<prefix>/tls/`.
    """

    # The process's name in the launcher's output, and the certificate's file names.
    name = "nginx"

    def __init__(
        self,
        prefix: Path,
        *,
        port: int,
        nginx_bin: str | None = None,
        output: LineSink | None = None,
        startup_timeout: float = 10.0,
        tls_port: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self.prefix = prefix
        self.port = port
        self.tls_port = tls_port if tls_port is not None else free_port()
        self.tls_cert = (tls_cert or prefix / TLS_DIR / f"{self.name}.crt").absolute()
        self.tls_key = (tls_key or prefix / TLS_DIR / f"{self.name}.key").absolute()
        self.nginx_bin = nginx_bin
        self.output = output
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @abstractmethod
    def render(self) -> str:
        """The server config (gateway.conf of the prefix)."""

    def start(self) -> Self:
        if self.process is not None:
            raise ProcessError(f"the {self.name} was already started")
        binary = self.nginx_bin or nginx_binary()
        try:
            ensure_certificate(self.tls_cert, self.tls_key)
        except CertificateError as exc:
            raise GatewayConfigError(str(exc)) from None
        write_prefix(self.prefix, self.render())
        check_config(self.prefix, nginx_bin=binary)
        self.process = ManagedProcess(
            self.name,
            nginx_argv(self.prefix, nginx_bin=binary),
            stop_signal=signal.SIGQUIT,
            output=self.output,
        ).start()
        try:
            self._wait_until_listening(self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self, process: ManagedProcess) -> None:
        """Wait for nginx's pid file: nginx writes it only once every listening socket is bound.

        A connection test alone would be fooled by another server already on the port, while this
        nginx is still retrying the bind and about to give up.
        """
        pid_file = self.prefix / "nginx.pid"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if process.poll() is not None:
                raise ProcessError(
                    f"nginx exited with status {process.poll()} while starting:\n{process.output_tail()}"
                )
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(process.pid):
                    break
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"nginx did not start in {self.startup_timeout:.0f} s:\n{process.output_tail()}"
                )
            time.sleep(0.02)
        for port in (self.port, self.tls_port):
            wait_for_port("127.0.0.1", port, timeout=self.startup_timeout, process=process)

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout) if self.process is not None else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class NginxGateway(NginxServer):
    """The edge gateway (see NginxServer) in front of `edge_api_upstream`, falling back to `cloud_url`."""

    name = "gateway"

    def __init__(
        self,
        prefix: Path,
        *,
        port: int,
        edge_api_upstream: str,
        cloud_url: str,
        resolvers: str | None = None,
        template_path: Path = TEMPLATE_PATH,
        nginx_bin: str | None = None,
        output: LineSink | None = None,
        startup_timeout: float = 10.0,
        tls_port: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        super().__init__(
            prefix,
            port=port,
            nginx_bin=nginx_bin,
            output=output,
            startup_timeout=startup_timeout,
            tls_port=tls_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
        self.edge_api_upstream = edge_api_upstream
        self.cloud_url = cloud_url
        self.resolvers = resolvers
        self.template_path = template_path

    def render(self) -> str:
        return render_gateway(
            self.template_path.read_text(),
            self.port,
            self.edge_api_upstream,
            self.cloud_url,
            self.resolvers,
            tls_port=self.tls_port,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )
