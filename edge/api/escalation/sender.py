"""Drains the outbox to the cloud's `POST /api/v1/escalations`.

Entries leave the outbox only after the cloud acknowledges them (2xx); the cloud is idempotent on
`image_query_id`, so a crash between its ack and our delete only causes a harmless resend (200).
Unreachable cloud, 5xx, 401/403, 408 and 429 back the whole sender off (capped exponential with
jitter) and keep everything; a 4xx that names the entry itself as bad moves it to the `dead` state,
kept and counted (`/status`, `/metrics`), never deleted, until an operator re-drives it. A 409 is one
of those: the cloud holds that image query id for another detector or with another image, so this
entry was never delivered and must not pass for delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import httpx

from edge.api.core.store import EdgeStore, OutboxItem
from edge.api.escalation.cloud_link import CloudLink
from edge.api.metrics import EdgeMetrics

log = logging.getLogger("edge.outbox")

ESCALATIONS_PATH = "/api/v1/escalations"
_RETRY_STATUSES = {401, 403, 408, 425, 429}


class _Backoff(Exception):
    pass


class OutboxSender:
    def __init__(
        self,
        store: EdgeStore,
        http: httpx.AsyncClient,
        link: CloudLink,
        metrics: EdgeMetrics,
        api_token: str,
        retry_base_s: float,
        retry_max_s: float,
        concurrency: int,
        alarm_depth: int = 10_000,
    ) -> None:
        self._alarm_depth = alarm_depth
        self._last_alarm = 0.0
        self._store = store
        self._http = http
        self._link = link
        self._metrics = metrics
        self._token = api_token
        self._base = retry_base_s
        self._max = retry_max_s
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                sent_any = await self.drain_once()
            except asyncio.CancelledError:
                raise
            except _Backoff:
                # Not woken early: new escalations must not hammer a cloud that is down.
                await asyncio.sleep(self._delay())
                continue
            except Exception:
                log.exception("outbox sender error")
                await asyncio.sleep(self._delay())
                continue
            if not sent_any:
                await self._sleep(5.0)

    async def _sleep(self, seconds: float) -> None:
        """Returns early on wake(); a wake during the last drain is kept, so nothing waits needlessly."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _delay(self) -> float:
        cap = min(self._max, self._base * 2.0 ** min(self._failures, 20))
        return cap * (0.5 + random.random() / 2)

    async def drain_once(self) -> bool:
        """Send one batch; True if anything was pending. Raises _Backoff when the cloud is unhappy."""
        self._wake.clear()
        batch = await self._store.run(lambda: self._store.pending(self._concurrency * 4))
        await self._refresh_depth()
        if not batch:
            return False
        sem = asyncio.Semaphore(self._concurrency)

        async def send(item: OutboxItem) -> bool:
            async with sem:
                return await self._send(item)

        results = await asyncio.gather(*(send(item) for item in batch))
        await self._refresh_depth()
        if not all(results):
            self._failures += 1
            raise _Backoff
        self._failures = 0
        return True

    async def _send(self, item: OutboxItem) -> bool:
        """True when the item is settled (acknowledged or dead-lettered), False to retry later."""
        headers = {"X-Request-Id": f"esc_{item.image_query_id}"}
        if self._token:
            headers["x-api-token"] = self._token
        files: dict[str, tuple[str | None, bytes | str, str]] = {
            "escalation": (None, item.payload, "application/json"),
            "image": ("image", item.image, item.content_type),
        }
        try:
            resp = await self._http.post(ESCALATIONS_PATH, files=files, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            self._link.failed(error)
            self._metrics.escalation_send_failures.labels("unreachable").inc()
            await self._store.run(lambda: self._store.note_failure(item.image_query_id, error, dead=False))
            return False
        self._link.succeeded()
        if resp.is_success:
            await self._store.run(lambda: self._store.ack(item.image_query_id))
            self._metrics.escalations_sent.labels(item.reason).inc()
            return True
        error = f"cloud answered {resp.status_code}: {resp.text[:200]}"
        dead = 400 <= resp.status_code < 500 and resp.status_code not in _RETRY_STATUSES
        kind = ("conflict" if resp.status_code == 409 else "rejected") if dead else f"http_{resp.status_code}"
        self._metrics.escalation_send_failures.labels(kind).inc()
        if dead:
            log.error(
                "escalation rejected by cloud", extra={"fields": {"iq": item.image_query_id, "error": error}}
            )
        await self._store.run(lambda: self._store.note_failure(item.image_query_id, error, dead=dead))
        return dead

    async def redrive(self, image_query_id: str | None = None) -> int:
        """Dead entries back to pending (after the cause is fixed in the cloud), sent at once."""
        moved = await self._store.run(lambda: self._store.redrive(image_query_id))
        if moved:
            log.info("dead escalations re-driven", extra={"fields": {"count": moved, "iq": image_query_id}})
            self.wake()
        await self._refresh_depth()
        return moved

    async def _refresh_depth(self) -> None:
        depth = await self._store.run(self._store.depth)
        self._metrics.outbox_pending.set(depth.pending)
        self._metrics.outbox_dead.set(depth.dead)
        now = time.monotonic()
        if depth.pending >= self._alarm_depth and now - self._last_alarm > 60:
            self._last_alarm = now
            log.warning(
                "outbox depth over alarm threshold",
                extra={"fields": {"pending": depth.pending, "oldest_age_s": depth.oldest_pending_age_s}},
            )


class CloudProbe:
    """Keeps `CloudLink.reachable` fresh even when nothing is being escalated."""

    def __init__(
        self, http: httpx.AsyncClient, link: CloudLink, metrics: EdgeMetrics, interval_s: float
    ) -> None:
        self._http = http
        self._link = link
        self._metrics = metrics
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cloud-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def probe(self) -> None:
        try:
            await self._http.get("/health/live", timeout=3.0)
        except httpx.HTTPError as exc:
            self._link.failed(f"{type(exc).__name__}: {exc}"[:300])
        else:
            self._link.succeeded()  # any HTTP answer means the cloud is reachable
        self._metrics.cloud_reachable.set(1 if self._link.reachable else 0)

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval)
