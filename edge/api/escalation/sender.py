"""Drains the outbox to the cloud: `POST /api/v1/escalations/batch`, up to `batch` entries a request
(`POST /api/v1/escalations`, one each, where the cloud has no batch route or refuses a batch whole).

Entries leave the outbox only after the cloud acknowledges them (2xx, for a batch the entry's own
status); the cloud is idempotent on `image_query_id`, so a crash between its ack and our delete only
causes a harmless resend (200). Unreachable cloud, 5xx, 401/403, 408 and 429 back the whole sender off
(capped exponential with jitter) and keep everything; a 4xx that names the entry itself as bad moves
it to the `dead` state, kept and counted (`/status`, `/metrics`), never deleted, until an operator
re-drives it. A 409 is one of those: the cloud holds that image query id for another detector or with
another image, so this entry was never delivered and must not pass for delivered. A batch refused
whole with a 4xx (a cloud without the route, a gateway's body limit) says nothing about any one
entry: those entries go again one by one, and each gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
from pydantic import ValidationError

from common.wire.escalation import MAX_BATCH_ESCALATIONS, EscalationBatchAck
from edge.api.core.store import EdgeStore, OutboxItem
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.sending_loop import Backoff, SendingLoop
from edge.api.metrics import EdgeMetrics

log = logging.getLogger("edge.outbox")

ESCALATIONS_PATH = "/api/v1/escalations"
BATCH_PATH = "/api/v1/escalations/batch"
_RETRY_STATUSES = {401, 403, 408, 425, 429}
# A cloud that answered a batch with 404 or 405 (it predates the route) is asked again this much later.
_NO_BATCH_FOR_S = 600.0


class OutboxSender(SendingLoop):
    name = "outbox-sender"

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
        batch: int = 16,
    ) -> None:
        super().__init__(retry_base_s, retry_max_s)
        self._batch = max(1, min(batch, MAX_BATCH_ESCALATIONS))
        self._no_batch_until = 0.0
        self._alarm_depth = alarm_depth
        self._last_alarm = 0.0
        self._store = store
        self._http = http
        self._link = link
        self._metrics = metrics
        self._token = api_token
        self._concurrency = concurrency

    async def round(self) -> bool:
        return await self.drain_once()

    async def drain_once(self) -> bool:
        """Send one round (`concurrency` requests at most); True if anything was pending. Raises
        Backoff when the cloud is unhappy."""
        self._wake.clear()
        pending = await self._store.run(lambda: self._store.pending(self._concurrency * self._batch))
        await self._refresh_depth()
        if not pending:
            return False
        size = self._batch if time.monotonic() >= self._no_batch_until else 1
        chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
        sem = asyncio.Semaphore(self._concurrency)

        async def send(chunk: list[OutboxItem]) -> bool:
            async with sem:
                return await (self._send_batch(chunk) if len(chunk) > 1 else self._send(chunk[0]))

        results = await asyncio.gather(*(send(chunk) for chunk in chunks))
        await self._refresh_depth()
        if not all(results):
            self._failures += 1
            raise Backoff
        self._failures = 0
        return True

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"X-Request-Id": request_id}
        if self._token:
            headers["x-api-token"] = self._token
        return headers

    async def _post(
        self,
        path: str,
        files: list[tuple[str, tuple[str | None, bytes | str, str]]],
        request_id: str,
        items: list[OutboxItem],
    ) -> httpx.Response | None:
        """The cloud's answer, or None when it could not be reached (every item noted as failed)."""
        try:
            return await self._http.post(path, files=files, headers=self._headers(request_id))
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            self._link.failed(error)
            self._metrics.escalation_send_failures.labels("unreachable").inc(len(items))
            failures = [(item.image_query_id, error, False) for item in items]
            await self._store.run(lambda: self._store.note_failures(failures))
            return None

    @staticmethod
    def _parts(item: OutboxItem) -> list[tuple[str, tuple[str | None, bytes | str, str]]]:
        return [
            ("escalation", (None, item.payload, "application/json")),
            ("image", ("image", item.image, item.content_type)),
        ]

    async def _send_batch(self, items: list[OutboxItem]) -> bool:
        """True when every item is settled; an item the cloud did not settle stays pending."""
        files = [part for item in items for part in self._parts(item)]
        resp = await self._post(BATCH_PATH, files, f"esc_batch_{items[0].image_query_id}", items)
        if resp is None:
            return False
        self._link.succeeded()
        if resp.status_code in (404, 405):
            self._no_batch_until = time.monotonic() + _NO_BATCH_FOR_S
            log.info("the cloud has no batch route; sending escalations one by one")
        if 400 <= resp.status_code < 500 and resp.status_code not in _RETRY_STATUSES:
            # Refused whole: nothing is known about any one entry until each is sent on its own.
            settled = [await self._send(item) for item in items]
            return all(settled)
        if not resp.is_success:
            return await self._settle(items, [resp.status_code] * len(items), [resp.text[:200]] * len(items))
        try:
            results = EscalationBatchAck.model_validate_json(resp.content).results
        except ValidationError:
            results = []
        by_index = {r.index: r for r in results}
        if sorted(by_index) != list(range(len(items))):
            error = f"cloud answered the batch {resp.status_code} without a result per entry"
            return await self._settle(items, [502] * len(items), [error] * len(items))
        return await self._settle(
            items,
            [by_index[i].status for i in range(len(items))],
            [by_index[i].detail or "" for i in range(len(items))],
        )

    async def _send(self, item: OutboxItem) -> bool:
        """True when the item is settled (acknowledged or dead-lettered), False to retry later."""
        resp = await self._post(ESCALATIONS_PATH, self._parts(item), f"esc_{item.image_query_id}", [item])
        if resp is None:
            return False
        self._link.succeeded()
        return await self._settle([item], [resp.status_code], [resp.text[:200]])

    async def _settle(self, items: list[OutboxItem], statuses: list[int], details: list[str]) -> bool:
        """Apply the cloud's word on each item (acks in one transaction); True when all are settled."""
        acked = [item for item, code in zip(items, statuses, strict=True) if 200 <= code < 300]
        if acked:
            ids = [item.image_query_id for item in acked]
            await self._store.run(lambda: self._store.ack(ids))
            for item in acked:
                self._metrics.escalations_sent.labels(item.reason).inc()
        failures: list[tuple[str, str, bool]] = []
        for item, code, detail in zip(items, statuses, details, strict=True):
            if 200 <= code < 300:
                continue
            error = f"cloud answered {code}: {detail[:200]}"
            dead = 400 <= code < 500 and code not in _RETRY_STATUSES
            kind = ("conflict" if code == 409 else "rejected") if dead else f"http_{code}"
            self._metrics.escalation_send_failures.labels(kind).inc()
            if dead:
                log.error(
                    "escalation rejected by cloud",
                    extra={"fields": {"iq": item.image_query_id, "error": error}},
                )
            failures.append((item.image_query_id, error, dead))
        if failures:
            await self._store.run(lambda: self._store.note_failures(failures))
        return all(dead for _, _, dead in failures)

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
