"""The real nginx, with the real gateway template, between two recording upstreams.

Given edge-api's answer, the client gets either that answer or the cloud's, and the cloud sees the very
request the client sent (method, path, headers, body) or nothing at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import launcher.gateway
from launcher.gateway import (
    PLACEHOLDERS,
    TEMPLATE_PATH,
    GatewayConfigError,
    NginxGateway,
    check_config,
    local_resolvers,
    render_gateway,
    write_prefix,
)
from launcher.processes import ProcessError, free_port
from launcher.tls import ensure_certificate

pytestmark = pytest.mark.processes

TOKEN = "intellioptics_abcdefghijklmnop"
DETECTOR = "det_2bQwM1aR5nXkYVh0pLs6Ee3Uq9C"
IQ_PATH = f"/device-api/v1/image-queries?detector_id={DETECTOR}&want_async=false"
IMAGE = os.urandom(300 * 1024)
CLOUD_UNREACHABLE = {"detail": "edge cannot answer and the cloud is unreachable"}


def start_gateway(directory: Path, edge_upstream: str, cloud_url: str) -> NginxGateway:
    return NginxGateway(
        directory, port=free_port(), edge_api_upstream=edge_upstream, cloud_url=cloud_url
    ).start()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, edge, cloud) -> Iterator[NginxGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), f"127.0.0.1:{edge.port}", cloud.url)
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _fresh_upstreams(edge, cloud) -> None:
    edge.reset()
    cloud.reset()


def client_for(gw: NginxGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, trust_env=False, timeout=10)


@pytest.fixture
def client(gateway) -> Iterator[httpx.Client]:
    with client_for(gateway) as c:
        yield c


def post_image(
    client: httpx.Client, body: bytes = IMAGE, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        IQ_PATH,
        content=body,
        headers={"x-api-token": TOKEN, "Content-Type": "image/jpeg", **(headers or {})},
    )


# --- edge answers --------------------------------------------------------------------------------------


def test_an_edge_answer_reaches_the_client_and_the_cloud_sees_nothing(client, edge, cloud):
    response = post_image(client, headers={"X-Request-Id": "req_uu0123"})

    assert response.status_code == 200
    assert response.json() == {"from": "edge"}
    assert cloud.requests == []
    (seen,) = edge.requests
    assert (seen.method, seen.path, seen.body) == ("POST", IQ_PATH, IMAGE)
    assert seen.version == "HTTP/1.1"
    assert seen.headers["x-api-token"] == TOKEN
    assert seen.headers["x-request-id"] == "req_uu0123"
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["host"] == f"127.0.0.1:{client.base_url.port}"


def test_a_request_without_an_id_gets_one_from_the_gateway(client, edge):
    client.get("/device-api/v1/me")

    (seen,) = edge.requests
    assert re.fullmatch(r"[0-9a-f]{32}", seen.headers["x-request-id"])


def test_edge_connections_are_reused(client, edge):
    for _ in range(5):
        assert client.get("/device-api/v1/detectors").status_code == 200

    assert len(edge.requests) == 5
    assert len({seen.peer for seen in edge.requests}) == 1
    assert "connection" not in edge.requests[0].headers


# --- fallback to the cloud -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 405, 422, 502, 503, 504])
def test_edge_statuses_that_mean_cannot_answer_go_to_the_cloud_intact(client, edge, cloud, status):
    edge.answer(status)

    response = post_image(client, headers={"X-Request-Id": "req_uu4567", "X-Custom": "kept"})

    assert response.status_code == 200
    assert response.json() == {"from": "cloud"}
    assert len(edge.requests) == 1
    (seen,) = cloud.requests
    assert (seen.method, seen.path, seen.body) == ("POST", IQ_PATH, IMAGE)
    assert seen.headers["x-api-token"] == TOKEN
    assert seen.headers["x-request-id"] == "req_uu4567"
    assert seen.headers["content-type"] == "image/jpeg"
    assert seen.headers["x-custom"] == "kept"
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["host"] == f"127.0.0.1:{cloud.port}"
    assert seen.headers["x-edge-fallback"] == str(status)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET"])
def test_a_fallback_keeps_the_method(client, edge, cloud, method):
    edge.answer(405)

    response = client.request(method, "/edge-config", content=b'{"a": 1}' if method != "GET" else b"")

    assert response.status_code == 200
    (seen,) = cloud.requests
    assert seen.method == method
    assert seen.body == (b'{"a": 1}' if method != "GET" else b"")


def test_a_body_buffered_on_disk_is_resent_whole(client, edge, cloud):
    body = os.urandom(5 * 1024 * 1024)
    edge.answer(503)

    response = post_image(client, body=body)

    assert response.status_code == 200
    assert edge.requests[0].body == body
    assert cloud.requests[0].body == body


def test_the_cloud_answer_reaches_the_client_as_it_is(client, edge, cloud):
    edge.answer(503)
    cloud.answer(201, b'{"id": "iq_x"}', X_Cloud="yes")

    response = post_image(client)

    assert response.status_code == 201
    assert response.json() == {"id": "iq_x"}
    assert response.headers["x-cloud"] == "yes"


def test_a_request_id_generated_for_the_edge_is_kept_for_the_cloud(client, edge, cloud):
    edge.answer(503)

    post_image(client)

    assert edge.requests[0].headers["x-request-id"] == cloud.requests[0].headers["x-request-id"]


# --- no fallback ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 422, 404])
def test_a_no_fallback_answer_is_a_503_and_the_cloud_sees_nothing(client, edge, cloud, status):
    edge.answer(status, X_No_Fallback="1")

    response = post_image(client)

    assert response.status_code == 503
    assert response.headers["x-no-fallback"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"}
    assert cloud.requests == []


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415, 429, 500])
def test_other_edge_statuses_pass_through_with_their_body(client, edge, cloud, status):
    """A refused token (401) or a missing right (403) is edge-api's last word: no cloud retry."""
    body = json.dumps({"detail": f"edge says {status}"}).encode()
    edge.answer(status, body)

    response = post_image(client)

    assert response.status_code == status
    assert response.content == body
    assert response.headers["content-type"] == "application/json"
    assert cloud.requests == []


@pytest.mark.parametrize(
    "path",
    [
        f"/device-api/v1/api-tokens/by-snippet/{TOKEN[:20]}",
        f"/v1/api-tokens/by-snippet/{TOKEN[:20]}",
        "/health/live",
        "/health/ready",
        "/status",
        "/metrics",
    ],
)
@pytest.mark.parametrize("status", [404, 503])
def test_edge_only_routes_are_never_sent_to_the_cloud(client, edge, cloud, path, status):
    edge.answer(status, b'{"detail": "edge only"}')

    response = client.get(path, headers={"x-api-token": TOKEN})

    assert response.status_code == status
    assert response.json() == {"detail": "edge only"}
    assert edge.requests[0].path == path
    assert cloud.requests == []


@pytest.mark.parametrize("path", ["/internal/edge-config", "/internal/anything"])
def test_the_edge_s_internal_routes_are_not_served_by_the_gateway(client, edge, cloud, path):
    response = client.get(path, headers={"x-api-token": TOKEN, "x-internal-token": "guess"})

    assert response.status_code == 404
    assert response.json() == {"detail": "not found"}
    assert edge.requests == cloud.requests == []


# --- HTTPS ---------------------------------------------------------------------------------------------


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def tls_client(gw: NginxGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.tls_url, verify=trusting(gw.tls_cert), trust_env=False, timeout=10)


def test_https_serves_the_same_routes_with_the_self_signed_certificate(gateway, edge, cloud):
    with tls_client(gateway) as https:
        response = post_image(https)

    assert response.status_code == 200 and response.json() == {"from": "edge"}
    (seen,) = edge.requests
    assert seen.headers["x-api-token"] == TOKEN
    assert seen.headers["x-forwarded-proto"] == "https"
    assert cloud.requests == []


def test_an_https_fallback_hands_the_caller_s_token_to_the_cloud(gateway, edge, cloud):
    edge.answer(503)
    with tls_client(gateway) as https:
        response = post_image(https)

    assert response.status_code == 200 and response.json() == {"from": "cloud"}
    (seen,) = cloud.requests
    assert seen.headers["x-api-token"] == TOKEN and seen.body == IMAGE


def test_the_certificate_names_the_loopback_addresses_and_is_kept_across_starts(tmp_path, edge, cloud):
    first = start_gateway(tmp_path / "gw", f"127.0.0.1:{edge.port}", cloud.url)
    cert = first.tls_cert.read_bytes()
    first.stop()
    again = start_gateway(tmp_path / "gw", f"127.0.0.1:{edge.port}", cloud.url)
    try:
        assert again.tls_cert.read_bytes() == cert
        assert oct(again.tls_key.stat().st_mode & 0o777) == "0o600"
        with httpx.Client(
            base_url=f"https://localhost:{again.tls_port}", verify=trusting(again.tls_cert), trust_env=False
        ) as https:
            assert https.get("/health/live").status_code == 200
    finally:
        again.stop()


def test_an_operator_certificate_is_used_as_given(tmp_path, edge, cloud):
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    ensure_certificate(cert, key)
    mine = cert.read_bytes()
    gw = NginxGateway(
        tmp_path / "gw",
        port=free_port(),
        edge_api_upstream=f"127.0.0.1:{edge.port}",
        cloud_url=cloud.url,
        tls_cert=cert,
        tls_key=key,
    ).start()
    try:
        with tls_client(gw) as https:
            assert https.get("/health/live").status_code == 200
        assert cert.read_bytes() == mine and not (tmp_path / "gw" / "tls").exists()
    finally:
        gw.stop()


def test_a_certificate_without_its_key_is_refused(tmp_path, edge, cloud):
    cert = tmp_path / "only.crt"
    ensure_certificate(cert, tmp_path / "only.key")
    (tmp_path / "only.key").unlink()
    gw = NginxGateway(
        tmp_path / "gw",
        port=free_port(),
        edge_api_upstream=f"127.0.0.1:{edge.port}",
        cloud_url=cloud.url,
        tls_cert=cert,
        tls_key=tmp_path / "only.key",
    )
    with pytest.raises(GatewayConfigError, match="give both"):
        gw.start()


def test_a_body_over_the_gateway_limit_is_refused_with_json(gateway, edge, cloud):
    request = b"POST /device-api/v1/image-queries HTTP/1.1\r\nHost: x\r\nContent-Length: 70000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(request)
        head, _, body = sock.recv(65536).partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 413")
    assert b"Content-Type: application/json" in head
    assert "detail" in json.loads(body)
    assert edge.requests == cloud.requests == []


# --- unreachable upstreams -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_edge_down(tmp_path_factory, cloud) -> Iterator[NginxGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("edge-down"), f"127.0.0.1:{free_port()}", cloud.url)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def gateway_cloud_down(tmp_path_factory, edge) -> Iterator[NginxGateway]:
    gw = start_gateway(
        tmp_path_factory.mktemp("cloud-down"), f"127.0.0.1:{edge.port}", f"http://127.0.0.1:{free_port()}"
    )
    yield gw
    gw.stop()


def test_with_the_edge_down_requests_go_to_the_cloud(gateway_edge_down, cloud):
    with client_for(gateway_edge_down) as client:
        response = post_image(client)

    assert response.status_code == 200
    assert response.json() == {"from": "cloud"}
    (seen,) = cloud.requests
    assert (seen.method, seen.path, seen.body) == ("POST", IQ_PATH, IMAGE)
    assert seen.headers["x-api-token"] == TOKEN


def test_with_the_edge_down_edge_only_routes_answer_json_502(gateway_edge_down, cloud):
    with client_for(gateway_edge_down) as client:
        response = client.get("/health/live")

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert cloud.requests == []


def test_with_edge_and_cloud_down_the_client_gets_json_502(tmp_path):
    gw = start_gateway(tmp_path, f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    try:
        with client_for(gw) as client:
            response = post_image(client)
    finally:
        gw.stop()

    assert response.status_code == 502
    assert response.json() == CLOUD_UNREACHABLE


def test_when_the_edge_cannot_answer_and_the_cloud_is_down_the_client_gets_json_502(gateway_cloud_down, edge):
    edge.answer(503)
    with client_for(gateway_cloud_down) as client:
        response = post_image(client)

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json() == CLOUD_UNREACHABLE


def test_a_cloud_name_that_does_not_resolve_does_not_stop_the_gateway(tmp_path, edge):
    edge.answer(503)
    gw = NginxGateway(
        tmp_path,
        port=free_port(),
        edge_api_upstream=f"127.0.0.1:{edge.port}",
        cloud_url="http://cloud.invalid:8000",
        resolvers="127.0.0.1:1",
    ).start()
    try:
        with client_for(gw) as client:
            response = post_image(client)
    finally:
        gw.stop()

    assert response.status_code == 502
    assert response.json() == CLOUD_UNREACHABLE


@pytest.mark.parametrize(("suffix", "prefix"), [("/", ""), ("//", ""), ("/prefix/", "/prefix")])
def test_a_cloud_url_with_trailing_slashes_as_the_image_renders_it_sends_single_slash_paths(
    tmp_path, monkeypatch, edge, cloud, suffix, prefix
):
    # The image's envsubst pastes CLOUD_URL as given; render it the same way (no normalising here).
    monkeypatch.setattr(launcher.gateway, "normalize_cloud_url", lambda url: url)
    edge.answer(404)
    gw = start_gateway(tmp_path, f"127.0.0.1:{edge.port}", cloud.url + suffix)
    try:
        assert f"{cloud.url}{suffix}" in (tmp_path / "gateway.conf").read_text()
        with client_for(gw) as client:
            response = post_image(client)
    finally:
        gw.stop()

    assert response.json() == {"from": "cloud"}
    (seen,) = cloud.requests
    assert seen.target == prefix + IQ_PATH


# --- process handling ----------------------------------------------------------------------------------


def test_a_gateway_that_cannot_listen_fails_to_start_and_leaves_nothing_running(tmp_path, edge):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        gw = NginxGateway(
            tmp_path,
            port=taken.getsockname()[1],
            edge_api_upstream=f"127.0.0.1:{edge.port}",
            cloud_url="http://127.0.0.1:1",
        )
        with pytest.raises(ProcessError, match="exited"):
            gw.start()

    assert gw.process is not None and gw.process.poll() is not None


def test_stop_ends_nginx_and_its_workers(tmp_path, edge):
    gw = start_gateway(tmp_path, f"127.0.0.1:{edge.port}", "http://127.0.0.1:1")
    assert gw.process is not None and gw.process.pid is not None
    group = gw.process.pid

    assert gw.stop() == 0

    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


# --- rendering -----------------------------------------------------------------------------------------


def test_the_template_renders_like_the_image_s_envsubst_does():
    values = {
        "GATEWAY_PORT": "30101",
        "GATEWAY_TLS_PORT": "30143",
        "GATEWAY_TLS_CERT": "/data/tls/gateway.crt",
        "GATEWAY_TLS_KEY": "/data/tls/gateway.key",
        "EDGE_API_UPSTREAM": "edge-api:8718",
        "CLOUD_URL": "https://api.example.com",
        "NGINX_LOCAL_RESOLVERS": "127.0.0.11",
    }
    template = TEMPLATE_PATH.read_text()
    # The image passes the names of the variables it defines as envsubst's format, like this.
    shell_format = " ".join(f"${{{name}}}" for name in [*values, "HOME", "PATH", "HOSTNAME"])
    envsubst = subprocess.run(
        ["envsubst", shell_format],
        input=template,
        capture_output=True,
        text=True,
        check=True,
        env={**values, "HOME": "/root", "PATH": os.environ["PATH"], "HOSTNAME": "gateway"},
    )

    rendered = render_gateway(template, 30101, "edge-api:8718", "https://api.example.com", "127.0.0.11")

    assert rendered == envsubst.stdout


def test_the_template_uses_only_known_placeholders_and_lower_case_nginx_variables():
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", TEMPLATE_PATH.read_text()))

    assert set(PLACEHOLDERS) <= names
    assert {name for name in names if not name.islower()} == set(PLACEHOLDERS)


def test_the_rendered_config_passes_nginx_t(tmp_path):
    cert, key = tmp_path / "tls" / "gateway.crt", tmp_path / "tls" / "gateway.key"
    assert ensure_certificate(cert, key) is True
    conf = render_gateway(
        TEMPLATE_PATH.read_text(),
        30101,
        "edge-api:8718",
        "https://api.example.com/",
        "127.0.0.11",
        tls_cert=cert,
        tls_key=key,
    )
    # nginx -t resolves the edge-api upstream name, which only exists inside compose.
    check_config(write_prefix(tmp_path, conf.replace("edge-api:8718", "127.0.0.1:8718")))

    # The URL goes through a map that drops trailing slashes (the launcher drops them already).
    assert 'map "https://api.example.com" $gw_cloud_url {' in conf
    assert "proxy_pass $gw_cloud_url$request_uri;" in conf
    assert "listen 30101;" in conf
    assert "listen 30143 ssl;" in conf and f"ssl_certificate {cert};" in conf
    assert "resolver 127.0.0.11 valid=30s;" in conf


def test_nginx_t_reports_a_broken_config(tmp_path):
    with pytest.raises(GatewayConfigError, match="nginx rejects"):
        check_config(write_prefix(tmp_path, "server { listen 1; bogus_directive on; }"))


@pytest.mark.parametrize(
    ("port", "upstream", "cloud_url"),
    [
        (0, "127.0.0.1:1", "http://c"),
        (70000, "127.0.0.1:1", "http://c"),
        (1, "http://127.0.0.1:1", "http://c"),
        (1, "127.0.0.1", "http://c"),
        (1, "127.0.0.1:1", "ftp://c"),
        (1, "127.0.0.1:1", "c:8000"),
        (1, "127.0.0.1:1", "http://c/?x=1"),
    ],
)
def test_bad_gateway_settings_are_refused(port, upstream, cloud_url):
    with pytest.raises(GatewayConfigError):
        render_gateway(TEMPLATE_PATH.read_text(), port, upstream, cloud_url, "127.0.0.1")


@pytest.mark.parametrize(
    "tls",
    [
        {"tls_port": 0},
        {"tls_port": 70000},
        {"tls_port": 30101},
        {"tls_cert": Path("/data/tls/my cert.pem")},
        {"tls_key": Path("/data/tls/key;pem")},
    ],
)
def test_bad_tls_settings_are_refused(tls):
    with pytest.raises(GatewayConfigError):
        render_gateway(TEMPLATE_PATH.read_text(), 30101, "h:1", "http://c", "r", **tls)


def test_unknown_placeholders_are_refused():
    with pytest.raises(GatewayConfigError, match="CLOUD_TOKEN"):
        render_gateway("listen ${GATEWAY_PORT}; set $x ${CLOUD_TOKEN};", 1, "h:1", "http://c", "r")


def test_local_resolvers_follow_resolv_conf(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\nsearch lan\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\n"
    )

    assert local_resolvers(resolv) == "10.0.0.2 [fd00::53]"
    assert local_resolvers(tmp_path / "missing") == "127.0.0.1"
