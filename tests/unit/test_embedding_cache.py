"""The embedding cache: LRU bound, TTL on an injected clock, single-flight, failures never kept; and
through the batcher, an image asked of several heads on one backbone runs that backbone once."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.backbone import BackboneRef, BackboneStore
from common.bundle import current_bundle_dir
from common.imaging import ImageLimits, inspect_image
from common.runtime import BackbonePool, ModelRuntime
from edge.inference.batching import Batcher
from edge.inference.embeddings import EmbeddingCache, EmbeddingKey
from edge.inference.metrics import InferenceMetrics


def key(image: str) -> EmbeddingKey:
    return EmbeddingKey(backbone="b" * 64, output="embedding", image=image, preprocessing="32x32")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def lookup(cache: EmbeddingCache[str], k: EmbeddingKey, compute: Callable[[], Awaitable[str]]) -> str:
    """How the batcher uses the cache: a value, else the computation under way, else compute it."""
    value = cache.get(k)
    if value is not None:
        return value
    running = cache.join(k)
    if running is not None:
        return await asyncio.shield(running)
    cache.begin(k)
    try:
        value = await compute()
    except Exception as exc:
        cache.fail(k, exc)
        raise
    cache.resolve(k, value)
    return value


async def test_the_least_recently_used_value_goes_first_when_the_bound_is_reached() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache(max_entries=2, ttl_s=10)
    for name in ("a", "b"):
        cache.begin(key(name))
        cache.resolve(key(name), name)
    assert cache.get(key("a")) == "a"  # now b is the least recently used
    cache.begin(key("c"))
    cache.resolve(key("c"), "c")
    assert len(cache) == 2
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) == "a" and cache.get(key("c")) == "c"


async def test_a_value_expires_ttl_seconds_after_it_was_stored() -> None:
    clock = Clock()
    cache: EmbeddingCache[str] = EmbeddingCache(max_entries=8, ttl_s=10, clock=clock)
    cache.begin(key("a"))
    cache.resolve(key("a"), "A")
    clock.now += 9.999
    assert cache.get(key("a")) == "A"  # a hit does not extend its life
    clock.now += 0.001
    assert cache.get(key("a")) is None
    assert len(cache) == 0
    # Stored again later, it lives another full TTL.
    cache.begin(key("a"))
    cache.resolve(key("a"), "A2")
    clock.now += 5
    assert cache.get(key("a")) == "A2"


async def test_expired_values_make_room_before_fresh_ones_are_dropped() -> None:
    clock = Clock()
    cache: EmbeddingCache[str] = EmbeddingCache(max_entries=3, ttl_s=10, clock=clock)
    for name in ("old1", "old2"):
        cache.begin(key(name))
        cache.resolve(key(name), name)
    clock.now += 11
    cache.begin(key("new"))
    cache.resolve(key("new"), "new")
    assert len(cache) == 1 and cache.get(key("new")) == "new"


async def test_two_requests_joining_a_computation_under_way_share_its_one_result() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache()
    gate = asyncio.Event()
    computed: list[str] = []

    async def compute() -> str:
        computed.append("x")
        await gate.wait()
        return "embedding-x"

    first = asyncio.create_task(lookup(cache, key("x"), compute))
    await asyncio.sleep(0)  # the first lookup has begun computing
    assert cache.in_flight == 1
    joiners = [asyncio.create_task(lookup(cache, key("x"), compute)) for _ in range(2)]
    await asyncio.sleep(0)
    assert cache.join(key("x")) is not None
    gate.set()
    assert await asyncio.gather(first, *joiners) == ["embedding-x"] * 3
    assert computed == ["x"]
    assert cache.in_flight == 0
    # And later requests hit the stored value without computing.
    assert await lookup(cache, key("x"), compute) == "embedding-x"
    assert computed == ["x"]


async def test_a_key_being_computed_cannot_be_begun_twice() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache()
    cache.begin(key("x"))
    with pytest.raises(RuntimeError, match="join"):
        cache.begin(key("x"))


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache()
    gate = asyncio.Event()
    attempts: list[int] = []

    async def broken() -> str:
        attempts.append(1)
        await gate.wait()
        raise ValueError("image does not decode")

    first = asyncio.create_task(lookup(cache, key("bad"), broken))
    await asyncio.sleep(0)
    joiners = [asyncio.create_task(lookup(cache, key("bad"), broken)) for _ in range(2)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, *joiners, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results) and len(results) == 3
    assert attempts == [1]
    assert cache.get(key("bad")) is None and cache.join(key("bad")) is None and len(cache) == 0

    async def fixed() -> str:
        attempts.append(2)
        return "ok"

    assert await lookup(cache, key("bad"), fixed) == "ok"  # the next request computes afresh
    assert attempts == [1, 2]


async def test_with_no_room_results_still_reach_waiters_but_nothing_is_stored() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache(max_entries=0)
    future = cache.begin(key("x"))
    cache.resolve(key("x"), "v")
    assert future.result() == "v"
    assert cache.get(key("x")) is None and len(cache) == 0


# -- through the batcher, with real split bundles on the tiny backbone ------------------------------


def detector_id(name: str) -> str:
    return "det_" + name.ljust(27, "0")


HEADS = [detector_id(f"EmbedHead{i}") for i in range(3)]


@pytest.fixture(scope="module")
def split_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BackboneRef]:
    from tests.support.split_bundles import install_tiny_backbone, install_tiny_split_bundle

    root = tmp_path_factory.mktemp("embedding-models")
    ref = install_tiny_backbone(root)
    for i, det in enumerate(HEADS):
        install_tiny_split_bundle(root, det, ref, seed=10 + i)
    return root, ref


@pytest.fixture
def runtimes(split_root: tuple[Path, BackboneRef]) -> Iterator[list[ModelRuntime]]:
    root, _ = split_root
    pool, store = BackbonePool(), BackboneStore.for_model_root(root)
    loaded = []
    for det in HEADS:
        bundle = current_bundle_dir(root, det)
        assert bundle is not None
        loaded.append(ModelRuntime(bundle, backbone_store=store, backbones=pool))
    yield loaded
    for runtime in loaded:
        runtime.close()


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(metrics: InferenceMetrics, name: str) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[next(iter(sample.labels.values()), "")] = sample.value
    return out


async def test_one_image_asked_of_three_heads_runs_the_backbone_once(runtimes: list[ModelRuntime]) -> None:
    limits = ImageLimits()
    metrics = InferenceMetrics()
    backbone = runtimes[0].backbone
    assert backbone is not None and all(r.backbone is backbone for r in runtimes)
    image = png(1)
    info = inspect_image(image, limits)
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(pool, workers=2, max_batch=8, limits=limits, metrics=metrics)
        before = backbone.runs
        together = await asyncio.gather(*(batcher.submit(r, image, info) for r in runtimes))
        one_after_another = [await batcher.submit(r, image, info) for r in runtimes]
    assert backbone.runs - before == 1
    assert samples(metrics, "inference_backbone_images_total") == {backbone.sha256[:12]: 1.0}
    lookups = samples(metrics, "inference_embedding_cache_total")
    assert lookups.get("miss") == 1 and lookups.get("hit", 0) + lookups.get("shared", 0) == 5
    # Each head answers as it would alone, and the same whether the output was computed or reused.
    for runtime, a, b in zip(runtimes, together, one_after_another, strict=True):
        alone = runtime.predict(image, limits)
        assert a.detector_id == runtime.detector_id
        assert a.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
        assert b.probabilities == pytest.approx(alone.probabilities, abs=1e-6)


class GatedPool(ThreadPoolExecutor):
    """One worker that starts nothing until `gate` is set, so requests can be made to queue."""

    def __init__(self) -> None:
        super().__init__(1)
        self.gate = threading.Event()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        def gated():  # type: ignore[no-untyped-def]
            self.gate.wait(10)
            return fn(*args, **kwargs)

        return super().submit(gated)


async def test_queued_requests_for_different_heads_share_one_backbone_pass_and_a_bad_image_fails_alone(
    runtimes: list[ModelRuntime],
) -> None:
    limits = ImageLimits()
    metrics = InferenceMetrics()
    backbone = runtimes[0].backbone
    assert backbone is not None
    good = [png(10), png(11)]
    queued_images = [good[0], good[1], b"not an image", good[0], good[1]]
    before = backbone.runs
    with GatedPool() as pool:
        batcher = Batcher(pool, workers=1, max_batch=16, limits=limits, metrics=metrics)
        first = asyncio.ensure_future(batcher.submit(runtimes[0], png(9), None))
        await asyncio.sleep(0)  # the first request holds the only worker; the rest queue behind it
        rest = [
            asyncio.ensure_future(batcher.submit(runtimes[i % 3], data, None))
            for i, data in enumerate(queued_images)
        ]
        await asyncio.sleep(0)
        pool.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert not isinstance(results[0], BaseException)
    queued = results[1:]
    assert isinstance(queued[2], Exception)  # the image that does not decode fails alone
    assert all(not isinstance(r, BaseException) for i, r in enumerate(queued) if i != 2)
    # Five queued requests for three heads, two distinct good images: one backbone pass for them.
    assert backbone.runs - before == 2
    assert samples(metrics, "inference_backbone_images_total") == {backbone.sha256[:12]: 3.0}
    lookups = samples(metrics, "inference_embedding_cache_total")
    assert lookups.get("miss") == 4 and lookups.get("shared") == 2 and lookups.get("hit", 0) == 0
    for i, data in enumerate(queued_images):
        if i != 2:
            alone = runtimes[i % 3].predict(data, limits)
            assert queued[i].probabilities == pytest.approx(alone.probabilities, abs=1e-6)  # type: ignore[union-attr]
