"""What the inference routes call: resolve a detector's bundle, hold it in the cache, predict off-loop."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.bundle import BundleError, current_bundle_dir, list_detectors, read_metadata
from common.ids import is_detector_id
from common.imaging import ImageLimits, inspect_image
from common.runtime import ModelRuntime, Prediction, choose_providers
from common.wire.inference import CacheStats, ModelInfo, ModelList
from edge.inference.batching import Batcher
from edge.inference.cache import ModelCache
from edge.inference.metrics import InferenceMetrics

BUNDLE_RESOLVE_TTL_S = 1.0


class InvalidDetectorIdError(ValueError):
    """The detector id is not det_ + 27 base62 characters (and so never touches the filesystem)."""


class ModelNotFoundError(LookupError):
    """No installed bundle for this detector."""


class ModelLoadError(RuntimeError):
    """A bundle exists but could not be verified or loaded."""


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
    ) -> None:
        self.model_root = model_root
        self.limits = limits
        self.metrics = metrics
        self.providers = choose_providers(provider_preference)  # type: ignore[arg-type]
        self._intra_op_threads = intra_op_threads
        self._verify = verify_on_load
        self._predict_pool = ThreadPoolExecutor(worker_threads, thread_name_prefix="predict")
        self._resolved: dict[str, tuple[float, Path | None]] = {}
        self._batcher = Batcher(self._predict_pool, worker_threads, max_batch, limits, metrics)
        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.cache: ModelCache[ModelRuntime] = ModelCache(
            self._load, self._load_pool, max_entries=max_entries, max_bytes=max_bytes, observer=metrics
        )

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
            self._resolved[detector_id] = (now, bundle)
        if bundle is None:
            raise ModelNotFoundError(f"no model is installed for {detector_id}")
        return bundle

    def _load(self, detector_id: str) -> ModelRuntime:
        bundle = self._bundle_dir(detector_id)
        try:
            runtime = ModelRuntime(bundle, self.providers, self._intra_op_threads, verify=self._verify)
            runtime.warmup()
        except BundleError as exc:
            raise ModelLoadError(str(exc)) from None
        except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
            raise ModelLoadError(f"{bundle}: {type(exc).__name__}: {exc}") from None
        return runtime

    async def infer(self, detector_id: str, image: bytes) -> Prediction:
        self._bundle_dir(detector_id)  # 400/404 before any load or decode
        info = inspect_image(image, self.limits)  # cheap header check: reject before touching the model
        start = time.perf_counter()
        async with self.cache.use(detector_id) as runtime:
            prediction = await self._batcher.submit(runtime, image, info)
        self.metrics.inference_seconds.labels(detector_id).observe(time.perf_counter() - start)
        self._update_gauges()
        return prediction

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
        return CacheStats(
            entries=len(self.cache.keys()),
            max_entries=self.cache.max_entries,
            bytes=self.cache.bytes,
            max_bytes=self.cache.max_bytes,
            in_use=self.cache.in_use,
        )

    def _update_gauges(self) -> None:
        self.metrics.cache_entries.set(len(self.cache.keys()))
        self.metrics.cache_bytes.set(self.cache.bytes)

    def close(self) -> None:
        self.cache.close_all()
        self._predict_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)
