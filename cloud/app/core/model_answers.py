"""The cloud answers image queries itself with each detector's production bundle, through the same
`common.runtime.ModelRuntime` the edge uses, so a bundle means the same thing in both places.

Loaded runtimes stay in a small LRU keyed by (detector, bundle version directory), sized by
`CLOUD_MODEL_CACHE_SIZE`; loads are single-flight per key and run in a worker thread, as does every
prediction. An evicted runtime is only dropped, never closed: a request still predicting with it
keeps its reference and finishes, and the sessions are freed when the last reference goes (its hold
on a shared backbone is released then too).

Split bundles load their backbone from data_dir/models/backbones through one `BackbonePool` per
process (cloud.app.core.backbones.LocalBackbones), so detectors trained on one backbone share one
session. The app's lifespan makes the cache and clears it on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.core import registry
from cloud.app.core.registry import InstalledBundles
from common.backbone import BackboneStore
from common.bundle import BundleError
from common.imaging import ImageInfo, ImageLimits
from common.runtime import BackbonePool, ModelRuntime, Prediction

log = logging.getLogger("cloud.answers")

# A bundle that failed to load is not retried on every request, only after this long.
_FAILED_RETRY_S = 60.0

CacheKey = tuple[str, str]


class CloudModelCache:
    def __init__(self, capacity: int, store: BackboneStore, pool: BackbonePool) -> None:
        self.capacity = capacity
        self.store = store
        self.pool = pool
        self._entries: OrderedDict[CacheKey, ModelRuntime] = OrderedDict()
        self._loading: dict[CacheKey, asyncio.Lock] = {}
        self._failed: dict[CacheKey, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, detector_id: str, bundle_dir: Path) -> ModelRuntime:
        """Raises BundleError (or the loader's error) when the bundle cannot be used."""
        key = (detector_id, str(bundle_dir))
        runtime = self._hit(key)
        if runtime is not None:
            return runtime
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            runtime = self._hit(key)
            if runtime is not None:
                return runtime
            failed_at = self._failed.get(key)
            if failed_at is not None and time.monotonic() - failed_at < _FAILED_RETRY_S:
                raise BundleError(f"bundle {bundle_dir} failed to load recently")
            start = time.perf_counter()
            try:
                runtime = await asyncio.to_thread(_load, bundle_dir, self.store, self.pool)
            except Exception:
                self._failed[key] = time.monotonic()
                raise
            finally:
                self._loading.pop(key, None)
            self._failed.pop(key, None)
            self._entries[key] = runtime
            log.info(
                "model loaded",
                extra={
                    "fields": {
                        "detector_id": detector_id,
                        "version": runtime.version,
                        "ms": round((time.perf_counter() - start) * 1e3, 1),
                    }
                },
            )
            while len(self._entries) > self.capacity:
                (old_det, old_dir), old = self._entries.popitem(last=False)
                _release_when_dropped(old, self.pool)
                log.info(
                    "model evicted",
                    extra={"fields": {"detector_id": old_det, "bundle": old_dir, "reason": "capacity"}},
                )
            return runtime

    def _hit(self, key: CacheKey) -> ModelRuntime | None:
        runtime = self._entries.get(key)
        if runtime is not None:
            self._entries.move_to_end(key)
        return runtime

    def clear(self) -> None:
        for runtime in self._entries.values():
            _release_when_dropped(runtime, self.pool)
        self._entries.clear()
        self._failed.clear()


def _release_when_dropped(runtime: ModelRuntime, pool: BackbonePool) -> None:
    """The head's hold on its shared backbone ends once nobody references the runtime any more."""
    if runtime.backbone is not None:
        weakref.finalize(runtime, pool.release, runtime.backbone)


def _load(bundle_dir: Path, store: BackboneStore, pool: BackbonePool) -> ModelRuntime:
    runtime = ModelRuntime(bundle_dir, verify=True, backbone_store=store, backbones=pool)
    try:
        runtime.warmup()
    except BaseException:
        runtime.close()
        raise
    return runtime


@dataclass(frozen=True)
class ProductionModels:
    """What answering with a detector's production model reads besides the session: the blob store its
    bundle (and backbone) comes from, where bundles are installed, and the loaded runtimes."""

    blobs: BlobStore
    bundles: InstalledBundles
    cache: CloudModelCache

    async def runtime(self, session: AsyncSession, detector_id: str) -> ModelRuntime | None:
        """The loaded production runtime; None without a production version. Load failures raise."""
        bundle_dir = await registry.production_bundle_dir(self.bundles, session, self.blobs, detector_id)
        if bundle_dir is None:
            return None
        return await self.cache.get(detector_id, bundle_dir)


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
        runtime = await models.runtime(session, detector_id)
        if runtime is None:
            return None
    except Exception as exc:  # any load failure: answer without a model rather than fail the request
        log.warning(
            "production bundle unusable",
            extra={"fields": {"detector_id": detector_id, "error": str(exc)[:300]}},
        )
        return None
    return await asyncio.to_thread(runtime.predict, image, limits, info)
