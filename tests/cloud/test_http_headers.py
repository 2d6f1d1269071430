"""HTTP hardening of the cloud, against a real process: security headers on every response, pages that
need no inline code, cross-site refusal of cookie-authenticated writes, Secure cookies behind HTTPS,
and request bodies under a cap and a read deadline (raw sockets: a slow client gets 408, then EOF)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.app.web.pages import TEMPLATES
from tests.support import cloud as support
from tests.support.cloud import DEVICE_TOKEN, REVIEWER_PASSWORD, CloudServer
from tests.support.raw_http import raw_exchange

PUBLIC_URL = "https://review.example.test"
SECURITY_HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


@pytest.fixture(scope="module")
def cloud(cloud_db: support.TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    """Served over plain HTTP on a free port, but configured as the HTTPS address browsers use."""
    env = {"CLOUD_PUBLIC_URL": PUBLIC_URL, "CLOUD_BODY_TIMEOUT_S": "1"}
    server = CloudServer(cloud_db.url, Path(tmp_path_factory.mktemp("cloud")), env=env).start()
    yield server
    server.stop()


def log_in(cloud: CloudServer) -> str:
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        resp = http.post("/login", data={"username": "reviewer", "password": REVIEWER_PASSWORD})
    assert resp.status_code == 303, resp.text
    cookie: str = resp.cookies["io_session"]
    assert cookie
    return cookie


@pytest.fixture(scope="module")
def session_cookie(cloud: CloudServer) -> str:
    return log_in(cloud)


def browser(cloud: CloudServer, cookie: str, **headers: str) -> httpx.Client:
    """A client sending the session cookie as a browser would (by hand: it is a Secure cookie and
    this test talks plain HTTP), with the given extra headers."""
    return httpx.Client(base_url=cloud.url, timeout=30, headers={"cookie": f"io_session={cookie}", **headers})


# -- headers ------------------------------------------------------------------------------------------------


def test_every_kind_of_response_carries_the_security_headers(cloud: CloudServer) -> None:
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        responses = {
            "page": http.get("/login"),
            "static": http.get("/static/style.css"),
            "json": http.get("/health/live"),
            "refused": http.get("/api/v1/review/queues"),
            "missing": http.get("/no/such/route"),
            "redirect": http.get("/ui/queues"),
        }
    for what, resp in responses.items():
        missing = [name for name in SECURITY_HEADERS if name not in resp.headers]
        assert not missing, f"{what} ({resp.status_code}) lacks {missing}"
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "same-origin"
        assert resp.headers["strict-transport-security"].startswith("max-age=")  # the public URL is https


def test_the_page_policy_allows_only_our_own_code_and_no_framing(cloud: CloudServer) -> None:
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        policy = http.get("/login").headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'self'"
    assert directives["form-action"] == "'self'"
    assert "unsafe" not in policy


def test_the_api_docs_keep_working_and_are_not_frameable_either(cloud: CloudServer) -> None:
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        docs = http.get("/docs")
    assert docs.status_code == 200
    policy = docs.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in policy and "frame-ancestors 'none'" in policy
    assert docs.headers["x-frame-options"] == "DENY"


def test_templates_hold_no_inline_code_a_strict_policy_would_block() -> None:
    """No inline <script> or <style>, no style="" attributes, no on*="" handlers, no javascript: URLs."""
    loader_dir = Path(TEMPLATES.env.loader.searchpath[0])  # type: ignore[union-attr]
    offences = []
    for path in sorted(loader_dir.glob("*.html")):
        html = path.read_text()
        for pattern in (
            r"<script(?![^>]*\bsrc=)[^>]*>",
            r"<style\b",
            r"\sstyle\s*=",
            r"\son[a-z]+\s*=",
            r"javascript:",
        ):
            offences += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, html, re.IGNORECASE)]
    assert not offences, offences


# -- cookies ------------------------------------------------------------------------------------------------


def test_the_session_cookie_is_secure_httponly_and_lax_behind_https(cloud: CloudServer) -> None:
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        resp = http.post("/login", data={"username": "reviewer", "password": REVIEWER_PASSWORD})
        assert resp.status_code == 303
        flags = [part.strip().lower() for part in resp.headers["set-cookie"].split(";")]
        assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags
        out = browser(cloud, resp.cookies["io_session"]).post("/logout")
        assert out.status_code == 303
        assert "secure" in out.headers["set-cookie"].lower()


# -- same origin --------------------------------------------------------------------------------------------


def claim(http: httpx.Client) -> httpx.Response:
    return http.post("/api/v1/review/claim", params={"detector_id": "det_" + "0" * 27})


def test_a_cookie_authenticated_write_without_origin_or_referer_is_refused(
    cloud: CloudServer, session_cookie: str
) -> None:
    with browser(cloud, session_cookie) as http:
        resp = claim(http)
        assert resp.status_code == 403
        assert "Origin or Referer" in resp.json()["detail"]
        assert http.get("/api/v1/review/queues").status_code == 200  # reads are not writes


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "https://review.example.test.evil.example"},
        {"referer": "https://evil.example/page"},
    ],
    ids=["foreign-origin", "null-origin", "lookalike-origin", "foreign-referer"],
)
def test_a_cookie_authenticated_write_from_another_site_is_refused(
    cloud: CloudServer, session_cookie: str, headers: dict[str, str]
) -> None:
    with browser(cloud, session_cookie, **headers) as http:
        resp = claim(http)
    assert resp.status_code == 403 and "cross-site request refused" in resp.json()["detail"]


@pytest.mark.parametrize("which", ["public-url", "host", "referer"])
def test_a_cookie_authenticated_write_from_our_own_pages_goes_through(
    cloud: CloudServer, session_cookie: str, which: str
) -> None:
    headers = {
        "public-url": {"origin": PUBLIC_URL},
        "host": {"origin": cloud.url},
        "referer": {"referer": f"{cloud.url}/ui/label"},
    }[which]
    with browser(cloud, session_cookie, **headers) as http:
        resp = claim(http)
    assert resp.status_code in (200, 204, 404), resp.text


def test_token_calls_are_not_affected_by_origin(cloud: CloudServer, session_cookie: str) -> None:
    with cloud.client(DEVICE_TOKEN) as http:
        http.cookies.set("io_session", session_cookie)  # the token wins: the cookie is never used
        resp = http.post("/device-api/v1/detectors", json={}, headers={"origin": "https://evil.example"})
    assert resp.status_code == 400  # past the origin check, refused by validation


def test_login_from_another_site_is_refused_and_logout_needs_no_origin(cloud: CloudServer) -> None:
    with httpx.Client(base_url=cloud.url, timeout=30, headers={"origin": "https://evil.example"}) as http:
        resp = http.post("/login", data={"username": "reviewer", "password": REVIEWER_PASSWORD})
    assert resp.status_code == 403 and "io_session" not in resp.headers.get("set-cookie", "")
    with browser(cloud, log_in(cloud)) as http:
        assert http.post("/logout").status_code == 303


# -- bodies -------------------------------------------------------------------------------------------------


def head(path: str, content_length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {content_length}\r\n"
        f"{extra}\r\n"
    ).encode()


def test_a_body_that_stops_short_is_answered_408_and_the_connection_closed(cloud: CloudServer) -> None:
    received, closed = raw_exchange(cloud.port, head("/login", 1000) + b"username=r")
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"did not arrive within 1 s" in received
    assert closed


def test_a_declared_body_over_the_cap_is_refused_unread(cloud: CloudServer) -> None:
    received, closed = raw_exchange(cloud.port, head("/login", 10**9))
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert closed


def test_a_route_that_ignores_the_body_answers_and_closes(cloud: CloudServer) -> None:
    request = head("/health/live", 1000).replace(b"POST", b"GET", 1) + b"0123456789"
    received, closed = raw_exchange(cloud.port, request)
    assert received.startswith(b"HTTP/1.1 ")
    assert b"connection: close" in received.lower()
    assert closed
