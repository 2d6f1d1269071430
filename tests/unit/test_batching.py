"""Opportunistic batching: a lone request runs alone; requests that queue share a forward pass."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from common.imaging import ImageLimits
from edge.inference.batching import Batcher
from edge.inference.metrics import InferenceMetrics


class FakeRuntime:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.gate = threading.Event()

    def predict_batch(self, items, limits):
        self.gate.wait(5)
        self.batches.append([data for data, _ in items])
        return [ValueError("corrupt") if data == b"bad" else f"pred:{data.decode()}" for data, _ in items]


async def test_queued_requests_share_a_batch_and_a_bad_image_fails_alone() -> None:
    runtime = FakeRuntime()
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(pool, workers=1, max_batch=3, limits=ImageLimits(), metrics=InferenceMetrics())
        first = asyncio.ensure_future(batcher.submit(runtime, b"a", None))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # "a" is running alone; the rest queue behind it
        rest = [
            asyncio.ensure_future(batcher.submit(runtime, data, None))  # type: ignore[arg-type]
            for data in (b"b", b"bad", b"c", b"d")
        ]
        await asyncio.sleep(0.05)
        runtime.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert runtime.batches == [[b"a"], [b"b", b"bad", b"c"], [b"d"]]
    assert (
        results[0] == "pred:a"
        and results[1] == "pred:b"
        and results[3] == "pred:c"
        and results[4] == "pred:d"
    )
    assert isinstance(results[2], ValueError)


async def test_a_lone_request_is_not_held_back() -> None:
    runtime = FakeRuntime()
    runtime.gate.set()
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(pool, workers=2, max_batch=8, limits=ImageLimits(), metrics=InferenceMetrics())
        assert await asyncio.wait_for(batcher.submit(runtime, b"x", None), 2) == "pred:x"  # type: ignore[arg-type]
    assert runtime.batches == [[b"x"]]
