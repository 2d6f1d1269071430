"""The model cache under hot swaps: a load that was under way when a swap installed a newer value
yields to it, and a swapped-out value is closed only by its last user."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from common.model_cache import ModelCache


@dataclass
class Model:
    name: str
    nbytes: int = 100
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as ex:
        yield ex


async def test_a_load_under_way_when_a_swap_lands_yields_to_the_swapped_in_value(pool) -> None:
    release = threading.Event()
    loaded: list[Model] = []

    def slow_loader(key: str) -> Model:
        release.wait(10)
        loaded.append(Model(f"{key}-stale"))
        return loaded[-1]

    cache: ModelCache[Model] = ModelCache(slow_loader, pool)

    async def first_request() -> str:
        async with cache.use("det") as model:
            return model.name

    request = asyncio.create_task(first_request())
    await asyncio.sleep(0.05)  # the cold load is running
    cache.replace("det", Model("det-new"))
    release.set()

    assert await request == "det-new"
    assert loaded[0].closed  # the stale load was dropped, never served
    async with cache.use("det") as model:
        assert model.name == "det-new" and not model.closed


async def test_requests_holding_the_old_value_finish_on_it_across_several_swaps(pool) -> None:
    cache: ModelCache[Model] = ModelCache(lambda key: Model(f"{key}-v0"), pool)
    held: list[Model] = []
    async with cache.use("det") as v0:
        held.append(v0)
        cache.replace("det", Model("det-v1"))
        async with cache.use("det") as v1:
            held.append(v1)
            cache.replace("det", Model("det-v2"))
            assert not v0.closed and not v1.closed
        assert v1.closed and not v0.closed
    assert v0.closed
    async with cache.use("det") as current:
        assert current.name == "det-v2"
    assert [m.name for m in held] == ["det-v0", "det-v1"]
