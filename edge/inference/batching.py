"""Opportunistic batching: a free worker takes every request already waiting for the same model.

No request is ever held back to fill a batch, so a lone request runs at once (latency unchanged);
under load, requests that queue anyway share one forward pass, which costs less per image.

Split bundles queue by backbone, not by head: requests for any heads on one backbone (same sha256,
output and preprocessing) share one backbone forward pass, then each head runs on its own rows. Before
that, each image's backbone output is looked up in the embedding cache, so a frame asked of several
detectors runs the backbone once: a hit runs only the head; an output being computed by another batch
is waited for (the request is queued again, head only, once it is there); within a batch each distinct
image is run once. Decoding and every ONNX run happen in the executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.imaging import ImageInfo, ImageLimits
from common.runtime import BackboneRuntime, ModelRuntime, Prediction, Preprocessor
from edge.inference.embeddings import EmbeddingCache, EmbeddingKey, preprocessing_fingerprint
from edge.inference.metrics import InferenceMetrics

Embedding = NDArray[np.float32]
# Hashing a typical frame on the loop costs microseconds; a huge one goes to a thread.
_HASH_ON_LOOP_MAX_BYTES = 1 << 20


@dataclass(eq=False)
class _Pending:
    runtime: ModelRuntime
    image: bytes
    info: ImageInfo | None
    future: asyncio.Future[Prediction]
    key: EmbeddingKey | None = None  # split bundles: the backbone output this request's head reads
    outputs: Embedding | None = None  # that output, once known (a cache hit or a joined computation)


@dataclass
class _Queue:
    items: deque[_Pending] = field(default_factory=deque)


@dataclass(frozen=True)
class _BackboneGroup:
    """Requests that can share a backbone forward pass, whichever heads they are for."""

    backbone: str
    output: str
    preprocessing: str


@dataclass
class _SplitJob:
    group: _BackboneGroup
    backbone: BackboneRuntime | None  # None when every row is known already
    preprocessor: Preprocessor
    rows: list[_Pending]  # one request per image whose backbone output this job computes
    items: list[_Pending]  # every request of the job; each runs its head


@dataclass
class _SplitResult:
    rows: list[Embedding | Exception]
    predictions: list[Prediction | Exception]


def _digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def _decode_rows(
    job: _SplitJob, limits: ImageLimits
) -> tuple[list[Embedding | Exception], list[NDArray[np.float32]], list[int]]:
    """Decode each new image on its own, so a corrupt one fails only its own row."""
    rows: list[Embedding | Exception] = []
    tensors: list[NDArray[np.float32]] = []
    decoded: list[int] = []
    for i, row in enumerate(job.rows):
        try:
            tensors.append(job.preprocessor.tensor(row.image, limits, row.info))
            decoded.append(i)
            rows.append(np.empty(0, dtype=np.float32))  # filled in below
        except Exception as exc:  # per image: a corrupt image must not fail its batch-mates
            rows.append(exc)
    return rows, tensors, decoded


def _run_backbone(
    job: _SplitJob,
    rows: list[Embedding | Exception],
    tensors: list[NDArray[np.float32]],
    decoded: list[int],
) -> None:
    """One backbone pass for every decoded image: the batch is what makes the split model pay off."""
    if not tensors:
        return
    try:
        if job.backbone is None:
            raise RuntimeError("no backbone to compute image outputs with")
        out = job.backbone.run(np.concatenate(tensors), [job.group.output])[job.group.output]
        for j, i in enumerate(decoded):
            rows[i] = out[j : j + 1].copy()  # a copy: the cache must not keep the whole batch alive
    except Exception as exc:  # the backbone pass failed: every image it had fails alike
        for i in decoded:
            rows[i] = exc


def _run_head(
    job: _SplitJob,
    runtime: ModelRuntime,
    members: list[int],
    rows: list[Embedding | Exception],
    index: dict[EmbeddingKey | None, int],
    predictions: list[Prediction | Exception | None],
    decode_ms: float,
    backbone_ms: float,
) -> None:
    """One head over all its requests' rows at once; its failure fails only its own requests."""
    inputs: list[Embedding] = []
    ready: list[int] = []
    for i in members:
        item = job.items[i]
        value = item.outputs if item.outputs is not None else rows[index[item.key]]
        if isinstance(value, Exception):
            predictions[i] = value
        else:
            inputs.append(value)
            ready.append(i)
    if not inputs:
        return
    h0 = time.perf_counter()
    try:
        head_out = runtime.run_head_full({job.group.output: np.concatenate(inputs)})
    except Exception as exc:  # one head failing fails its own requests only
        for i in ready:
            predictions[i] = exc
        return
    head_ms = (time.perf_counter() - h0) * 1e3
    for j, i in enumerate(ready):
        computed = job.items[i].outputs is None
        timings = {
            "decode": decode_ms if computed else 0.0,
            "backbone": backbone_ms if computed else 0.0,
            "head": head_ms,
            "model": (backbone_ms if computed else 0.0) + head_ms,
        }
        predictions[i] = runtime.prediction_at(head_out, j, timings)


def _run_split(job: _SplitJob, limits: ImageLimits) -> _SplitResult:
    """Worker thread: decode the new images, one backbone pass over them, then each head on its rows."""
    t0 = time.perf_counter()
    rows, tensors, decoded = _decode_rows(job, limits)
    t1 = time.perf_counter()
    _run_backbone(job, rows, tensors, decoded)
    t2 = time.perf_counter()
    decode_ms = (t1 - t0) * 1e3 / len(job.rows) if job.rows else 0.0
    backbone_ms = (t2 - t1) * 1e3
    index = {row.key: i for i, row in enumerate(job.rows)}
    heads: dict[ModelRuntime, list[int]] = {}
    for i, item in enumerate(job.items):
        heads.setdefault(item.runtime, []).append(i)
    predictions: list[Prediction | Exception | None] = [None] * len(job.items)
    for runtime, members in heads.items():
        _run_head(job, runtime, members, rows, index, predictions, decode_ms, backbone_ms)
    done = [p if p is not None else RuntimeError("no prediction") for p in predictions]
    return _SplitResult(rows=rows, predictions=done)


class Batcher:
    def __init__(
        self,
        executor: Executor,
        workers: int,
        max_batch: int,
        limits: ImageLimits,
        metrics: InferenceMetrics,
        embeddings: EmbeddingCache[Embedding] | None = None,
    ) -> None:
        self._executor = executor
        self._free = workers
        self._max_batch = max(1, max_batch)
        self._limits = limits
        self._metrics = metrics
        self.embeddings: EmbeddingCache[Embedding] = (
            embeddings if embeddings is not None else EmbeddingCache()
        )
        self._queues: dict[Hashable, _Queue] = {}

    async def submit(self, runtime: ModelRuntime, image: bytes, info: ImageInfo | None) -> Prediction:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        pending = _Pending(runtime, image, info, future)
        group: Hashable = runtime
        backbone: BackboneRuntime | None = getattr(runtime, "backbone", None)
        if backbone is not None:
            output = runtime.backbone_outputs[0]
            preprocessing = preprocessing_fingerprint(runtime.pipeline)
            digest = (
                _digest(image)
                if len(image) <= _HASH_ON_LOOP_MAX_BYTES
                else await asyncio.to_thread(_digest, image)
            )
            pending.key = EmbeddingKey(backbone.sha256, output, digest, preprocessing)
            group = _BackboneGroup(backbone.sha256, output, preprocessing)
        self._enqueue(group, pending)
        self._dispatch()
        return await future

    def _enqueue(self, group: Hashable, pending: _Pending, first: bool = False) -> None:
        queue = self._queues.setdefault(group, _Queue())
        if first:
            queue.items.appendleft(pending)
        else:
            queue.items.append(pending)

    def _dispatch(self) -> None:
        """Start batches while workers are free, longest queue first."""
        while self._free > 0 and self._queues:
            group, queue = max(self._queues.items(), key=lambda kv: len(kv[1].items))
            batch = [queue.items.popleft() for _ in range(min(self._max_batch, len(queue.items)))]
            if not queue.items:
                del self._queues[group]
            batch = [p for p in batch if not p.future.done()]  # cancelled while queued
            if isinstance(group, _BackboneGroup):
                job = self._split_job(group, batch)
                if job is not None:
                    self._free -= 1
                    self._start_split(job)
            elif batch:
                self._free -= 1
                self._start(batch[0].runtime, batch)

    # -- single-file bundles -----------------------------------------------------------------------
    def _start(self, runtime: ModelRuntime, batch: list[_Pending]) -> None:
        # A done-callback rather than a task per batch: one task and one loop iteration less each.
        loop = asyncio.get_running_loop()
        try:
            done = loop.run_in_executor(
                self._executor, runtime.predict_batch, [(p.image, p.info) for p in batch], self._limits
            )
        except Exception as exc:  # the executor is shut down: fail the batch, never leave it waiting
            self._free += 1
            self._deliver(batch, [exc] * len(batch))
            return
        done.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: list[_Pending], done: asyncio.Future[list[Prediction | Exception]]) -> None:
        self._free += 1
        if done.cancelled():
            for pending in batch:
                pending.future.cancel()
        else:
            exc = done.exception()
            results: Sequence[Prediction | BaseException] = (
                done.result() if exc is None else [exc] * len(batch)
            )
            self._deliver(batch, results)  # a failed forward pass fails every request in it alike
        self._dispatch()

    # -- split bundles -----------------------------------------------------------------------------
    def _split_job(self, group: _BackboneGroup, batch: list[_Pending]) -> _SplitJob | None:
        """Settle each request's backbone output against the embedding cache; None: nothing to run."""
        rows: dict[EmbeddingKey, _Pending] = {}
        items: list[_Pending] = []
        for pending in batch:
            key = pending.key
            if key is None:  # never: split requests are keyed in submit
                pending.future.set_exception(RuntimeError("a split-bundle request without an image key"))
                continue
            if pending.outputs is None:
                if key in rows:
                    self._metrics.embedding("shared")
                else:
                    value = self.embeddings.get(key)
                    if value is not None:
                        self._metrics.embedding("hit")
                        pending.outputs = value
                    else:
                        running = self.embeddings.join(key)
                        if running is not None:  # another batch is computing it: wait, then head only
                            self._metrics.embedding("shared")
                            running.add_done_callback(functools.partial(self._joined, group, pending))
                            continue
                        self._metrics.embedding("miss")
                        self.embeddings.begin(key)
                        rows[key] = pending
            items.append(pending)
        if not items:
            return None
        # Every request here holds its head (and so the backbone) until it is answered.
        backbone = next((p.runtime.backbone for p in items if p.runtime.backbone is not None), None)
        return _SplitJob(group, backbone, items[0].runtime.preprocessor, list(rows.values()), items)

    def _joined(self, group: _BackboneGroup, pending: _Pending, running: asyncio.Future[Embedding]) -> None:
        if pending.future.done():
            return
        if running.cancelled():
            pending.future.cancel()
            return
        exc = running.exception()
        if exc is not None:  # that image failed (e.g. it does not decode): so does this request
            pending.future.set_exception(exc)
            return
        pending.outputs = running.result()
        self._enqueue(group, pending, first=True)  # it has waited already: ahead of newcomers
        self._dispatch()

    def _start_split(self, job: _SplitJob) -> None:
        loop = asyncio.get_running_loop()
        try:
            done = loop.run_in_executor(self._executor, _run_split, job, self._limits)
        except Exception as exc:  # the executor is shut down
            self._free += 1
            self._settle_rows(job, [exc] * len(job.rows))
            self._deliver(job.items, [exc] * len(job.items))
            return
        done.add_done_callback(functools.partial(self._finish_split, job))

    def _finish_split(self, job: _SplitJob, done: asyncio.Future[_SplitResult]) -> None:
        self._free += 1
        if done.cancelled():
            self._settle_rows(job, [RuntimeError("inference was cancelled")] * len(job.rows))
            for pending in job.items:
                pending.future.cancel()
        else:
            exc = done.exception()
            if exc is None:
                result = done.result()
                rows: Sequence[Embedding | BaseException] = result.rows
                predictions: Sequence[Prediction | BaseException] = result.predictions
            else:
                rows, predictions = [exc] * len(job.rows), [exc] * len(job.items)
            self._settle_rows(job, rows)
            self._deliver(job.items, predictions)
        self._dispatch()

    def _settle_rows(self, job: _SplitJob, rows: Sequence[Embedding | BaseException]) -> None:
        """Every output this job began is resolved or failed, so no request waits on it forever."""
        computed = 0
        for row, value in zip(job.rows, rows, strict=True):
            if row.key is None:
                continue
            if isinstance(value, BaseException):
                self.embeddings.fail(row.key, value)
            else:
                self.embeddings.resolve(row.key, value)
                computed += 1
        if computed:
            self._metrics.backbone_ran(job.group.backbone, computed)

    def _deliver(self, batch: list[_Pending], results: Sequence[Prediction | BaseException]) -> None:
        self._metrics.batch_size.observe(len(batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
