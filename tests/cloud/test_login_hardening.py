"""Logging in to the review UI under attack, against a real cloud process: failures are throttled per
username and per client address with a lockout that ends by itself, unknown usernames are not told
apart, password checks run on a small bounded pool (a flood gets "busy", image queries keep flowing),
and the session cookie is Secure when the request came over HTTPS.

Client addresses come from X-Forwarded-For, which the cloud trusts from loopback (as from a proxy in
front of it), so each test throttles addresses of its own."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import login_storm
from cloud.app.core.login_limits import address_key
from tests.support import cloud as support
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory, Reviewer
from tests.support.cloud_factories_worker import private_database

MAX_PER_USER = 5
MAX_PER_ADDRESS = 12
# Long enough that forty refused attempts on a busy machine all fall inside one lock.
LOCKOUT_S = 10
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def cloud(cloud_db: support.TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    env = {
        "CLOUD_LOGIN_MAX_FAILURES_PER_USER": str(MAX_PER_USER),
        "CLOUD_LOGIN_MAX_FAILURES_PER_ADDRESS": str(MAX_PER_ADDRESS),
        "CLOUD_LOGIN_WINDOW_S": "300",
        "CLOUD_LOGIN_LOCKOUT_S": str(LOCKOUT_S),
        "CLOUD_LOGIN_REFUSAL_DELAY_S": "0",
        "CLOUD_PASSWORD_WORKERS": "1",
        "CLOUD_PASSWORD_QUEUE": "2",
    }
    server = CloudServer(cloud_db.url, Path(tmp_path_factory.mktemp("cloud")), env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def factory(cloud: CloudServer, cloud_db: support.TestDatabase) -> CloudFactory:
    return CloudFactory(cloud_db.url, cloud.data_dir / "blobs")


def new_address() -> str:
    return next(_addresses)


def post_login(
    cloud: CloudServer, username: str, password: str, address: str, **headers: str
) -> httpx.Response:
    with httpx.Client(
        base_url=cloud.url, timeout=30, headers={"x-forwarded-for": address, **headers}
    ) as http:
        return http.post("/login", data={"username": username, "password": password})


def error_of(resp: httpx.Response) -> str:
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', resp.text)
    assert found, resp.text[:500]
    return found.group(1)


def retry_after(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text[:300]
    return int(resp.headers["retry-after"])


# -- per username -------------------------------------------------------------------------------------------


def test_forty_wrong_passwords_lock_the_username_and_the_lock_ends_by_itself(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    who = factory.reviewer()
    address = new_address()
    statuses = [post_login(cloud, who.username, "wrong", address).status_code for _ in range(40)]
    assert statuses == [401] * MAX_PER_USER + [429] * (40 - MAX_PER_USER)
    locked = post_login(cloud, who.username, who.password, address)  # the right one, too late
    wait = retry_after(locked)
    assert 1 <= wait <= LOCKOUT_S
    assert re.fullmatch(r"Too many failed attempts\. Try again in \d+ s\.", error_of(locked))
    assert "io_session" not in locked.headers.get("set-cookie", "")
    # Locked from anywhere: the username's lock is not the address's.
    assert post_login(cloud, who.username, who.password, new_address()).status_code == 429
    time.sleep(wait + 0.5)
    assert post_login(cloud, who.username, who.password, address).status_code == 303


def test_a_successful_login_resets_the_username_s_count(cloud: CloudServer, factory: CloudFactory) -> None:
    who = factory.reviewer()
    address = new_address()
    for _ in range(MAX_PER_USER - 1):
        assert post_login(cloud, who.username, "wrong", address).status_code == 401
    assert post_login(cloud, who.username, who.password, address).status_code == 303
    for _ in range(MAX_PER_USER):
        assert post_login(cloud, who.username, "wrong", address).status_code == 401
    assert post_login(cloud, who.username, "wrong", address).status_code == 429


def test_unknown_usernames_get_the_same_answers_as_real_ones(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    real = factory.reviewer()
    ghost = f"nobody-{real.username}"

    def answers(username: str) -> list[tuple[int, str]]:
        address = new_address()
        seen = []
        for _ in range(MAX_PER_USER + 2):
            resp = post_login(cloud, username, "wrong", address)
            seen.append((resp.status_code, error_of(resp)))
        return seen

    assert answers(real.username) == answers(ghost)


def test_a_burst_of_guesses_at_once_is_counted_against_itself(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    """Attempts are written before their password is checked, so 30 sent together do not all pass an
    empty count; those beyond the pool's room are answered busy and are not counted. Attempts in flight
    together may see each other a moment late, at most the pool's room (three) beyond the limit."""
    who = factory.reviewer()
    address = new_address()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=cloud.url, timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/login",
                        data={"username": who.username, "password": f"guess-{i}"},
                        headers={"x-forwarded-for": address},
                    )
                    for i in range(30)
                )
            )

    answers = asyncio.run(burst())
    checked = sum(1 for resp in answers if resp.status_code == 401)
    assert all(resp.status_code in (401, 429) for resp in answers)
    assert 1 <= checked <= MAX_PER_USER + 3
    assert post_login(cloud, who.username, who.password, new_address()).status_code in (303, 429)


# -- per address --------------------------------------------------------------------------------------------


def test_an_address_guessing_at_many_usernames_is_locked_but_others_are_not(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    spraying = new_address()
    for n in range(MAX_PER_ADDRESS):
        assert post_login(cloud, f"spray-{n}-{spraying}", "wrong", spraying).status_code == 401
    who = factory.reviewer()
    assert retry_after(post_login(cloud, who.username, who.password, spraying)) >= 1
    assert post_login(cloud, who.username, who.password, new_address()).status_code == 303


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


# -- the password pool --------------------------------------------------------------------------------------


async def _flood(cloud: CloudServer, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=cloud.url, timeout=60) as http:
        return await asyncio.gather(
            *(
                http.post(
                    "/login",
                    data={"username": f"flood-{i}", "password": "wrong"},
                    headers={"x-forwarded-for": f"203.0.113.{i + 1}"},
                )
                for i in range(n)
            )
        )


def test_a_flood_of_logins_beyond_the_pool_is_answered_busy(cloud: CloudServer) -> None:
    answers = asyncio.run(_flood(cloud, 40))
    statuses = Counter(resp.status_code for resp in answers)
    assert set(statuses) <= {401, 429} and statuses[401] >= 1
    busy = [resp for resp in answers if resp.status_code == 429]
    assert busy, statuses  # one worker and two waiting: 40 at once cannot all be checked
    assert retry_after(busy[0]) == 1
    assert "busy" in error_of(busy[0])


def test_image_queries_complete_during_a_login_storm(cloud: CloudServer, factory: CloudFactory) -> None:
    """The login storm benchmark, briefly: every image query is answered (no timing asserted)."""
    detector_id = factory.detector(name="storm-test")
    protocol = login_storm.Protocol(warmup_s=0.3, window_s=0.5, windows=2)
    result = asyncio.run(login_storm.compare(cloud.url, detector_id, protocol, callers=1, storm=10))
    for phase in ("idle", "storm"):
        assert result[phase]["image_queries"] > 0, result
        assert result[phase]["image_query_failures"] == {}, result
    assert sum(result["storm"]["storm_statuses"].values()) > 0
    assert "p95 storm / idle" in login_storm.table(result)


# -- the cookie ---------------------------------------------------------------------------------------------


def test_the_cookie_is_secure_when_the_request_came_over_https(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    who = factory.reviewer()
    plain = post_login(cloud, who.username, who.password, new_address())
    flags = [part.strip().lower() for part in plain.headers["set-cookie"].split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags
    # Through a TLS-terminating proxy (trusted from loopback): the browser is on HTTPS.
    proxied = post_login(cloud, who.username, who.password, new_address(), **{"x-forwarded-proto": "https"})
    assert proxied.status_code == 303
    assert "secure" in [part.strip().lower() for part in proxied.headers["set-cookie"].split(";")]


# -- in a browser -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_pages_work_in_a_browser_under_the_content_security_policy(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    """Log in through the form (the browser sends Origin), open the labeling page: its script runs,
    and the browser reports no policy violation."""
    who: Reviewer = factory.reviewer()
    detector_id = factory.detector(name="csp-check")
    violations: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        page.on(
            "console", lambda msg: violations.append(msg.text) if "Content Security" in msg.text else None
        )
        page.goto(f"{cloud.url}/login")
        page.fill("input[name=username]", who.username)
        page.fill("input[name=password]", who.password)
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui/queues")
        page.goto(f"{cloud.url}/ui/label?detector_id={detector_id}")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)  # label.js ran
        page.click("button.link")  # log out: a form POST from our own page
        page.wait_for_url("**/login")
        page.close()
    assert not violations, violations
