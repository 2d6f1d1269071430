"""The cloud's view of each configured detector (common.wire.priors): its label counts, which a detector
without a model on this edge answers with (docs/architecture.md §9: source ALGORITHM, escalated, so a
person answers and it learns), and its current confidence threshold, which every answer uses unless the
request or the edge config sets one (edge.api.core.detectors), so an admin's change in the cloud reaches
edges that already have a model.

The cloud answers `GET /edge-api/v1/detectors/{id}/prior` (the edge's device token in `x-api-token`).
The edge keeps the last answer in memory and in its SQLite store, so a restart or an outage keeps it;
it is fresh for `ttl_s`.

A request never waits long for the cloud: with a prior at hand, even a stale one, it answers at once
and a refresh runs in the background; with none, a detector without a model waits at most `wait_s` for
the first fetch (one fetch per detector however many requests wait) and is answered 503 without one,
while one with a model never waits (`cloud_threshold`: the model's default until the fetch lands).
After a failed fetch no new one starts for `retry_s`. A 404 means the cloud does not know the
detector: its prior is forgotten. Priors are fetched in the background for every configured, enabled
detector as soon as an edge config names it, so `/edge-detector-readiness` reports a model-less one
ready within a moment and a served one answers at the cloud's threshold from its first query.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from common.edge_config import EdgeConfig
from common.prior import label_prior
from common.wire.priors import DetectorPrior
from edge.api.core.store import EdgeStore
from edge.api.escalation.cloud_link import CloudLink

log = logging.getLogger("edge.priors")

PRIOR_PATH = "/edge-api/v1/detectors/{detector_id}/prior"


@dataclass(frozen=True)
class KnownPrior:
    prior: DetectorPrior
    fetched_at: float  # wall clock, as persisted


class PriorBook:
    def __init__(
        self,
        store: EdgeStore,
        http: httpx.AsyncClient,
        link: CloudLink,
        api_token: str,
        *,
        ttl_s: float,
        wait_s: float,
        retry_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._http = http
        self._link = link
        self._headers = {"x-api-token": api_token} if api_token else {}
        self._ttl = ttl_s
        self._wait = wait_s
        self._retry = retry_s
        self._timeout = timeout_s
        self._clock = clock
        self._known: dict[str, KnownPrior] = {}
        self._inflight: dict[str, asyncio.Task[DetectorPrior | None]] = {}
        self._failed_at: dict[str, float] = {}  # monotonic
        self.last_error: dict[str, str] = {}

    async def load(self) -> None:
        """The priors the store kept (a restart keeps answering while the cloud is unreachable)."""
        rows = await self._store.run(self._store.load_priors)
        for detector_id, body, fetched_at in rows:
            try:
                prior = DetectorPrior.model_validate_json(body)
            except ValidationError:
                log.warning(
                    "stored prior is unreadable; ignored", extra={"fields": {"detector_id": detector_id}}
                )
                continue
            self._known[detector_id] = KnownPrior(prior, fetched_at)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- reads ---------------------------------------------------------------------------------------
    def known(self, detector_id: str) -> DetectorPrior | None:
        """The prior at hand (fresh or not); never waits."""
        known = self._known.get(detector_id)
        return known.prior if known is not None else None

    def cloud_threshold(self, detector_id: str) -> float | None:
        """The cloud's threshold for this detector as last fetched (None: never fetched); never waits.
        A missing or stale one is fetched in the background, for the requests after this one."""
        known = self._known.get(detector_id)
        if known is None or self._clock() - known.fetched_at >= self._ttl:
            self.refresh_soon(detector_id)
        return known.prior.confidence_threshold if known is not None else None

    async def lookup(self, detector_id: str) -> DetectorPrior | None:
        """The prior to answer with now: the one at hand (refreshed in the background when stale), else
        the first fetch if it completes within `wait_s`; None when there is none."""
        known = self._known.get(detector_id)
        if known is not None:
            if self._clock() - known.fetched_at >= self._ttl:
                self.refresh_soon(detector_id)
            return known.prior
        task = self._fetch_task(detector_id)
        if task is None:
            return None
        done, _ = await asyncio.wait({task}, timeout=self._wait)
        return task.result() if done else None

    def snapshot(self, detector_id: str) -> dict[str, Any] | None:
        """For /status: the prior, the answer it gives, and how old it is."""
        known = self._known.get(detector_id)
        if known is None:
            return None
        answer = label_prior(known.prior.labels, known.prior.counts)
        return {
            "labels": known.prior.labels,
            "counts": known.prior.counts,
            "label": answer.label,
            "confidence": round(answer.confidence, 6),
            "confidence_threshold": known.prior.confidence_threshold,
            "fetched_at": known.fetched_at,
            "age_s": round(max(0.0, self._clock() - known.fetched_at), 1),
            "last_error": self.last_error.get(detector_id),
        }

    # -- fetching ------------------------------------------------------------------------------------
    def refresh_soon(self, detector_id: str) -> None:
        """Start a fetch in the background unless one is under way or one failed just now."""
        self._fetch_task(detector_id)

    def prefetch(self, detector_ids: Iterable[str]) -> None:
        """Fetch the priors that are missing or stale, in the background."""
        now = self._clock()
        for detector_id in detector_ids:
            known = self._known.get(detector_id)
            if known is None or now - known.fetched_at >= self._ttl:
                self.refresh_soon(detector_id)

    def prefetch_configured(self, config: EdgeConfig) -> None:
        """In the background: the priors of every configured, enabled detector, with a model here or
        not (the ones with a model need the cloud's threshold)."""
        self.prefetch(d.detector_id for d in config.detectors if config.inference_config(d).enabled)

    def _fetch_task(self, detector_id: str) -> asyncio.Task[DetectorPrior | None] | None:
        task = self._inflight.get(detector_id)
        if task is not None:
            return task
        failed_at = self._failed_at.get(detector_id)
        if failed_at is not None and time.monotonic() - failed_at < self._retry:
            return None
        task = asyncio.create_task(self._fetch(detector_id), name=f"prior-{detector_id}")
        self._inflight[detector_id] = task
        task.add_done_callback(lambda _: self._inflight.pop(detector_id, None))
        return task

    async def _fetch(self, detector_id: str) -> DetectorPrior | None:
        """The cloud's prior, kept in memory and on disk; None when there is none. Never raises."""
        try:
            return await self._ask_cloud(detector_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not break the answers that wait on it
            log.exception("prior fetch crashed", extra={"fields": {"detector_id": detector_id}})
            self._failed(detector_id, f"{type(exc).__name__}: {exc}")
            return None

    async def _ask_cloud(self, detector_id: str) -> DetectorPrior | None:
        path = PRIOR_PATH.format(detector_id=quote(detector_id, safe=""))
        try:
            resp = await self._http.get(path, headers=self._headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            self._link.failed(error)
            self._failed(detector_id, f"cloud unreachable ({error})")
            return None
        self._link.succeeded()
        if resp.status_code == 404:
            self._failed(detector_id, "the cloud does not know this detector")
            if self._known.pop(detector_id, None) is not None:
                await self._persist(lambda: self._store.forget_prior(detector_id))
            return None
        if resp.status_code != 200:
            self._failed(detector_id, f"cloud answered {resp.status_code}: {resp.text[:200]}")
            return None
        try:
            prior = DetectorPrior.model_validate_json(resp.content)
        except ValidationError as exc:
            self._failed(detector_id, f"malformed prior: {exc.errors()[0]['msg']}")
            return None
        if prior.detector_id != detector_id:
            self._failed(detector_id, f"the cloud answered for {prior.detector_id}")
            return None
        fetched_at = self._clock()
        self._known[detector_id] = KnownPrior(prior, fetched_at)
        self._failed_at.pop(detector_id, None)
        self.last_error.pop(detector_id, None)
        body = prior.model_dump_json()
        await self._persist(lambda: self._store.save_prior(detector_id, body, fetched_at))
        return prior

    async def _persist(self, write: Callable[[], None]) -> None:
        try:
            await self._store.run(write)
        except sqlite3.Error as exc:  # memory still has it; the next fetch writes again
            log.warning("prior not persisted", extra={"fields": {"error": str(exc)}})

    def _failed(self, detector_id: str, error: str) -> None:
        self._failed_at[detector_id] = time.monotonic()
        if self.last_error.get(detector_id) != error:
            log.warning("prior not fetched", extra={"fields": {"detector_id": detector_id, "error": error}})
        self.last_error[detector_id] = error
