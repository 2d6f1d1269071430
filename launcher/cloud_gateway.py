"""The cloud gateway outside Docker: nginx spreading requests over cloud-api replicas.

The same template as the image (nginx/cloud-gateway.conf.template), rendered the way the image's
envsubst renders it. In Docker the upstream is one `server cloud-api:8000 resolve ...;` line that
follows the replicas compose starts (`--scale cloud-api=N`); nginx 1.22, Debian's, has no `resolve`,
so a local run lists each replica's `host:port` (`upstream_servers`). `CloudGateway` runs it from a
prefix of its own (tests on free ports); `make run` does not use it: it keeps one cloud-api on :8000.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from launcher.gateway import (
    NGINX_DIR,
    GatewayConfigError,
    NginxServer,
    check_plain_paths,
    check_ports,
    is_host_port,
    local_resolvers,
    substitute,
)
from launcher.processes import LineSink

TEMPLATE_PATH = NGINX_DIR / "cloud-gateway.conf.template"

PLACEHOLDERS = (
    "CLOUD_GATEWAY_PORT",
    "CLOUD_GATEWAY_TLS_PORT",
    "CLOUD_GATEWAY_TLS_CERT",
    "CLOUD_GATEWAY_TLS_KEY",
    "CLOUD_API_SERVERS",
    "NGINX_LOCAL_RESOLVERS",
)
DEFAULT_PORT = 8000
DEFAULT_TLS_PORT = 8443
# How long a replica that failed once gets no requests. Locally a stopped replica stays stopped; in
# Docker a restarting one is back within seconds, and an unreachable one is resolved away anyway.
LOCAL_FAIL_TIMEOUT = "2s"
DOCKER_FAIL_TIMEOUT = "5s"

_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m)?$")


def upstream_servers(
    upstreams: Sequence[str], *, resolve: bool = False, fail_timeout: str = LOCAL_FAIL_TIMEOUT
) -> str:
    """The `server ...;` lines of the upstream (CLOUD_API_SERVERS) for these `host:port`s.

    `resolve` (nginx 1.27.3 or later, the image's) re-resolves a name while nginx runs, each address
    it finds becoming a peer: what Docker's one service name for every replica needs.
    """
    if isinstance(upstreams, str):
        raise GatewayConfigError("the cloud-api upstreams must be a list of host:port, not one string")
    if not upstreams:
        raise GatewayConfigError("the cloud gateway needs at least one cloud-api upstream")
    for upstream in upstreams:
        if not is_host_port(upstream):
            raise GatewayConfigError(f"a cloud-api upstream must be host:port, got {upstream!r}")
    if len(set(upstreams)) != len(upstreams):
        raise GatewayConfigError(f"the cloud-api upstreams repeat one: {', '.join(upstreams)}")
    if not _DURATION.match(fail_timeout):
        raise GatewayConfigError(f"fail_timeout must be an nginx duration such as 2s, got {fail_timeout!r}")
    options = f"{' resolve' if resolve else ''} max_fails=1 fail_timeout={fail_timeout}"
    return " ".join(f"server {upstream}{options};" for upstream in upstreams)


def render_cloud_gateway(
    template_text: str,
    port: int,
    upstreams: Sequence[str],
    *,
    tls_port: int,
    tls_cert: Path,
    tls_key: Path,
    resolvers: str | None = None,
    resolve: bool = False,
    fail_timeout: str = LOCAL_FAIL_TIMEOUT,
) -> str:
    """Fill the cloud gateway template; nginx's own (lower-case) `$variables` are left alone."""
    check_ports({"CLOUD_GATEWAY_PORT": port, "CLOUD_GATEWAY_TLS_PORT": tls_port})
    check_plain_paths({"CLOUD_GATEWAY_TLS_CERT": tls_cert, "CLOUD_GATEWAY_TLS_KEY": tls_key})
    values = {
        "CLOUD_GATEWAY_PORT": str(port),
        "CLOUD_GATEWAY_TLS_PORT": str(tls_port),
        "CLOUD_GATEWAY_TLS_CERT": str(tls_cert),
        "CLOUD_GATEWAY_TLS_KEY": str(tls_key),
        "CLOUD_API_SERVERS": upstream_servers(upstreams, resolve=resolve, fail_timeout=fail_timeout),
        "NGINX_LOCAL_RESOLVERS": resolvers if resolvers is not None else local_resolvers(),
    }
    return substitute(template_text, values, "cloud gateway")


class CloudGateway(NginxServer):
    """The cloud gateway (see launcher.gateway.NginxServer) in front of the cloud-api replicas at
    `upstreams` ("host:port" each), round robin, skipping one that fails."""

    name = "cloud-gateway"

    def __init__(
        self,
        prefix: Path,
        *,
        port: int,
        upstreams: Sequence[str],
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
        self.upstreams = list(upstreams)
        self.resolvers = resolvers
        self.template_path = template_path

    def render(self) -> str:
        return render_cloud_gateway(
            self.template_path.read_text(),
            self.port,
            self.upstreams,
            tls_port=self.tls_port,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            resolvers=self.resolvers,
        )
