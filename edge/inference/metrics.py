"""Prometheus metrics of the inference service; a registry per app so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class InferenceMetrics:
    """Implements the cache's observer interface and records per-request inference time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter("inference_cache_hits", "Model cache hits", ["detector_id"], registry=r)
        self.cache_misses = Counter(
            "inference_cache_misses", "Model cache misses", ["detector_id"], registry=r
        )
        self.loads = Counter("inference_model_loads", "Model loads", ["detector_id", "outcome"], registry=r)
        self.evictions = Counter(
            "inference_cache_evictions", "Model cache evictions", ["detector_id", "reason"], registry=r
        )
        self.load_seconds = Histogram(
            "inference_model_load_seconds", "Time to load a model", ["detector_id"], registry=r
        )
        self.inference_seconds = Histogram(
            "inference_seconds",
            "Decode + primary + OODD time per request",
            ["detector_id"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per forward pass (requests already waiting share one)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.cache_entries = Gauge(
            "inference_cache_entries",
            "Models held in the cache plus the distinct backbones they hold (what max_entries bounds)",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "inference_cache_bytes", "Bytes of the models held in the cache, each backbone once", registry=r
        )
        # Shared backbones (split bundles): label = the first 12 hex of the backbone's sha256.
        self.backbone_images = Counter(
            "inference_backbone_images",
            "Images of requests run through a backbone (warm-ups not counted)",
            ["backbone"],
            registry=r,
        )
        self.backbone_loads = Counter(
            "inference_backbone_loads",
            "Backbone sessions loaded (once while any head holds it)",
            ["backbone"],
            registry=r,
        )
        self.embedding_cache = Counter(
            "inference_embedding_cache",
            "Backbone output lookups: hit, miss (computed), shared (joined a computation under way)",
            ["result"],
            registry=r,
        )
        # Read when scraped: the service points them at its backbone pool and embedding cache.
        self.backbones_loaded = Gauge("inference_backbones_loaded", "Backbone sessions loaded", registry=r)
        self.backbone_bytes = Gauge("inference_backbone_bytes", "Bytes of the loaded backbones", registry=r)
        self.embedding_entries = Gauge(
            "inference_embedding_cache_entries", "Backbone outputs held in the embedding cache", registry=r
        )
        # Labelled children of the per-request metrics, looked up once per label value.
        self._hits: dict[str, Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._embedding: dict[str, Counter] = {}
        self._backbone_images: dict[str, Counter] = {}

    def hit(self, key: str) -> None:
        child = self._hits.get(key)
        if child is None:
            child = self._hits[key] = self.cache_hits.labels(key)
        child.inc()

    def miss(self, key: str) -> None:
        self.cache_misses.labels(key).inc()

    def observe_inference(self, detector_id: str, seconds: float) -> None:
        child = self._latency.get(detector_id)
        if child is None:
            child = self._latency[detector_id] = self.inference_seconds.labels(detector_id)
        child.observe(seconds)

    def loaded(self, key: str, seconds: float, ok: bool) -> None:
        self.loads.labels(key, "ok" if ok else "error").inc()
        if ok:
            self.load_seconds.labels(key).observe(seconds)

    def evicted(self, key: str, reason: str) -> None:
        self.evictions.labels(key, reason).inc()

    def embedding(self, result: str) -> None:
        child = self._embedding.get(result)
        if child is None:
            child = self._embedding[result] = self.embedding_cache.labels(result)
        child.inc()

    def backbone_ran(self, sha256: str, images: int) -> None:
        child = self._backbone_images.get(sha256)
        if child is None:
            child = self._backbone_images[sha256] = self.backbone_images.labels(sha256[:12])
        child.inc(images)

    def backbone_loaded(self, sha256: str) -> None:
        self.backbone_loads.labels(sha256[:12]).inc()
