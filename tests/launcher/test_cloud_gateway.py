"""The cloud gateway: the real nginx with the real template in front of two stand-in cloud-api replicas.

Requests are spread over both replicas; once one is gone every GET still succeeds from the other, while
a POST that a replica received is never sent again; HTTPS answers with the self-signed certificate;
the replica sees the client's address, scheme and request id. The image's side (the Dockerfile, the
compose service, the certificate script) renders the same template from the same placeholders.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from launcher.cloud_gateway import (
    DOCKER_FAIL_TIMEOUT,
    PLACEHOLDERS,
    TEMPLATE_PATH,
    CloudGateway,
    render_cloud_gateway,
    upstream_servers,
)
from launcher.gateway import GatewayConfigError, check_config, nginx_binary, write_prefix
from launcher.processes import free_port
from launcher.services import CLOUD_API, CLOUD_GATEWAY, CLOUD_SERVICES, SERVICES
from launcher.tls import ensure_certificate

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "cloud-gateway.Dockerfile"
TLS_SCRIPT = REPO / "docker" / "gateway-tls.sh"
GATEWAY_SERVICE = next(s for s in CLOUD_SERVICES if s.name == CLOUD_GATEWAY)


def nginx_or_skip() -> str:
    try:
        return nginx_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"{exc} (make setup installs Debian's)")


def render_local(port: int = 8000, upstreams: tuple[str, ...] = ("127.0.0.1:8001",), **kw: object) -> str:
    options: dict[str, object] = {
        "tls_port": 8443,
        "tls_cert": Path("/data/tls/cloud-gateway.crt"),
        "tls_key": Path("/data/tls/cloud-gateway.key"),
        "resolvers": "127.0.0.11",
        **kw,
    }
    return render_cloud_gateway(TEMPLATE_PATH.read_text(), port, list(upstreams), **options)


# --- stand-in replicas ---------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Replica:
    """An HTTP/1.1 keep-alive server answering `{"replica": name}` (or `status`), recording requests.

    stop() also closes the connections nginx keeps open to it, as a replica's exit would.
    """

    name: str
    status: int = 200
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        replica = self
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def setup(self) -> None:
                super().setup()
                with replica._lock:
                    replica._connections.add(self.connection)

            def finish(self) -> None:
                with replica._lock:
                    replica._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with replica._lock:
                    replica.requests.append(Seen(self.command, self.path, headers, body))
                    status = replica.status
                answer = json.dumps({"replica": replica.name, "bytes": len(body)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)


@pytest.fixture
def replicas() -> Iterator[tuple[Replica, Replica]]:
    pair = (Replica("a"), Replica("b"))
    yield pair
    for replica in pair:
        replica.stop()


@pytest.fixture
def gateway(tmp_path, replicas) -> Iterator[CloudGateway]:
    nginx_or_skip()
    gw = CloudGateway(
        tmp_path / "cloud-gateway",
        port=free_port(),
        upstreams=[r.address for r in replicas],
        resolvers="127.0.0.1",
    ).start()
    yield gw
    gw.stop()


def client_for(gw: CloudGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, trust_env=False, timeout=10)


def served_by(response: httpx.Response) -> str:
    name: str = response.json()["replica"]
    return name


# --- through the gateway -------------------------------------------------------------------------------


def test_requests_are_spread_over_every_replica(gateway, replicas):
    with client_for(gateway) as client:
        answers = [client.get("/health/live") for _ in range(10)]

    assert all(r.status_code == 200 for r in answers)
    assert {served_by(r) for r in answers} == {"a", "b"}
    assert len(replicas[0].requests) + len(replicas[1].requests) == 10


def test_a_stopped_replica_costs_no_get_an_error(gateway, replicas):
    first, second = replicas
    with client_for(gateway) as client:
        for _ in range(4):  # connections to both are open and kept
            assert client.get("/device-api/v1/detectors").status_code == 200
        first.stop()
        answers = [client.get("/device-api/v1/detectors") for _ in range(20)]

    assert [r.status_code for r in answers] == [200] * 20
    assert {served_by(r) for r in answers} == {"b"}
    assert len(second.requests) >= 20


def test_a_get_a_replica_answers_503_to_goes_to_the_next_one(gateway, replicas):
    replicas[0].status = 503
    with client_for(gateway) as client:
        answers = [client.get("/device-api/v1/me") for _ in range(6)]

    assert [r.status_code for r in answers] == [200] * 6
    assert {served_by(r) for r in answers} == {"b"}


def test_a_post_a_replica_received_is_never_sent_again(gateway, replicas):
    replicas[0].status = 503
    with client_for(gateway) as client:
        answers = [client.post("/device-api/v1/image-queries", content=b"img%d" % i) for i in range(6)]

    # The one that reached "a" comes back as its 503: re-sending could submit the query twice.
    statuses = sorted(r.status_code for r in answers)
    assert 503 in statuses and set(statuses) <= {200, 503}
    bodies = [seen.body for replica in replicas for seen in replica.requests]
    assert sorted(bodies) == sorted(b"img%d" % i for i in range(6))


def test_without_any_replica_the_gateway_answers_a_json_502(gateway, replicas):
    for replica in replicas:
        replica.stop()
    with client_for(gateway) as client:
        response = client.get("/health/live")

    assert response.status_code == 502
    assert response.json() == {"detail": "no cloud-api replica is reachable"}


def test_the_replica_sees_the_client_s_address_scheme_host_and_request_id(gateway, replicas):
    with client_for(gateway) as client:
        client.get("/api/v1/models", headers={"X-Request-Id": "req_cg0123"})
        client.get("/api/v1/models")

    seen = [s for replica in replicas for s in replica.requests]
    assert len(seen) == 2
    given, generated = sorted(seen, key=lambda s: s.headers["x-request-id"] != "req_cg0123")
    assert given.headers["x-request-id"] == "req_cg0123"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    for s in seen:
        assert s.headers["x-forwarded-for"] == "127.0.0.1"
        assert s.headers["x-forwarded-proto"] == "http"
        assert s.headers["host"] == f"127.0.0.1:{gateway.port}"
        assert "connection" not in s.headers


def test_a_large_upload_reaches_a_replica_whole(gateway, replicas):
    body = os.urandom(3 * 1024 * 1024)  # past the in-memory buffer: nginx buffers it in a file
    with client_for(gateway) as client:
        response = client.post("/api/v1/detectors/det_x/models", content=body)

    assert response.status_code == 200 and response.json()["bytes"] == len(body)
    (seen,) = [s for replica in replicas for s in replica.requests]
    assert seen.body == body


def test_a_body_over_the_gateway_s_limit_is_refused_with_json_before_it_is_sent(gateway, replicas):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/v1/detectors/det_x/models HTTP/1.1\r\nHost: cloud\r\n"
            b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % (600 * 1024 * 1024)
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body) == {"detail": "request body is larger than the cloud gateway accepts (520 MiB)"}
    assert replicas[0].requests == replicas[1].requests == []


def test_https_answers_with_the_self_signed_certificate(gateway, replicas):
    context = ssl.create_default_context(cafile=str(gateway.tls_cert))
    with httpx.Client(base_url=gateway.tls_url, verify=context, trust_env=False, timeout=10) as https:
        response = https.get("/health/live")
        assert response.status_code == 200

    assert gateway.tls_cert == gateway.prefix / "tls" / "cloud-gateway.crt"
    assert oct(gateway.tls_key.stat().st_mode & 0o777) == "0o600"
    (seen,) = [s for replica in replicas for s in replica.requests]
    assert seen.headers["x-forwarded-proto"] == "https"
    with pytest.raises(httpx.ConnectError):  # its own CA, no other
        httpx.get(f"{gateway.tls_url}/health/live", trust_env=False, timeout=10)


def test_the_process_is_named_after_the_gateway_and_stops_cleanly(tmp_path, replicas):
    nginx_or_skip()
    gw = CloudGateway(tmp_path, port=free_port(), upstreams=[replicas[0].address], resolvers="127.0.0.1")
    with gw:
        assert gw.process is not None and gw.process.name == "cloud-gateway"
        group = gw.process.pid
        assert group is not None
    assert gw.process.poll() == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


# --- rendering -----------------------------------------------------------------------------------------


def test_the_rendered_local_config_passes_nginx_t(tmp_path):
    nginx_or_skip()
    cert, key = tmp_path / "tls" / "c.crt", tmp_path / "tls" / "c.key"
    ensure_certificate(cert, key)
    conf = render_local(upstreams=("127.0.0.1:8001", "127.0.0.1:8002"), tls_cert=cert, tls_key=key)

    check_config(write_prefix(tmp_path, conf))
    assert (
        "server 127.0.0.1:8001 max_fails=1 fail_timeout=2s; server 127.0.0.1:8002 max_fails=1 fail_timeout=2s;"
        in conf
    )
    assert "listen 8000;" in conf and "listen 8443 ssl;" in conf and f"ssl_certificate {cert};" in conf


def test_the_image_renders_the_same_template_from_the_same_placeholders_as_envsubst():
    """What the image's entrypoint makes of the template with compose's values, and our renderer."""
    values = {**GATEWAY_SERVICE.environment, "NGINX_LOCAL_RESOLVERS": "127.0.0.11"}
    template = TEMPLATE_PATH.read_text()
    shell_format = " ".join(f"${{{name}}}" for name in [*values, "HOME", "PATH"])
    envsubst = subprocess.run(
        ["envsubst", shell_format],
        input=template,
        capture_output=True,
        text=True,
        check=True,
        env={**values, "HOME": "/root", "PATH": os.environ["PATH"]},
    )

    rendered = render_cloud_gateway(
        template,
        int(values["CLOUD_GATEWAY_PORT"]),
        ["cloud-api:8000"],
        tls_port=int(values["CLOUD_GATEWAY_TLS_PORT"]),
        tls_cert=Path(values["CLOUD_GATEWAY_TLS_CERT"]),
        tls_key=Path(values["CLOUD_GATEWAY_TLS_KEY"]),
        resolvers="127.0.0.11",
        resolve=True,
        fail_timeout=DOCKER_FAIL_TIMEOUT,
    )

    assert rendered == envsubst.stdout
    assert "server cloud-api:8000 resolve max_fails=1 fail_timeout=5s;" in rendered


def test_the_dockerfile_and_the_compose_service_agree_on_every_placeholder():
    dockerfile = DOCKERFILE.read_text()
    defaults = dict(re.findall(r"^\s*(?:ENV )?([A-Z_]+)=(\"[^\"]*\"|\S+)", dockerfile, flags=re.MULTILINE))
    defaults = {name: value.strip('"') for name, value in defaults.items()}
    (filter_names,) = re.findall(r'NGINX_ENVSUBST_FILTER="\^\(([A-Z_|]+)\)"', dockerfile)

    assert set(GATEWAY_SERVICE.environment) == set(PLACEHOLDERS) - {"NGINX_LOCAL_RESOLVERS"}
    assert sorted(filter_names.split("|")) == sorted(PLACEHOLDERS)
    assert {name: defaults[name] for name in GATEWAY_SERVICE.environment} == dict(GATEWAY_SERVICE.environment)
    assert GATEWAY_SERVICE.environment["CLOUD_API_SERVERS"] == upstream_servers(
        [f"{CLOUD_API}:8000"], resolve=True, fail_timeout=DOCKER_FAIL_TIMEOUT
    )
    assert "COPY nginx/cloud-gateway.conf.template /etc/nginx/templates/default.conf.template" in dockerfile
    assert "NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1" in dockerfile
    assert re.search(r"^FROM nginx:1\.(2[7-9]|[3-9][0-9])", dockerfile, flags=re.MULTILINE)  # `resolve`
    assert "STOPSIGNAL SIGQUIT" in dockerfile
    assert (defaults["TLS_CERT_VARIABLE"], defaults["TLS_KEY_VARIABLE"]) == (
        "CLOUD_GATEWAY_TLS_CERT",
        "CLOUD_GATEWAY_TLS_KEY",
    )
    # The local launcher runs one cloud-api of its own and no gateway.
    assert CLOUD_GATEWAY not in {s.name for s in SERVICES} and not GATEWAY_SERVICE.local


def test_the_template_uses_only_known_placeholders_and_lower_case_nginx_variables():
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", TEMPLATE_PATH.read_text()))

    assert set(PLACEHOLDERS) <= names
    assert {name for name in names if not name.islower()} == set(PLACEHOLDERS)


def test_the_template_retries_only_safely_and_resolves_at_http_level():
    conf = render_local()

    # First in the file, outside every block: the http context the image includes the file in.
    lines = [line for line in conf.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("resolver ") and lines[1].startswith("resolver_timeout ")
    conf = "\n".join(lines)
    assert "resolver 127.0.0.11 valid=5s ipv6=off;" in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf
    assert "non_idempotent" not in conf
    assert re.search(r"proxy_next_upstream_tries [1-5];", conf)
    assert re.search(r"proxy_next_upstream_timeout \d+s;", conf)
    upstream = conf[conf.index("upstream cgw_cloud_api {") :]
    upstream = upstream[: upstream.index("}")]
    assert "zone cgw_cloud_api" in upstream and "keepalive" in upstream
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "access_log off;" in conf


@pytest.mark.parametrize(
    ("port", "upstreams", "tls"),
    [
        (0, ["127.0.0.1:1"], {}),
        (70000, ["127.0.0.1:1"], {}),
        (8000, ["127.0.0.1:1"], {"tls_port": 8000}),
        (8000, ["127.0.0.1:1"], {"tls_port": 0}),
        (8000, [], {}),
        (8000, ["http://127.0.0.1:1"], {}),
        (8000, ["127.0.0.1"], {}),
        (8000, ["127.0.0.1:0"], {}),
        (8000, ["127.0.0.1:70000"], {}),
        (8000, ["127.0.0.1:1; server evil:1"], {}),
        (8000, ["127.0.0.1:1", "127.0.0.1:1"], {}),
        (8000, "127.0.0.1:1", {}),
        (8000, ["127.0.0.1:1"], {"tls_cert": Path("/data/tls/my cert.pem")}),
        (8000, ["127.0.0.1:1"], {"tls_key": Path("/data/tls/key;pem")}),
        (8000, ["127.0.0.1:1"], {"fail_timeout": "2s; evil"}),
    ],
)
def test_bad_cloud_gateway_settings_are_refused(port, upstreams, tls):
    options = {
        "tls_port": 8443,
        "tls_cert": Path("/c.crt"),
        "tls_key": Path("/c.key"),
        "resolvers": "r",
        **tls,
    }
    with pytest.raises(GatewayConfigError):
        render_cloud_gateway(TEMPLATE_PATH.read_text(), port, upstreams, **options)


def test_unknown_placeholders_are_refused():
    with pytest.raises(GatewayConfigError, match="cloud gateway template uses unknown placeholders: SECRET"):
        render_cloud_gateway(
            "listen ${CLOUD_GATEWAY_PORT}; set $x ${SECRET};",
            1,
            ["h:1"],
            tls_port=2,
            tls_cert=Path("/c"),
            tls_key=Path("/k"),
            resolvers="r",
        )


def test_a_refused_upstream_leaves_nothing_running(tmp_path):
    gw = CloudGateway(tmp_path, port=free_port(), upstreams=["not an address"], resolvers="127.0.0.1")

    with pytest.raises(GatewayConfigError, match="host:port"):
        gw.start()
    assert gw.process is None


# --- the image's certificate script --------------------------------------------------------------------


def run_tls_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(TLS_SCRIPT)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def subject(cert: Path) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture
def openssl() -> None:
    if subprocess.run(["sh", "-c", "command -v openssl"], capture_output=True, check=False).returncode:
        pytest.skip("openssl is not installed")


def test_the_certificate_script_serves_the_cloud_gateway_s_settings(tmp_path, openssl):
    cert, key = tmp_path / "tls" / "cloud-gateway.crt", tmp_path / "tls" / "cloud-gateway.key"
    env = {
        "TLS_CERT_VARIABLE": "CLOUD_GATEWAY_TLS_CERT",
        "TLS_KEY_VARIABLE": "CLOUD_GATEWAY_TLS_KEY",
        "TLS_COMMON_NAME": "IntelliOptics cloud gateway",
        "CLOUD_GATEWAY_TLS_CERT": str(cert),
        "CLOUD_GATEWAY_TLS_KEY": str(key),
        # The edge's settings, which this image does not use, must not be taken instead.
        "GATEWAY_TLS_CERT": str(tmp_path / "edge.crt"),
        "GATEWAY_TLS_KEY": str(tmp_path / "edge.key"),
    }

    first = run_tls_script(env)
    assert first.returncode == 0, first.stderr
    made = cert.read_bytes()
    assert "CN = IntelliOptics cloud gateway" in subject(cert)
    assert "DNS:localhost" in subject(cert) and "IP Address:127.0.0.1" in subject(cert)
    assert oct(key.stat().st_mode & 0o777) == "0o600" and oct(cert.stat().st_mode & 0o777) == "0o644"
    assert not (tmp_path / "edge.crt").exists()

    again = run_tls_script(env)
    assert again.returncode == 0 and cert.read_bytes() == made

    key.unlink()
    half = run_tls_script(env)
    assert half.returncode == 1 and "give both, or neither" in half.stderr


def test_the_certificate_script_keeps_the_edge_gateway_s_defaults(tmp_path, openssl):
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"

    made = run_tls_script({"GATEWAY_TLS_CERT": str(cert), "GATEWAY_TLS_KEY": str(key)})
    assert made.returncode == 0, made.stderr
    assert "CN = IntelliOptics edge gateway" in subject(cert)

    unset = run_tls_script({"TLS_CERT_VARIABLE": "CLOUD_GATEWAY_TLS_CERT"})
    assert unset.returncode == 1 and "set CLOUD_GATEWAY_TLS_CERT and GATEWAY_TLS_KEY" in unset.stderr
