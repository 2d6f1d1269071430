"""The cloud's production-model cache: the edge's ModelCache underneath (a held runtime survives its
eviction, the shared backbone is released with the last head), and a pause before a bundle that
failed to load is tried again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.app.core.model_answers import CloudModelCache, UnusableModelError
from common.backbone import BackboneStore
from common.ids import new_detector_id
from common.runtime import BackbonePool, choose_providers
from tests.support.split_bundles import install_tiny_backbone, install_tiny_split_bundle


def _cache(model_root: Path, capacity: int) -> tuple[CloudModelCache, BackbonePool]:
    pool = BackbonePool(choose_providers("cpu"), 1)
    return CloudModelCache(capacity, BackboneStore.for_model_root(model_root), pool), pool


def test_an_evicted_runtime_is_closed_by_its_last_user_and_frees_the_backbone(tmp_path: Path) -> None:
    ref = install_tiny_backbone(tmp_path)
    first, second = (install_tiny_split_bundle(tmp_path, new_detector_id(), ref, seed=s) for s in (1, 2))
    # Capacity 2: one head plus its backbone; a second head evicts the first.
    cache, pool = _cache(tmp_path, capacity=2)

    async def scenario() -> None:
        async with cache.use(first) as held:
            async with cache.use(second) as other:
                assert other.backbone is not None and pool.loaded() == {ref.sha256: 2}
            assert len(cache) == 1
            assert held.backbone is not None  # evicted, but still usable by its holder
        assert held.backbone is None  # closed by its last user
        assert pool.loaded() == {ref.sha256: 1}
        cache.clear()
        assert pool.loaded() == {}

    asyncio.run(scenario())


def test_a_bundle_that_fails_to_load_is_not_tried_again_at_once(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "det_x" / "v1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    cache, _ = _cache(tmp_path, capacity=3)
    attempts: list[str] = []
    real_load = cache._load

    def counting_load(key: str):  # type: ignore[no-untyped-def]
        attempts.append(key)
        return real_load(key)

    cache._cache._loader = counting_load  # type: ignore[assignment]

    async def scenario() -> None:
        for expected in ("does not load", "failed to load recently"):
            with pytest.raises(UnusableModelError, match=expected):
                async with cache.use(broken):
                    raise AssertionError("a broken bundle must not be handed out")
        assert attempts == [str(broken)]

    try:
        asyncio.run(scenario())
    finally:
        cache.clear()


def test_an_error_inside_the_block_is_the_callers_not_the_bundles(tmp_path: Path) -> None:
    ref = install_tiny_backbone(tmp_path)
    bundle = install_tiny_split_bundle(tmp_path, new_detector_id(), ref)
    cache, _ = _cache(tmp_path, capacity=3)

    async def scenario() -> None:
        with pytest.raises(ValueError, match="caller"):
            async with cache.use(bundle):
                raise ValueError("caller")
        async with cache.use(bundle) as runtime:  # not marked failed
            assert runtime.backbone is not None

    try:
        asyncio.run(scenario())
    finally:
        cache.clear()
