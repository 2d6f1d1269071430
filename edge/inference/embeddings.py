"""Backbone outputs of recent images, so an image asked of several detectors runs their backbone once.

A camera frame is typically asked of several detectors within moments, and detectors trained on one
backbone read the same backbone outputs. The cache is a small LRU with a TTL (a frame is rarely asked
about again after a few seconds), keyed by backbone sha256, output name, image sha256 and the image's
preprocessing (the same for every head on a backbone in practice: the trainer writes the backbone's).

Single-flight: a request for a key whose computation is under way waits for that result (`join`)
instead of computing it again. A failure goes to the requests waiting on it and is never kept, so the
next request computes afresh. Event-loop only (not thread-safe): the batcher looks keys up and settles
them on the loop; the computation itself runs in its executor.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from common.bundle import PipelineConfig

T = TypeVar("T")


class EmbeddingKey(NamedTuple):
    backbone: str  # sha256 of backbone.onnx
    output: str  # e.g. "embedding" or "feature_map"
    image: str  # sha256 of the image bytes
    preprocessing: str = ""  # fingerprint of the pipeline that made the input tensor


class EmbeddingCache(Generic[T]):
    def __init__(
        self, max_entries: int = 256, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max(0, max_entries)
        self.ttl_s = ttl_s
        self._clock = clock
        self._values: OrderedDict[EmbeddingKey, tuple[float, T]] = OrderedDict()  # key -> (stored at, value)
        self._pending: dict[EmbeddingKey, asyncio.Future[T]] = {}

    def get(self, key: EmbeddingKey) -> T | None:
        """The value if it was computed less than `ttl_s` ago (and marks it recently used)."""
        hit = self._values.get(key)
        if hit is None:
            return None
        if self._clock() - hit[0] >= self.ttl_s:
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return hit[1]

    def join(self, key: EmbeddingKey) -> asyncio.Future[T] | None:
        """The computation under way for `key`, if any; await it through asyncio.shield."""
        return self._pending.get(key)

    def begin(self, key: EmbeddingKey) -> asyncio.Future[T]:
        """Mark `key` as being computed; the caller must `resolve` or `fail` it, whatever happens."""
        if key in self._pending:
            raise RuntimeError(f"{key} is being computed already: join it")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        return future

    def resolve(self, key: EmbeddingKey, value: T) -> None:
        future = self._pending.pop(key, None)
        if self.max_entries > 0 and self.ttl_s > 0:
            self._values[key] = (self._clock(), value)
            self._values.move_to_end(key)
            self._trim()
        if future is not None and not future.done():
            future.set_result(value)

    def fail(self, key: EmbeddingKey, exc: BaseException) -> None:
        """Hand the failure to the requests waiting on `key`; nothing is kept."""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be zero

    def _trim(self) -> None:
        now = self._clock()
        while self._values:
            stored_at = next(iter(self._values.values()))[0]
            if len(self._values) <= self.max_entries and now - stored_at < self.ttl_s:
                return
            self._values.popitem(last=False)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()


def preprocessing_fingerprint(pipeline: PipelineConfig) -> str:
    """What makes the backbone's input tensor from image bytes: heads that agree on it share outputs."""
    p = pipeline
    mean = ",".join(repr(float(v)) for v in p.mean)
    std = ",".join(repr(float(v)) for v in p.std)
    return f"{p.input_width}x{p.input_height}/{p.channels}/{p.layout}/{p.resize}/mean={mean}/std={std}"
