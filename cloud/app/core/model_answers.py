"""The cloud answers image queries itself with each detector's production bundle, through the same
`common.runtime.ModelRuntime` the edge uses, so a bundle means the same thing in both places.

Loaded runtimes stay in the edge's cache (common.model_cache.ModelCache: LRU, single-flight loads in
a worker thread, a shared backbone counted once), keyed by the bundle's version directory and sized by
`CLOUD_MODEL_CACHE_SIZE`. A request holds its runtime while it predicts (`ProductionModels.use`), so
an evicted one is closed by its last user, and its hold on a shared backbone is released then.

Split bundles load their backbone from data_dir/models/backbones through one `BackbonePool` per
process (cloud.app.core.backbones.LocalBackbones), so detectors trained on one backbone share one
session. The app's lifespan makes the cache and clears it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.core import registry
from cloud.app.core.registry import InstalledBundles
from common.backbone import BackboneStore
from common.imaging import ImageInfo, ImageLimits
from common.model_cache import ModelCache
from common.runtime import BackbonePool, ModelRuntime, Prediction, shared_backbone

log = logging.getLogger("cloud.answers")

# A bundle that failed to load is not retried on every request, only after this long.
_FAILED_RETRY_S = 60.0


class UnusableModelError(Exception):
    """The production bundle (or its blob, or its backbone) cannot be loaded here."""


class CloudModelCache:
    """common.model_cache.ModelCache over production bundles, plus a pause before retrying a bundle
    that failed to load (a broken production bundle must not cost a load attempt per request)."""

    def __init__(self, capacity: int, store: BackboneStore, pool: BackbonePool) -> None:
        self.store = store
        self.pool = pool
        self._loads = ThreadPoolExecutor(1, thread_name_prefix="cloud-model-load")
        self._cache: ModelCache[ModelRuntime] = ModelCache(
            self._load, self._loads, max_entries=capacity, shared=shared_backbone
        )
        self._failed: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._cache.keys())

    @contextlib.asynccontextmanager
    async def use(self, bundle_dir: Path) -> AsyncIterator[ModelRuntime]:
        """Hold the loaded runtime for the block; UnusableModelError when the bundle does not load."""
        key = str(bundle_dir)
        failed_at = self._failed.get(key)
        if failed_at is not None and time.monotonic() - failed_at < _FAILED_RETRY_S:
            raise UnusableModelError(f"bundle {bundle_dir} failed to load recently")
        loaded = False
        try:
            async with self._cache.use(key) as runtime:
                loaded = True
                self._failed.pop(key, None)
                yield runtime
        except Exception as exc:
            if loaded:
                raise
            self._failed[key] = time.monotonic()
            raise UnusableModelError(f"bundle {bundle_dir} does not load: {exc}") from exc

    def _load(self, key: str) -> ModelRuntime:
        runtime = ModelRuntime(Path(key), verify=True, backbone_store=self.store, backbones=self.pool)
        try:
            runtime.warmup()
        except BaseException:
            runtime.close()
            raise
        return runtime

    def clear(self) -> None:
        self._cache.close_all()
        self._failed.clear()
        self._loads.shutdown(wait=False)


@dataclass(frozen=True)
class ProductionModels:
    """What answering with a detector's production model reads besides the session: the blob store its
    bundle (and backbone) comes from, where bundles are installed, and the loaded runtimes."""

    blobs: BlobStore
    bundles: InstalledBundles
    cache: CloudModelCache

    @contextlib.asynccontextmanager
    async def use(self, session: AsyncSession, detector_id: str) -> AsyncIterator[ModelRuntime | None]:
        """Hold the loaded production runtime for the block; None without a production version.
        UnusableModelError when its bundle cannot be installed or loaded."""
        try:
            bundle_dir = await registry.production_bundle_dir(self.bundles, session, self.blobs, detector_id)
        except Exception as exc:
            raise UnusableModelError(f"production bundle of {detector_id} not installable: {exc}") from exc
        if bundle_dir is None:
            yield None
            return
        async with self.cache.use(bundle_dir) as runtime:
            yield runtime


async def predict(
    models: ProductionModels,
    session: AsyncSession,
    detector_id: str,
    image: bytes,
    limits: ImageLimits,
    info: ImageInfo | None = None,
) -> Prediction | None:
    """The production model's answer, or None when the detector has no usable model yet.

    An image that does not decode raises ImageError (the client's fault); a broken bundle (or one
    whose blob or backbone cannot be installed) is logged and treated as no model, so the query gets
    the label prior and goes to people instead of failing.
    """
    try:
        async with models.use(session, detector_id) as runtime:
            if runtime is None:
                return None
            return await asyncio.to_thread(runtime.predict, image, limits, info)
    except UnusableModelError as exc:  # answer without a model rather than fail the request
        log.warning(
            "production bundle unusable",
            extra={"fields": {"detector_id": detector_id, "error": str(exc)[:300]}},
        )
        return None
