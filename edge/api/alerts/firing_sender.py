"""Delivers stored alert firings to the cloud: `POST /edge-api/v1/alerts/firings`, up to
MAX_BATCH_FIRINGS a request (docs/architecture.md §12).

A firing leaves the store only once the cloud names it in `recorded`; the cloud records each
`firing_id` once, so a crash between its ack and our delete only resends it. `refused` means it will
never be recorded (its rule is gone): it is kept as dead and not sent again. An unreachable cloud, a
5xx, and the statuses that say nothing about the firings (401, 403: this edge's token; 408, 425, 429)
keep everything and back off, capped and jittered like the escalation sender; any other 4xx refuses
the whole batch, which is then dead. Woken as soon as a firing is stored, so with the cloud up a firing
leaves at once; while backing off from an unreachable cloud, any success on the cloud link (the probe,
the escalation sender) ends the wait early.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import ValidationError

from common.wire.alerts import MAX_BATCH_FIRINGS, AlertFiring, AlertFiringAck, AlertFiringBatch
from edge.api.core.store import EdgeStore, StoredFiring
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.sending_loop import Backoff, SendingLoop
from edge.api.metrics import EdgeMetrics

log = logging.getLogger("edge.alerts")

FIRINGS_PATH = "/edge-api/v1/alerts/firings"
_RETRY_STATUSES = {401, 403, 408, 425, 429}
_IDLE_S = 5.0
# While backing off from an unreachable cloud: how often the cloud link is looked at.
_LINK_POLL_S = 0.25


class FiringSender(SendingLoop):
    name = "alert-firing-sender"
    idle_s = _IDLE_S

    def __init__(
        self,
        store: EdgeStore,
        http: httpx.AsyncClient,
        link: CloudLink,
        metrics: EdgeMetrics,
        *,
        api_token: str,
        edge_id: str,
        retry_base_s: float,
        retry_max_s: float,
        batch: int = MAX_BATCH_FIRINGS,
    ) -> None:
        super().__init__(retry_base_s, retry_max_s)
        self._store = store
        self._http = http
        self._link = link
        self._metrics = metrics
        self._headers = {"content-type": "application/json"}
        if api_token:
            self._headers["x-api-token"] = api_token
        self._edge_id = edge_id
        self._batch = max(1, min(batch, MAX_BATCH_FIRINGS))
        # For /status; in memory only (the store keeps each firing's own last error).
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None

    async def round(self) -> bool:
        return await self.send_once()

    async def back_off(self, cause: Backoff | None) -> None:
        """Not woken by new firings (they must not hammer a cloud that is down); but an unreachable
        cloud that something else reached again ends the wait."""
        delay = self.delay()
        if cause is None or not cause.unreachable:
            await asyncio.sleep(delay)
            return
        since = time.time()
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _LINK_POLL_S))
            if (self._link.last_success_at or 0.0) > since:
                return

    async def send_once(self) -> bool:
        """Send one batch; True if there was one. Raises Backoff when the cloud did not take it."""
        self._wake.clear()
        rows = await self._store.run(lambda: self._store.pending_firings(self._batch))
        try:
            if not rows:
                return False
            await self._send(rows)
        except Backoff:
            self._failures += 1
            raise
        finally:
            await self._refresh_depth()
        self._failures = 0
        return True

    async def _send(self, rows: list[StoredFiring]) -> None:
        firings = await self._readable(rows)
        if not firings:
            return
        ids = [f.firing_id for f in firings]
        body = AlertFiringBatch(edge_id=self._edge_id, firings=firings).model_dump_json()
        start = time.perf_counter()
        resp = await self._post(ids, body, start)
        ack = await self._ack_of(resp, ids, start)
        if ack is not None:
            await self._settle(ack, ids, start, resp.status_code)

    async def _readable(self, rows: list[StoredFiring]) -> list[AlertFiring]:
        """The firings that still parse; one that does not can never be sent, so it is marked dead."""
        firings: list[AlertFiring] = []
        unreadable: list[tuple[str, str, bool]] = []
        for row in rows:
            try:
                firings.append(AlertFiring.model_validate_json(row.body))
            except ValidationError as exc:
                unreadable.append(
                    (row.firing_id, f"stored firing unreadable: {exc.errors()[0]['msg']}", True)
                )
        if unreadable:
            await self._note(unreadable)
        return firings

    async def _post(self, ids: list[str], body: str, start: float) -> httpx.Response:
        """The request; an unreachable cloud keeps the batch and backs off until the link is back."""
        try:
            resp = await self._http.post(FIRINGS_PATH, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            self._link.failed(error)
            await self._note([(i, error, False) for i in ids])
            self._log_batch(ids, start, None, error=error)
            raise Backoff(unreachable=True) from None
        self._link.succeeded()
        return resp

    async def _ack_of(self, resp: httpx.Response, ids: list[str], start: float) -> AlertFiringAck | None:
        """The cloud's ack; None when it refused the whole batch (now dead), Backoff when it may retry."""
        status = resp.status_code
        if 400 <= status < 500 and status not in _RETRY_STATUSES:
            error = f"cloud refused the batch {status}: {resp.text[:200]}"
            await self._note([(i, error, True) for i in ids])
            self._log_batch(ids, start, status, dead=len(ids), error=error)
            return None
        if not resp.is_success:
            error = f"cloud answered {status}: {resp.text[:200]}"
            await self._note([(i, error, False) for i in ids])
            self._log_batch(ids, start, status, error=error)
            raise Backoff(unreachable=False)
        try:
            return AlertFiringAck.model_validate_json(resp.content)
        except ValidationError:
            error = f"cloud answered {status} without a readable ack"
            await self._note([(i, error, False) for i in ids])
            self._log_batch(ids, start, status, error=error)
            raise Backoff(unreachable=False) from None

    async def _settle(self, ack: AlertFiringAck, ids: list[str], start: float, status: int) -> None:
        """Delete what the cloud recorded, mark what it refused dead, and retry what it did not name."""
        wanted = set(ids)
        recorded = [i for i in dict.fromkeys(ack.recorded) if i in wanted]
        done = set(recorded)
        refused = {r.firing_id: r.error for r in ack.refused if r.firing_id in wanted - done}
        missing = [i for i in ids if i not in done and i not in refused]
        if recorded:
            await self._store.run(lambda: self._store.firings_sent(recorded))
            self.last_sent_at = time.time()
        failures = [(i, f"refused by the cloud: {e[:200]}", True) for i, e in refused.items()]
        failures += [(i, "the cloud's ack did not name it", False) for i in missing]
        if failures:
            await self._note(failures)
        first = failures[0][1] if failures else None
        self._log_batch(ids, start, status, recorded=len(recorded), dead=len(refused), error=first)
        if missing:
            raise Backoff(unreachable=False)

    async def _note(self, failures: list[tuple[str, str, bool]]) -> None:
        await self._store.run(lambda: self._store.note_firing_failures(failures))
        self.last_error = failures[-1][1]
        self.last_error_at = time.time()

    def _log_batch(
        self,
        ids: list[str],
        start: float,
        status: int | None,
        *,
        recorded: int = 0,
        dead: int = 0,
        error: str | None = None,
    ) -> None:
        """One line per batch: what went, what the cloud said, and how long it took."""
        fields = {
            "firings": len(ids),
            "first_firing_id": ids[0],
            "status": status,
            "recorded": recorded,
            "dead": dead,
            "ms": round((time.perf_counter() - start) * 1e3, 1),
            "error": error,
        }
        if dead:
            log.error("alert firings refused by the cloud", extra={"fields": fields})
        elif error is not None:
            log.warning("alert firings not delivered; will retry", extra={"fields": fields})
        else:
            log.info("alert firings delivered", extra={"fields": fields})

    async def _refresh_depth(self) -> None:
        depth = await self._store.run(self._store.firing_depth)
        self._metrics.alert_firings_pending.set(depth.pending)
        self._metrics.alert_firings_dead.set(depth.dead)
