"""The model cache: exact LRU order, single-flight loads, and entries in use never freed."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from common.model_cache import ModelCache


@dataclass
class FakeModel:
    key: str
    nbytes: int = 100
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class Recorder:
    events: list[tuple[str, str]] = field(default_factory=list)

    def hit(self, key: str) -> None:
        self.events.append(("hit", key))

    def miss(self, key: str) -> None:
        self.events.append(("miss", key))

    def loaded(self, key: str, seconds: float, ok: bool) -> None:
        self.events.append(("load" if ok else "load_error", key))

    def evicted(self, key: str, reason: str) -> None:
        self.events.append(("evict", key))

    def of(self, kind: str) -> list[str]:
        return [k for e, k in self.events if e == kind]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as ex:
        yield ex


def make_cache(pool, rec: Recorder, delay: float = 0.0, **kw):
    loads: list[str] = []
    lock = threading.Lock()

    def loader(key: str) -> FakeModel:
        time.sleep(delay)
        with lock:
            loads.append(key)
        if key.startswith("bad"):
            raise ValueError("corrupt bundle")
        return FakeModel(key)

    return ModelCache(loader, pool, observer=rec, **kw), loads


async def test_round_robin_over_8_detectors_with_capacity_5_evicts_in_lru_order(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=5)
    keys = [f"d{i}" for i in range(8)]
    for _ in range(3):
        for k in keys:
            async with cache.use(k):
                pass
    # Round-robin over more keys than slots: every access misses, and each eviction takes the
    # key used longest ago, i.e. exactly the key used 5 steps before.
    sequence = keys * 3
    assert rec.of("miss") == sequence
    assert rec.of("hit") == []
    assert rec.of("evict") == sequence[: len(sequence) - 5]
    assert cache.keys() == sequence[-5:]


async def test_recently_used_entry_survives_eviction(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=2)
    for k in ("a", "b", "a", "c"):
        async with cache.use(k):
            pass
    assert rec.of("evict") == ["b"]
    assert cache.keys() == ["a", "c"]


async def test_fifty_concurrent_first_requests_make_exactly_one_load(pool) -> None:
    rec = Recorder()
    cache, loads = make_cache(pool, rec, delay=0.2)
    seen: list[FakeModel] = []

    async def request() -> None:
        async with cache.use("cold") as model:
            seen.append(model)

    await asyncio.gather(*(request() for _ in range(50)))
    assert loads == ["cold"]
    assert rec.of("load") == ["cold"]
    assert len(seen) == 50 and len({id(m) for m in seen}) == 1


async def test_failed_load_reaches_every_waiter_and_is_retried_later(pool) -> None:
    rec = Recorder()
    cache, loads = make_cache(pool, rec, delay=0.05)

    async def request() -> None:
        async with cache.use("bad1"):
            pass

    results = await asyncio.gather(*(request() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert loads == ["bad1"]
    with pytest.raises(ValueError):
        await request()
    assert loads == ["bad1", "bad1"]


async def test_entry_in_use_is_not_freed_until_its_request_finishes(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=1)
    release = asyncio.Event()
    started = asyncio.Event()
    held: list[FakeModel] = []

    async def slow_request() -> None:
        async with cache.use("a") as model:
            held.append(model)
            started.set()
            await release.wait()
            assert not model.closed, "model was freed under a running request"

    task = asyncio.create_task(slow_request())
    await started.wait()
    async with cache.use("b") as other:
        assert not other.closed
    # "a" left the cache (LRU) but its request still holds it: not freed yet.
    assert cache.keys() == ["b"] and not held[0].closed and cache.in_use == 1
    release.set()
    await task
    assert held[0].closed and cache.keys() == ["b"] and cache.in_use == 0
    assert rec.of("evict") == ["a"]


async def test_byte_budget_evicts_like_the_entry_count(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=10, max_bytes=250)
    for k in ("a", "b", "c"):
        async with cache.use(k):
            pass
    assert rec.of("evict") == ["a"] and cache.bytes == 200


async def test_replace_keeps_old_version_alive_for_its_users(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec)
    async with cache.use("a") as old:
        cache.replace("a", FakeModel("a-v2"))
        assert not old.closed
        async with cache.use("a") as new:
            assert new.key == "a-v2"
    assert old.closed


def backbone_of(model: FakeModel) -> tuple[str, int] | None:
    """Keys "h*" are heads on one shared backbone of 1000 bytes; others share nothing."""
    return ("backbone-1", 1000) if model.key.startswith("h") else None


async def test_a_shared_part_counts_once_in_entries_and_bytes(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=25, max_bytes=10**6, shared=backbone_of)
    for k in [f"h{i}" for i in range(20)] + ["single"]:
        async with cache.use(k):
            pass
    assert rec.of("evict") == []
    assert cache.shared() == {"backbone-1": 1000}
    assert cache.size == 21 + 1  # 21 models and the one backbone 20 of them hold
    assert cache.bytes == 21 * 100 + 1000


async def test_the_shared_part_takes_room_from_the_limits_and_leaves_with_its_last_holder(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=3, max_bytes=10**6, shared=backbone_of)
    for k in ("h1", "h2", "h3"):  # three heads and their backbone need 4 entries: the oldest goes
        async with cache.use(k):
            pass
    assert rec.of("evict") == ["h1"] and cache.size == 3
    for k in ("a", "b"):
        async with cache.use(k):
            pass
    # "a" pushed out h2; "b" pushed out h3, and with it the backbone's entry and bytes.
    assert rec.of("evict") == ["h1", "h2", "h3"]
    assert cache.shared() == {} and cache.keys() == ["a", "b"] and cache.bytes == 200


async def test_the_byte_budget_counts_the_shared_part_once(pool) -> None:
    rec = Recorder()
    cache, _ = make_cache(pool, rec, max_entries=100, max_bytes=1000 + 5 * 100, shared=backbone_of)
    for k in [f"h{i}" for i in range(6)]:
        async with cache.use(k):
            pass
    assert rec.of("evict") == ["h0"] and cache.bytes == 1500


async def test_a_lone_head_with_its_backbone_is_not_evicted_for_the_backbone_s_sake(pool) -> None:
    rec = Recorder()
    cache, loads = make_cache(pool, rec, max_entries=1, shared=backbone_of)
    for _ in range(3):
        async with cache.use("h1"):
            pass
    assert loads == ["h1"] and rec.of("evict") == []
    async with cache.use("h2"):  # a second head does not fit: the older one goes
        pass
    assert rec.of("evict") == ["h1"] and cache.keys() == ["h2"]
