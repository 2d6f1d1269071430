"""What the inference routes call: resolve a detector's bundle, hold it in the cache, predict off-loop.

Split bundles: the service owns one `BackbonePool` and the model root's `BackboneStore` and hands both
to every runtime it opens, so all heads on one backbone share one session (loaded with the first head,
closed by the pool when the last head holding it closes, which the cache does only after that head's
last request). A hot swap opens the new head while the old one still holds the backbone: no reload.
The cache counts a shared backbone once (entries and bytes); the batcher's embedding cache lets one
image asked of several detectors on a backbone run it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.backbone import BackboneStore
from common.bundle import BundleError, current_bundle_dir, list_detectors, read_metadata
from common.ids import is_detector_id
from common.imaging import ImageLimits, inspect_image
from common.model_cache import ModelCache
from common.runtime import (
    BackbonePool,
    BackboneRuntime,
    ModelRuntime,
    Prediction,
    choose_providers,
    shared_backbone,
)
from common.wire.inference import CacheStats, ModelInfo, ModelList, SwapResult
from edge.inference.batching import Batcher, Embedding
from edge.inference.embeddings import EmbeddingCache
from edge.inference.metrics import InferenceMetrics

BUNDLE_RESOLVE_TTL_S = 1.0

log = logging.getLogger("inference.service")


class InvalidDetectorIdError(ValueError):
    """The detector id is not det_ + 27 base62 characters (and so never touches the filesystem)."""


class ModelNotFoundError(LookupError):
    """No installed bundle for this detector."""


class ModelLoadError(RuntimeError):
    """A bundle exists but could not be verified or loaded."""


class ModelSwapError(ModelLoadError):
    """The bundle `current` points at failed to load or warm up; the serving version is unchanged."""


class InferenceService:
    def __init__(
        self,
        model_root: Path,
        limits: ImageLimits,
        metrics: InferenceMetrics,
        provider_preference: str = "auto",
        max_entries: int = 5,
        max_bytes: int = 2 * 1024**3,
        worker_threads: int = 2,
        intra_op_threads: int = 1,
        verify_on_load: bool = True,
        max_batch: int = 8,
        embedding_cache_entries: int = 256,
        embedding_cache_ttl_s: float = 10.0,
    ) -> None:
        self.model_root = model_root
        self.limits = limits
        self.metrics = metrics
        self.providers = choose_providers(provider_preference)  # type: ignore[arg-type]
        self._intra_op_threads = intra_op_threads
        self._verify = verify_on_load
        self._predict_pool = ThreadPoolExecutor(worker_threads, thread_name_prefix="predict")
        self._resolved: dict[str, tuple[float, Path | None]] = {}
        self.backbones = BackbonePool(self.providers, intra_op_threads)
        self.backbone_store = BackboneStore.for_model_root(model_root)
        # The session last seen per backbone: a runtime holding another object means a fresh load.
        self._backbone_sessions: dict[str, BackboneRuntime] = {}
        self.embeddings: EmbeddingCache[Embedding] = EmbeddingCache(
            embedding_cache_entries, embedding_cache_ttl_s
        )
        self._batcher = Batcher(
            self._predict_pool, worker_threads, max_batch, limits, metrics, self.embeddings
        )
        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.cache: ModelCache[ModelRuntime] = ModelCache(
            self._load,
            self._load_pool,
            max_entries=max_entries,
            max_bytes=max_bytes,
            observer=metrics,
            shared=shared_backbone,
        )
        # Gauges are read when /metrics is scraped (on the event loop, like every cache change).
        metrics.cache_entries.set_function(lambda: self.cache.size)
        metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        metrics.backbones_loaded.set_function(lambda: len(self.backbones))
        metrics.backbone_bytes.set_function(lambda: self.backbones.nbytes)
        metrics.embedding_entries.set_function(lambda: len(self.embeddings))
        # Hot swaps (see `swap`): one at a time per detector; a bundle that failed is not retried by
        # the background check until `current` moves again.
        self._swap_locks: dict[str, asyncio.Lock] = {}
        self._background_swaps: dict[str, asyncio.Task[None]] = {}
        self._failed_swaps: dict[str, Path] = {}

    @property
    def provider(self) -> str:
        return self.providers[0]

    def _bundle_dir(self, detector_id: str) -> Path:
        """The detector's current bundle; resolved from disk at most once a second per detector."""
        if not is_detector_id(detector_id):
            raise InvalidDetectorIdError(f"detector_id {detector_id!r} is not det_ + 27 base62 characters")
        now = time.monotonic()
        cached = self._resolved.get(detector_id)
        if cached is not None and now - cached[0] < BUNDLE_RESOLVE_TTL_S:
            bundle = cached[1]
        else:
            bundle = current_bundle_dir(self.model_root, detector_id)
            if cached is not None and bundle == cached[1]:
                bundle = cached[1]  # the same object while unchanged: `infer` compares by identity
            self._resolved[detector_id] = (now, bundle)
        if bundle is None:
            raise ModelNotFoundError(f"no model is installed for {detector_id}")
        return bundle

    def _load(self, detector_id: str) -> ModelRuntime:
        return self._open(self._bundle_dir(detector_id))

    def _open(self, bundle: Path) -> ModelRuntime:
        """Blocking (the load thread, one at a time): load and warm one bundle; ModelLoadError if it
        cannot serve. A runtime that fails its warm-up is closed, so it gives its backbone back."""
        try:
            runtime = ModelRuntime(
                bundle,
                self.providers,
                self._intra_op_threads,
                verify=self._verify,
                backbone_store=self.backbone_store,
                backbones=self.backbones,
            )
            self._count_backbone_load(runtime)
            try:
                runtime.warmup()
            except BaseException:
                runtime.close()
                raise
        except BundleError as exc:
            raise ModelLoadError(str(exc)) from None
        except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
            raise ModelLoadError(f"{bundle}: {type(exc).__name__}: {exc}") from None
        return runtime

    def _count_backbone_load(self, runtime: ModelRuntime) -> None:
        backbone = runtime.backbone
        if backbone is not None and self._backbone_sessions.get(backbone.sha256) is not backbone:
            self._backbone_sessions[backbone.sha256] = backbone
            self.metrics.backbone_loaded(backbone.sha256)

    async def infer(self, detector_id: str, image: bytes) -> Prediction:
        bundle = self._bundle_dir(detector_id)  # 400/404 before any load or decode
        info = inspect_image(image, self.limits)  # cheap header check: reject before touching the model
        start = time.perf_counter()
        async with self.cache.use(detector_id) as runtime:
            if runtime.bundle_dir is not bundle:
                self._notice_new_version(detector_id, runtime, bundle)
            prediction = await self._batcher.submit(runtime, image, info)
        self.metrics.observe_inference(detector_id, time.perf_counter() - start)
        return prediction

    # -- hot swap ----------------------------------------------------------------------------------
    async def swap(self, detector_id: str) -> SwapResult:
        """Load and warm the bundle `current` points at beside the serving one, then swap it in.

        Requests that already hold the old runtime finish on it (the cache closes it after its last
        user); requests from then on get the new one. A bundle that fails to load or warm up raises
        ModelSwapError and the serving version stays; pointing `current` back is the caller's job.
        """
        if not is_detector_id(detector_id):
            raise InvalidDetectorIdError(f"detector_id {detector_id!r} is not det_ + 27 base62 characters")
        async with self._swap_locks.setdefault(detector_id, asyncio.Lock()):
            bundle = current_bundle_dir(self.model_root, detector_id)  # now, not the 1 s snapshot
            if bundle is None:
                raise ModelNotFoundError(f"no model is installed for {detector_id}")
            serving = self.cache.peek(detector_id)
            previous = serving.version if serving is not None else None
            if serving is not None and serving.bundle_dir == bundle:
                self._resolved[detector_id] = (time.monotonic(), serving.bundle_dir)
                return SwapResult(
                    detector_id=detector_id, version=serving.version, previous_version=previous, swapped=False
                )
            start = time.perf_counter()
            try:
                runtime = await asyncio.get_running_loop().run_in_executor(
                    self._load_pool, self._open, bundle
                )
            except ModelLoadError as exc:
                self.metrics.loaded(detector_id, time.perf_counter() - start, False)
                self._failed_swaps[detector_id] = bundle
                log.warning(
                    "model swap rejected",
                    extra={"fields": {"detector_id": detector_id, "bundle": bundle.name, "error": str(exc)}},
                )
                raise ModelSwapError(str(exc)) from None
            seconds = time.perf_counter() - start
            self.metrics.loaded(detector_id, seconds, True)
            self._failed_swaps.pop(detector_id, None)
            self._resolved[detector_id] = (time.monotonic(), bundle)
            self.cache.replace(detector_id, runtime)
            log.info(
                "model swapped",
                extra={
                    "fields": {"detector_id": detector_id, "version": runtime.version, "previous": previous}
                },
            )
            return SwapResult(
                detector_id=detector_id,
                version=runtime.version,
                previous_version=previous,
                swapped=True,
                load_ms=round(seconds * 1e3, 3),
            )

    def _notice_new_version(self, detector_id: str, serving: ModelRuntime, bundle: Path) -> None:
        """`current` moved (seen by the 1 s resolution) and nobody asked for a swap: start one in the
        background; the request that noticed stays on the runtime it holds."""
        if serving.bundle_dir == bundle or self._failed_swaps.get(detector_id) == bundle:
            return
        lock = self._swap_locks.get(detector_id)
        if detector_id in self._background_swaps or (lock is not None and lock.locked()):
            return
        task = asyncio.create_task(self._swap_quietly(detector_id), name=f"swap-{detector_id}")
        self._background_swaps[detector_id] = task
        task.add_done_callback(lambda _: self._background_swaps.pop(detector_id, None))

    async def _swap_quietly(self, detector_id: str) -> None:
        # A failure is logged by swap (or `current` went away); the serving version stays either way.
        with contextlib.suppress(ModelLoadError, ModelNotFoundError):
            await self.swap(detector_id)

    def model_info(self, detector_id: str) -> ModelInfo:
        bundle = self._bundle_dir(detector_id)
        try:
            meta = read_metadata(bundle)
        except BundleError as exc:
            raise ModelLoadError(str(exc)) from None
        loaded = self.cache.peek(detector_id)
        return ModelInfo(
            detector_id=detector_id,
            version=meta.version,
            detector_name=meta.detector_name,
            query=meta.query,
            mode=meta.mode.value,
            labels=meta.labels,
            default_confidence_threshold=meta.default_confidence_threshold,
            loaded=loaded is not None,
            provider=loaded.provider if loaded is not None else None,
            bytes=loaded.nbytes if loaded is not None else None,
            backbone=meta.backbone.sha256 if meta.backbone is not None else None,
        )

    def list_models(self) -> ModelList:
        models = []
        for detector_id in list_detectors(self.model_root):
            try:
                models.append(self.model_info(detector_id))
            except (ModelNotFoundError, ModelLoadError):
                continue
        return ModelList(provider=self.provider, cache=self.cache_stats(), models=models)

    def cache_stats(self) -> CacheStats:
        shared = self.cache.shared()
        return CacheStats(
            entries=self.cache.size,
            max_entries=self.cache.max_entries,
            bytes=self.cache.bytes,
            max_bytes=self.cache.max_bytes,
            in_use=self.cache.in_use,
            backbones=len(shared),
            backbone_bytes=sum(shared.values()),
        )

    def close(self) -> None:
        for task in list(self._background_swaps.values()):
            task.cancel()
        self.cache.close_all()
        self._predict_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)
