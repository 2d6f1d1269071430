"""The worker's tick and the loop around it.

`tick(state)` runs every step once and is what tests call; `run(state)` ticks every `worker_poll_s`
until `state.stop` is set (SIGTERM or SIGINT in `main`). A step that fails is logged and the next
ones still run: a broken export must not hold up lease expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore, make_blob_store
from cloud.app.core import ops_notifications, webhook_delivery
from cloud.app.core.training_jobs import requeue_expired_training_jobs
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.settings import CloudSettings
from cloud.worker.jobs import exports, leases, purge, retrain
from common.http import configure_logging

log = logging.getLogger("cloud.worker")

# At most this many exports per tick, so that lease expiry and retrain triggers keep their pace.
EXPORTS_PER_TICK = 3


@dataclass
class WorkerState:
    settings: CloudSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    owner: str = field(
        default_factory=lambda: f"worker-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    )
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Webhook receivers: one client, so connections to a receiver are kept alive between deliveries.
    http: httpx.AsyncClient = field(
        default_factory=lambda: httpx.AsyncClient(limits=httpx.Limits(max_connections=32))
    )


@dataclass
class TickReport:
    review_leases_released: int = 0
    training_requeued: int = 0
    training_cancelled: int = 0
    exports_requeued: int = 0
    training_jobs_created: list[str] = field(default_factory=list)
    exports_built: list[str] = field(default_factory=list)
    detectors_purged: list[str] = field(default_factory=list)
    notifications: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    failed_steps: list[str] = field(default_factory=list)


def make_state(settings: CloudSettings) -> WorkerState:
    engine = make_engine(settings.async_database_url, pool_size=2)
    return WorkerState(
        settings=settings, engine=engine, sessions=make_sessionmaker(engine), blobs=make_blob_store(settings)
    )


async def close_state(state: WorkerState) -> None:
    await state.http.aclose()
    await state.blobs.close()
    await state.engine.dispose()


def _action(message: str, **fields: Any) -> None:
    log.info(message, extra={"fields": fields})


async def expire_leases(state: WorkerState, report: TickReport) -> None:
    now = datetime.now(UTC)
    async with state.sessions() as session:
        report.review_leases_released = await leases.release_expired_review_leases(session, now)
        report.training_requeued, report.training_cancelled = await requeue_expired_training_jobs(
            session, now
        )
        report.exports_requeued = await leases.requeue_expired_exports(session, now)
    if report.review_leases_released:
        _action("review leases expired: items back in the queue", count=report.review_leases_released)
    if report.training_requeued:
        _action("training leases expired: jobs requeued", count=report.training_requeued)
    if report.training_cancelled:
        _action("training leases expired after a cancel: jobs cancelled", count=report.training_cancelled)
    if report.exports_requeued:
        _action("export leases expired: jobs requeued", count=report.exports_requeued)


def cadence(settings: CloudSettings) -> retrain.Cadence:
    return retrain.Cadence(
        first_min_per_class=settings.retrain_first_min_per_class,
        min_labels=settings.retrain_min_labels,
        growth=settings.retrain_growth,
        interval_s=settings.retrain_interval_s,
    )


async def trigger_retraining(state: WorkerState, report: TickReport) -> None:
    settings = state.settings
    async with state.sessions() as session:
        outcomes = await retrain.queue_due_retrains(session, cadence(settings), datetime.now(UTC))
    for outcome in outcomes:
        due = outcome.due
        if outcome.job_id is None:
            _action("retrain already queued elsewhere", detector_id=due.detector_id, trigger=due.trigger)
            continue
        report.training_jobs_created.append(outcome.job_id)
        _action(
            "training job queued",
            job_id=outcome.job_id,
            detector_id=due.detector_id,
            trigger=due.trigger,
            new_labels=due.new_labels,
            labels=due.total_labels,
        )


async def build_exports(state: WorkerState, report: TickReport) -> None:
    scratch = state.settings.data_dir / "worker" / "exports"
    while len(report.exports_built) < EXPORTS_PER_TICK and not state.stop.is_set():
        job_id = await exports.claim_export(state.sessions, state.owner)
        if job_id is None:
            return
        # The builder logs the claim and the outcome (it records failures on the job itself).
        if await exports.build_export(state.sessions, state.blobs, job_id, state.owner, scratch):
            report.exports_built.append(job_id)


async def purge_deleted_detectors(
    state: WorkerState, report: TickReport, now: datetime | None = None
) -> None:
    """`now` is the clock the retention is measured against (tests pass one; the loop, none)."""
    retention_s = state.settings.deleted_retention_s
    moment = now or datetime.now(UTC)
    for purged in await purge.purge_deleted(state.sessions, state.blobs, retention_s, moment):
        report.detectors_purged.append(purged.detector_id)


async def scan_for_notifications(state: WorkerState, report: TickReport) -> None:
    settings, now = state.settings, datetime.now(UTC)
    async with state.sessions() as session:
        report.notifications += await ops_notifications.notify_waiting(
            session, now, settings.notify_waiting_repeat_s
        )
        report.notifications += await ops_notifications.notify_offline_edges(
            session, now, settings.notify_edge_offline_s
        )
        report.notifications += await ops_notifications.notify_failed_jobs(session, now)
    if report.notifications:
        _action("notifications recorded", count=report.notifications)


def retry_policy(settings: CloudSettings) -> webhook_delivery.Retry:
    return webhook_delivery.Retry(
        base_s=settings.webhook_retry_base_s,
        max_s=settings.webhook_retry_max_s,
        max_attempts=settings.webhook_max_attempts,
        timeout_s=settings.webhook_timeout_s,
    )


async def deliver_webhooks(state: WorkerState, report: TickReport) -> None:
    """Rounds of due deliveries until none is due (or the worker stops); each round's sends overlap."""
    retry = retry_policy(state.settings)
    while not state.stop.is_set():
        counts = await webhook_delivery.deliver_due(state.sessions, state.http, state.owner, retry)
        if not counts:
            return
        for outcome, n in counts.items():
            report.deliveries[outcome] = report.deliveries.get(outcome, 0) + n


STEPS = (
    ("leases", expire_leases),
    ("retrain", trigger_retraining),
    ("exports", build_exports),
    ("purge", purge_deleted_detectors),
    ("notify", scan_for_notifications),
    ("webhooks", deliver_webhooks),
)


async def tick(state: WorkerState) -> TickReport:
    report = TickReport()
    for name, step in STEPS:
        try:
            await step(state, report)
        except Exception:  # logged with its traceback; the other steps and the next tick go on
            report.failed_steps.append(name)
            log.exception("worker step failed", extra={"fields": {"step": name}})
    return report


async def run(state: WorkerState) -> None:
    settings = state.settings
    _action(
        "worker started",
        owner=state.owner,
        poll_s=settings.worker_poll_s,
        retrain_first_min_per_class=settings.retrain_first_min_per_class,
        retrain_min_labels=settings.retrain_min_labels,
        retrain_growth=settings.retrain_growth,
        retrain_interval_s=settings.retrain_interval_s,
        deleted_retention_s=settings.deleted_retention_s,
    )
    while not state.stop.is_set():
        await tick(state)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stop.wait(), timeout=settings.worker_poll_s)
    _action("worker stopped", owner=state.owner)


async def serve(settings: CloudSettings) -> None:
    state = make_state(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, state.stop.set)
    try:
        await run(state)
    finally:
        await close_state(state)


def main() -> None:
    settings = CloudSettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
