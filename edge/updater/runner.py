"""The updater's schedule: the edge config, one poll loop per detector, and heartbeats to the cloud.

The edge config comes from edge-api (`GET /edge-config`, polled every `config_poll_s`), which owns it;
only detectors whose edge inference config is enabled are polled. The refresh rate is
UPDATER_REFRESH_RATE_S, or else the config's `global_config.refresh_rate`; a change wakes the loops so
they reschedule at once. While edge-api cannot be reached the loops keep the last config they got.
A detector that has no model on this edge yet is polled every `no_model_refresh_s` instead (5 s by
default), so the first version promoted in the cloud arrives within seconds; so is one whose last
version arrived less than `young_model_window_s` ago (10 min by default), so a detector that is still
learning gets each retrain at once; otherwise the refresh rate applies.

The heartbeat (`POST /api/v1/hubs/heartbeat`) reports the versions `current` names in the model root,
the shared backbones installed, edge-api's outbox depth, and the last errors and rejections. Its edge id is UPDATER_EDGE_ID or else
edge-api's own, so one edge never shows up as two hubs; until one of them is known no heartbeat is sent.

Stopping waits up to `shutdown_grace_s` for polls under way (a download, an install, a swap) to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from common.edge_config import EdgeConfig
from common.error_detail import first_validation_error
from common.wire.hub_heartbeat import (
    HeartbeatBackbone,
    HeartbeatDetector,
    HeartbeatRejection,
    HubHeartbeat,
    HubInfo,
    UpdaterInfo,
)
from common.wire.updater_status import (
    HeartbeatStatus,
    InstalledBackbone,
    PollError,
    UpdaterConfigStatus,
    UpdaterStatus,
)
from edge.updater.clients import EdgeApiClient, EdgeApiError, RegistryClient, RegistryError
from edge.updater.core import MAX_ERROR_CHARS, DetectorPoller, DetectorState, Outcome, next_delay
from edge.updater.installer import Installer
from edge.updater.metrics import UpdaterMetrics
from edge.updater.settings import UpdaterSettings

log = logging.getLogger("updater")

RECENT_ERRORS = 10
HEARTBEAT_DETECTORS = 20
HEARTBEAT_BACKBONES = 20


def poll_interval(
    state: DetectorState,
    refresh_s: float,
    no_model_refresh_s: float,
    young_model_window_s: float = 0.0,
    now: float | None = None,
) -> float:
    """The base wait before a detector's next poll: `no_model_refresh_s` while it has no model on this
    edge and the cloud had none either (or could not be asked), and for `young_model_window_s` after a
    new version was deployed here (a detector that is learning gets a version every few dozen labels;
    each is worth having within seconds, and a 304 costs the cloud next to nothing); else the refresh
    rate. Never slower than the refresh rate."""
    if state.has_no_model:
        return min(refresh_s, no_model_refresh_s)
    if young_model_window_s > 0 and state.deployed_at is not None:
        age = (time.time() if now is None else now) - state.deployed_at
        if age < young_model_window_s:
            return min(refresh_s, no_model_refresh_s)
    return refresh_s


@dataclass
class _Loop:
    state: DetectorState
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    removed: bool = False
    task: asyncio.Task[None] | None = None


class Updater:
    def __init__(
        self,
        settings: UpdaterSettings,
        poller: DetectorPoller,
        registry: RegistryClient,
        edge_api: EdgeApiClient,
        installer: Installer,
        metrics: UpdaterMetrics,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.poller = poller
        self.registry = registry
        self.edge_api = edge_api
        self.installer = installer
        self.metrics = metrics
        self._draw = draw
        self._loops: dict[str, _Loop] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.refresh_rate_s: float | None = settings.refresh_rate_s or None
        self.config_fetched_at: float | None = None
        self.config_error: str | None = None
        self.edge_api_edge_id: str | None = None
        self.outbox_depth: int | None = None
        self.outbox_dead: int | None = None
        self.outbox_oldest_s: float | None = None
        self.edge_api_error: str | None = None
        self.heartbeat_at: float | None = None
        self.heartbeat_error: str | None = None
        self.recent_errors: deque[PollError] = deque(maxlen=RECENT_ERRORS)
        self.started_at = time.time()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._config_loop(), name="updater-config"),
            asyncio.create_task(self._heartbeat_loop(), name="updater-heartbeat"),
        ]

    async def stop(self) -> None:
        """Let polls under way finish (up to the grace period), then cancel what is left."""
        self._stopping.set()
        for loop in self._loops.values():
            loop.wake.set()
        tasks = [*self._tasks, *(loop.task for loop in self._loops.values() if loop.task is not None)]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("updater stopped", extra={"fields": {"cancelled": len(pending)}})

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep, returning early when stopping (or when `wake` is set)."""
        events = [self._stopping] if wake is None else [self._stopping, wake]
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- edge config -------------------------------------------------------------------------------
    async def _config_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.refresh_config()
            except Exception:  # keep polling the config whatever one round ran into
                log.exception("edge config round crashed")
            await self._sleep(self.settings.config_poll_s)

    async def refresh_config(self) -> None:
        try:
            config = await self.edge_api.edge_config()
        except EdgeApiError as exc:
            if str(exc) != self.config_error:
                log.warning("edge config not fetched", extra={"fields": {"error": str(exc)}})
            self.config_error = str(exc)
            return
        self.config_error = None
        self.config_fetched_at = time.time()
        self.apply_config(config)

    def apply_config(self, config: EdgeConfig) -> None:
        """Start loops for newly configured detectors, stop removed ones, wake all on a new rate."""
        rate = self.settings.refresh_rate_s or config.global_config.refresh_rate
        rate_changed = rate != self.refresh_rate_s
        self.refresh_rate_s = rate
        wanted = [d.detector_id for d in config.detectors if config.inference_config(d).enabled]
        for detector_id in list(self._loops):
            if detector_id not in wanted:
                loop = self._loops.pop(detector_id)
                loop.removed = True
                loop.wake.set()
                with contextlib.suppress(KeyError):
                    self.metrics.failures.remove(detector_id)
                log.info("detector no longer polled", extra={"fields": {"detector_id": detector_id}})
        for detector_id in wanted:
            if detector_id in self._loops:
                if rate_changed:
                    self._loops[detector_id].wake.set()
                continue
            loop = _Loop(DetectorState(detector_id))
            loop.task = asyncio.create_task(self._detector_loop(loop), name=f"updater-{detector_id}")
            self._loops[detector_id] = loop
            log.info(
                "detector polled", extra={"fields": {"detector_id": detector_id, "refresh_rate_s": rate}}
            )

    # -- per detector ------------------------------------------------------------------------------
    async def _detector_loop(self, loop: _Loop) -> None:
        state = loop.state
        while not (loop.removed or self._stopping.is_set()):
            try:
                await self.poll(state)
            except Exception:  # a bug must not end this detector's updates: log, back off, go on
                log.exception("model poll crashed", extra={"fields": {"detector_id": state.detector_id}})
                state.failures += 1
            started = time.monotonic()
            draw = self._draw()
            while not (loop.removed or self._stopping.is_set()):
                rate = self.refresh_rate_s or self.settings.refresh_rate_s or 60.0
                base = poll_interval(
                    state, rate, self.settings.no_model_refresh_s, self.settings.young_model_window_s
                )
                delay = next_delay(
                    base, state.failures, self.settings.backoff_max_s, self.settings.jitter, draw
                )
                state.delay_s = delay
                remaining = started + delay - time.monotonic()
                state.next_poll_at = time.time() + max(0.0, remaining)
                if remaining <= 0:
                    break
                loop.wake.clear()
                await self._sleep(remaining, loop.wake)

    async def poll(self, state: DetectorState) -> Outcome:
        outcome = await self.poller.poll_once(state)
        det = state.detector_id
        self.metrics.polls.labels(det, outcome.value).inc()
        self.metrics.failures.labels(det).set(state.failures)
        if outcome is Outcome.DEPLOYED and state.deployed_from is not None:
            self.metrics.deploys.labels(det, state.deployed_from.value).inc()
        if outcome is Outcome.REJECTED:
            self.metrics.rejections.labels(det).inc()
        if outcome in (Outcome.ERROR, Outcome.REJECTED):
            self.recent_errors.append(
                PollError(at=round(time.time(), 3), detector_id=det, outcome=outcome, error=state.detail)
            )
        return outcome

    # -- heartbeat ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.heartbeat_once()
            except Exception:  # e.g. the model root unreadable: report next time, keep beating
                log.exception("heartbeat round crashed")
            await self._sleep(self.settings.heartbeat_interval_s)

    async def _ask_edge_api(self) -> None:
        try:
            facts = await self.edge_api.facts()
        except EdgeApiError as exc:
            self.edge_api_error = str(exc)
            return
        self.edge_api_error = None
        self.edge_api_edge_id = facts.edge_id
        self.outbox_depth = facts.outbox.pending
        self.outbox_dead = facts.outbox.dead
        self.outbox_oldest_s = facts.outbox.oldest_pending_age_s

    @property
    def edge_id(self) -> str | None:
        return self.settings.edge_id or self.edge_api_edge_id

    def heartbeat_body(
        self, deployed: dict[str, str], backbones: list[InstalledBackbone] | None = None
    ) -> HubHeartbeat | None:
        """None until the edge id is known. Raises ValidationError when the cloud would refuse it
        (an edge id it does not take, an info part over its size limit)."""
        edge_id = self.edge_id
        if edge_id is None:
            return None
        troubled = [
            loop.state
            for loop in self._loops.values()
            if loop.state.last_error is not None or loop.state.rejected is not None
        ][:HEARTBEAT_DETECTORS]
        updater = UpdaterInfo(
            refresh_rate_s=self.refresh_rate_s,
            detectors_polled=len(self._loops),
            config_error=self.config_error,
            edge_api_error=self.edge_api_error,
            outbox_depth_known=self.outbox_depth is not None,
            outbox_dead=self.outbox_dead,
            outbox_oldest_pending_age_s=self.outbox_oldest_s,
            detectors={
                s.detector_id: HeartbeatDetector(
                    outcome=s.outcome,
                    version=s.version,
                    consecutive_failures=s.failures,
                    last_error=(s.last_error or "")[:MAX_ERROR_CHARS] or None,
                    rejected=(
                        HeartbeatRejection(
                            version=s.rejected.version, reason=s.rejected.reason[:MAX_ERROR_CHARS]
                        )
                        if s.rejected
                        else None
                    ),
                )
                for s in troubled
            },
            recent_errors=list(self.recent_errors),
            backbones=[
                HeartbeatBackbone(sha256=b.sha256, id=b.id, bytes=b.bytes, used_by=len(b.used_by))
                for b in (backbones or [])[:HEARTBEAT_BACKBONES]
            ],
        )
        return HubHeartbeat(
            edge_id=edge_id,
            name=self.settings.edge_name or None,
            deployed_versions=deployed,
            outbox_depth=self.outbox_depth or 0,
            info=HubInfo(updater=updater).model_dump(mode="json"),
        )

    async def heartbeat_once(self) -> bool:
        await self._ask_edge_api()
        deployed = await asyncio.to_thread(self.installer.deployed_versions)
        backbones = await asyncio.to_thread(self.installer.installed_backbones)
        try:
            body = self.heartbeat_body(deployed, backbones)
        except ValidationError as exc:
            return self._heartbeat_failed(
                f"heartbeat not sent, the cloud would refuse its {first_validation_error(exc)}"
            )
        if body is None:
            self.heartbeat_error = "no edge id yet: edge-api has not answered and UPDATER_EDGE_ID is empty"
            self.metrics.heartbeats.labels("skipped").inc()
            return False
        try:
            await self.registry.heartbeat(body)
        except RegistryError as exc:
            return self._heartbeat_failed(str(exc))
        self.heartbeat_at = time.time()
        self.heartbeat_error = None
        self.metrics.heartbeats.labels("ok").inc()
        return True

    def _heartbeat_failed(self, error: str) -> bool:
        if error != self.heartbeat_error:
            log.warning("heartbeat failed", extra={"fields": {"error": error}})
        self.heartbeat_error = error
        self.metrics.heartbeats.labels("error").inc()
        return False

    # -- status ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.config_fetched_at is not None

    def snapshot(self, backbones: list[InstalledBackbone] | None = None) -> UpdaterStatus:
        """`backbones`: the model root's (Installer.installed_backbones), read off the event loop."""
        settings = self.settings
        return UpdaterStatus(
            uptime_s=round(time.time() - self.started_at, 1),
            edge_id=self.edge_id,
            cloud_url=str(self.registry.http.base_url),
            model_root=str(settings.model_root),
            refresh_rate_s=self.refresh_rate_s,
            refresh_rate_source=(
                "UPDATER_REFRESH_RATE_S"
                if settings.refresh_rate_s
                else "edge config global_config.refresh_rate"
            ),
            config=UpdaterConfigStatus(
                source=str(self.edge_api.http.base_url).rstrip("/") + "/edge-config",
                fetched_at=self.config_fetched_at,
                error=self.config_error,
            ),
            heartbeat=HeartbeatStatus(
                interval_s=settings.heartbeat_interval_s,
                last_at=self.heartbeat_at,
                error=self.heartbeat_error,
                outbox_depth=self.outbox_depth,
            ),
            no_model_refresh_s=settings.no_model_refresh_s,
            detectors=[loop.state.snapshot() for loop in self._loops.values()],
            backbones=backbones if backbones is not None else [],
            recent_errors=list(self.recent_errors),
        )
