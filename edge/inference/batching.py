"""Opportunistic batching: a free worker takes every request already waiting for the same model.

No request is ever held back to fill a batch, so a lone request runs at once (latency unchanged);
under load, requests that queue anyway share one forward pass, which costs less per image.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from common.imaging import ImageInfo, ImageLimits
from common.runtime import ModelRuntime, Prediction
from edge.inference.metrics import InferenceMetrics


@dataclass
class _Pending:
    image: bytes
    info: ImageInfo | None
    future: asyncio.Future[Prediction]


@dataclass
class _Queue:
    items: deque[_Pending] = field(default_factory=deque)


class Batcher:
    def __init__(
        self, executor: Executor, workers: int, max_batch: int, limits: ImageLimits, metrics: InferenceMetrics
    ) -> None:
        self._executor = executor
        self._free = workers
        self._max_batch = max(1, max_batch)
        self._limits = limits
        self._metrics = metrics
        self._queues: dict[ModelRuntime, _Queue] = {}

    async def submit(self, runtime: ModelRuntime, image: bytes, info: ImageInfo | None) -> Prediction:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(runtime, _Queue()).items.append(_Pending(image, info, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        """Start batches while workers are free, longest queue first."""
        while self._free > 0 and self._queues:
            runtime, queue = max(self._queues.items(), key=lambda kv: len(kv[1].items))
            batch = [queue.items.popleft() for _ in range(min(self._max_batch, len(queue.items)))]
            if not queue.items:
                del self._queues[runtime]
            self._free -= 1
            self._start(runtime, batch)

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

    def _deliver(self, batch: list[_Pending], results: Sequence[Prediction | BaseException]) -> None:
        self._metrics.batch_size.observe(len(batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
