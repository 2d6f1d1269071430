"""The authenticator's decisions, with a scripted cloud and a settable clock: what the cloud vouched for
is kept (in memory and in the edge's SQLite) through outages and restarts, refusals are short-lived,
and the cloud is asked once per token however many requests arrive together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge.api.auth.authenticator import UNVERIFIABLE_RETRY_S, Authenticator, presented_token
from edge.api.auth.cloud_check import CloudAnswer
from edge.api.auth.local_tokens import RECHECK_S, LocalTokenBook, add_token, remove_token
from edge.api.auth.principal import Access, Role
from edge.api.auth.verdicts import VerdictCache
from edge.api.core.store import EdgeStore
from edge.api.errors import ForbiddenError, UnauthorizedError

CAMERA = "io_cameratoken_" + "1" * 30
OTHER = "io_othercamera_" + "2" * 30
ADMIN = "io_edgeadmin_" + "3" * 30
INTERNAL = "internal-" + "4" * 40
TTL_S, NEGATIVE_TTL_S = 3600.0, 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedCloud:
    """Answers like CloudTokenCheck: per token, or `down` for everyone; counts what it was asked."""

    def __init__(self) -> None:
        self.accounts: dict[str, Role] = {CAMERA: Role.DEVICE}
        self.forbidden: set[str] = set()
        self.down = False
        self.delay_s = 0.0
        self.asked: list[str] = []

    async def ask(self, token: str) -> CloudAnswer:
        self.asked.append(token)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            return CloudAnswer("unverifiable", detail="the cloud is unreachable (ConnectError)")
        if token in self.forbidden:
            return CloudAnswer("refused", status=403, detail="this token's role may not use the device API")
        role = self.accounts.get(token)
        if role is None:
            return CloudAnswer("refused", status=401, detail="the cloud does not accept this token")
        return CloudAnswer("accepted", role=role, username="cam", email="cam@cloud")


class Edge:
    def __init__(self, root: Path, clock: Clock, cloud: ScriptedCloud, max_entries: int = 100) -> None:
        self.root, self.clock, self.cloud, self.max_entries = root, clock, cloud, max_entries
        self.store: EdgeStore | None = None
        self.auth: Authenticator | None = None

    @property
    def tokens_file(self) -> Path:
        return self.root / "tokens.json"

    async def start(self) -> Authenticator:
        self.store = EdgeStore(self.root / "edge.sqlite3")
        await self.store.open()
        cache = VerdictCache(self.store, self.max_entries)
        await cache.load()
        self.auth = Authenticator(
            internal_token=INTERNAL,
            admin_token=ADMIN,
            local=LocalTokenBook(self.tokens_file, clock=self.clock),
            cache=cache,
            cloud=self.cloud,  # type: ignore[arg-type]
            ttl_s=TTL_S,
            negative_ttl_s=NEGATIVE_TTL_S,
            clock=self.clock,
        )
        return self.auth

    async def stop(self) -> None:
        if self.auth is not None:
            await self.auth.close()
        if self.store is not None:
            await self.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cloud() -> ScriptedCloud:
    return ScriptedCloud()


@pytest.fixture
async def edge(tmp_path: Path, clock: Clock, cloud: ScriptedCloud) -> AsyncIterator[Edge]:
    e = Edge(tmp_path, clock, cloud)
    await e.start()
    yield e
    await e.stop()


def auth_of(edge: Edge) -> Authenticator:
    assert edge.auth is not None
    return edge.auth


async def refused(call: Callable[[], object], kind: type[Exception] = UnauthorizedError) -> str:
    with pytest.raises(kind) as raised:
        await call()  # type: ignore[misc]
    return str(raised.value)


async def settle() -> None:
    """Let background refreshes run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_token_the_cloud_accepts_is_asked_about_once(edge: Edge, cloud: ScriptedCloud) -> None:
    auth = auth_of(edge)
    first = await auth.authenticate(CAMERA)
    again = await auth.authenticate(CAMERA)

    assert first.role is Role.DEVICE and first.source == "cloud" and again == first
    assert first.may(Access.DEVICE) and not first.may(Access.OPERATOR)
    assert cloud.asked == [CAMERA]


async def test_concurrent_requests_with_a_new_token_share_one_question(
    edge: Edge, cloud: ScriptedCloud
) -> None:
    cloud.delay_s = 0.05
    principals = await asyncio.gather(*(auth_of(edge).authenticate(CAMERA) for _ in range(20)))

    assert {p.role for p in principals} == {Role.DEVICE}
    assert cloud.asked == [CAMERA]


async def test_a_refused_token_is_refused_for_the_negative_ttl_then_asked_again(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    auth = auth_of(edge)
    assert "does not accept" in await refused(lambda: auth.authenticate(OTHER))
    await refused(lambda: auth.authenticate(OTHER))
    assert cloud.asked == [OTHER]

    cloud.accounts[OTHER] = Role.DEVICE  # registered in the cloud meanwhile
    clock.now += NEGATIVE_TTL_S + 1
    assert (await auth.authenticate(OTHER)).role is Role.DEVICE
    assert cloud.asked == [OTHER, OTHER]


async def test_a_role_the_device_api_refuses_is_403(edge: Edge, cloud: ScriptedCloud) -> None:
    cloud.forbidden.add(OTHER)
    assert "role" in await refused(lambda: auth_of(edge).authenticate(OTHER), ForbiddenError)


async def test_a_known_token_keeps_working_through_a_cloud_outage(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    auth = auth_of(edge)
    await auth.authenticate(CAMERA)
    cloud.down = True
    clock.now += TTL_S * 5  # long past its ttl: re-asked in the background, kept while unanswered

    for _ in range(3):
        assert (await auth.authenticate(CAMERA)).role is Role.DEVICE
        await settle()
    assert cloud.asked.count(CAMERA) == 2  # once at first, once re-asked (then not for a while)


async def test_an_unseen_token_is_refused_at_once_while_the_cloud_is_down(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    auth = auth_of(edge)
    cloud.down = True
    detail = await refused(lambda: auth.authenticate(CAMERA))
    assert "could not verify" in detail and "local token file" in detail
    await refused(lambda: auth.authenticate(CAMERA))
    assert cloud.asked == [CAMERA]  # not hammered while it is down

    cloud.down = False
    clock.now += UNVERIFIABLE_RETRY_S + 0.1
    assert (await auth.authenticate(CAMERA)).role is Role.DEVICE


async def test_a_token_revoked_in_the_cloud_is_refused_once_its_verdict_is_re_checked(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    auth = auth_of(edge)
    await auth.authenticate(CAMERA)
    del cloud.accounts[CAMERA]
    assert (await auth.authenticate(CAMERA)).role is Role.DEVICE  # within its ttl: not re-asked

    clock.now += TTL_S + 1
    assert (await auth.authenticate(CAMERA)).role is Role.DEVICE  # answered at once, re-asked behind
    await settle()
    await refused(lambda: auth.authenticate(CAMERA))


async def test_what_the_cloud_vouched_for_survives_a_restart_during_an_outage(
    tmp_path: Path, clock: Clock, cloud: ScriptedCloud
) -> None:
    first = Edge(tmp_path, clock, cloud)
    await (await first.start()).authenticate(CAMERA)
    await first.stop()

    cloud.down = True
    clock.now += TTL_S * 2
    second = Edge(tmp_path, clock, cloud)
    auth = await second.start()
    try:
        principal = await auth.authenticate(CAMERA)
        assert principal.role is Role.DEVICE and principal.username == "cam"
        await refused(lambda: auth.authenticate(OTHER))
    finally:
        await second.stop()
    stored = (tmp_path / "edge.sqlite3").read_bytes()
    assert CAMERA.encode() not in stored  # only its sha256 is kept


async def test_the_cache_is_bounded(tmp_path: Path, clock: Clock, cloud: ScriptedCloud) -> None:
    tokens = [f"io_boundedcache_{i:02d}_" + "5" * 24 for i in range(5)]
    for token in tokens:
        cloud.accounts[token] = Role.DEVICE
    edge = Edge(tmp_path, clock, cloud, max_entries=3)
    auth = await edge.start()
    try:
        for token in tokens:
            await auth.authenticate(token)
            clock.now += 1
    finally:
        await edge.stop()
    cloud.down = True
    again = Edge(tmp_path, clock, cloud, max_entries=3)
    auth = await again.start()
    try:
        for token in tokens[2:]:
            await auth.authenticate(token)
        for token in tokens[:2]:
            await refused(lambda t=token: auth.authenticate(t))  # type: ignore[misc]
    finally:
        await again.stop()


async def test_local_tokens_need_no_cloud_and_their_removal_applies_within_a_second(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    auth = auth_of(edge)
    cloud.down = True
    add_token(edge.tokens_file, OTHER, "line-7")
    add_token(edge.tokens_file, "io_localoperator_" + "6" * 24, "ops", Role.ADMIN)
    clock.now += RECHECK_S

    camera = await auth.authenticate(OTHER)
    assert (camera.role, camera.username, camera.source) == (Role.DEVICE, "line-7", "local token file")
    assert (await auth.authenticate("io_localoperator_" + "6" * 24)).may(Access.OPERATOR)
    assert cloud.asked == []

    assert remove_token(edge.tokens_file, "line-7")
    clock.now += RECHECK_S
    await refused(lambda: auth.authenticate(OTHER))


async def test_the_admin_and_internal_tokens_and_the_missing_token(edge: Edge, cloud: ScriptedCloud) -> None:
    auth = auth_of(edge)
    assert (await auth.authenticate(ADMIN)).role is Role.ADMIN
    assert (await auth.authenticate(None, INTERNAL)).role is Role.INTERNAL
    assert (await auth.authenticate(CAMERA, INTERNAL)).role is Role.INTERNAL
    assert "x-api-token" in await refused(lambda: auth.authenticate(None))
    assert "x-api-token" in await refused(lambda: auth.authenticate("", "wrong-internal"))
    assert cloud.asked == []


def test_a_bearer_token_is_read_when_no_x_api_token_is_sent() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
        return {"headers": list(headers)}

    assert presented_token(scope((b"x-api-token", b"abc"), (b"authorization", b"Bearer xyz"))) == "abc"
    assert presented_token(scope((b"authorization", b"Bearer xyz"))) == "xyz"
    assert presented_token(scope((b"authorization", b"Basic xyz"))) is None
    assert presented_token(scope()) is None
