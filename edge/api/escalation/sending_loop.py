"""The loop both of edge-api's senders run (the escalation outbox, alert firings): one round at a
time in a background task, woken early by `wake()` when new work is stored, idle for `idle_s`
otherwise, and backing off while the cloud does not take what it is sent.

A round raises `Backoff` when the cloud refused for now (unreachable, 5xx, 429, ...); the wait before
the next round doubles from `retry_base_s` up to `retry_max_s`, with jitter, and new work does not cut
it short: a cloud that is down must not be hammered. A bug in a round is logged and backed off the
same way, so one bad row cannot spin the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

log = logging.getLogger("edge.sending")


class Backoff(Exception):
    """The cloud did not take this round; `unreachable`: no answer at all (not a refusal)."""

    def __init__(self, unreachable: bool = False) -> None:
        super().__init__()
        self.unreachable = unreachable


class SendingLoop:
    name = "sender"
    idle_s = 5.0

    def __init__(self, retry_base_s: float, retry_max_s: float) -> None:
        self._base = retry_base_s
        self._max = retry_max_s
        self._wake = asyncio.Event()
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    async def round(self) -> bool:
        """One round; True if there was work (the next round starts at once)."""
        raise NotImplementedError

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.round()
            except asyncio.CancelledError:
                raise
            except Backoff as exc:
                await self.back_off(exc)
                continue
            except Exception:
                log.exception("sender round failed", extra={"fields": {"sender": self.name}})
                self._failures += 1
                await self.back_off(None)
                continue
            if not busy:
                await self._sleep(self.idle_s)

    async def back_off(self, cause: Backoff | None) -> None:
        """Waits `delay()`; a sender may end the wait early on its own signal (override)."""
        await asyncio.sleep(self.delay())

    def delay(self) -> float:
        cap = min(self._max, self._base * 2.0 ** min(self._failures, 20))
        return cap * (0.5 + random.random() / 2)

    async def _sleep(self, seconds: float) -> None:
        """Returns early on wake(); a wake during the last round is kept, so nothing waits needlessly."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
