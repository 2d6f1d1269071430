"""What the review pages report. Reviewer throughput over a recent window: answers per hour per
reviewer, and lead time from the image query's creation to its answer (what a camera waiting on a person
experiences), p50 and p95. And one detector's overview: recent queries, label counts, model versions.

Percentiles are computed here rather than in SQL (SQLite has none); the window is bounded and so is
the number of rows read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import String, Table, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import Detector, ImageQuery, Label, ModelVersion, ReviewItem, Role, User
from cloud.app.errors import NotFoundError
from cloud.app.schemas.review import ReviewerStats, ReviewStatsOut
from common.clock import as_utc, utcnow

DEFAULT_WINDOW_S = 3600.0
MAX_ROWS = 100_000

_ri = cast(Table, ReviewItem.__table__)
_iq = cast(Table, ImageQuery.__table__)
_users = cast(Table, User.__table__)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


async def review_stats(session: AsyncSession, window_s: float = DEFAULT_WINDOW_S) -> ReviewStatsOut:
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    rows = (
        await session.execute(
            select(
                _ri.c.answered_by,
                _users.c.username,
                _ri.c.answered_at,
                _ri.c.claimed_at,
                _iq.c.created_at,
            )
            .join_from(_ri, _iq, _iq.c.id == _ri.c.image_query_id)
            .join(_users, _users.c.id == _ri.c.answered_by)
            .where(
                _ri.c.status == literal_column("'answered'", String),
                _ri.c.answered_at >= since,
                # People's answers only: an item closed by a device's add_label is no reviewer's work.
                _users.c.role.in_([Role.REVIEWER.value, Role.ADMIN.value]),
            )
            .order_by(_ri.c.answered_at.desc())
            .limit(MAX_ROWS)
        )
    ).all()
    api_answered = (
        await session.execute(
            select(func.count())
            .select_from(_ri)
            .join(_users, _users.c.id == _ri.c.answered_by)
            .where(
                _ri.c.status == literal_column("'answered'", String),
                _ri.c.answered_at >= since,
                _users.c.role.not_in([Role.REVIEWER.value, Role.ADMIN.value]),
            )
        )
    ).scalar_one()
    await session.commit()
    hours = window_s / 3600.0
    names: dict[str, str] = {}
    answered_at: dict[str, list[datetime]] = defaultdict(list)
    lead: dict[str, list[float]] = defaultdict(list)
    handle: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        names[r.answered_by] = r.username
        done = as_utc(r.answered_at)
        answered_at[r.answered_by].append(done)
        lead[r.answered_by].append(max(0.0, (done - as_utc(r.created_at)).total_seconds()))
        if r.claimed_at is not None:
            handle[r.answered_by].append(max(0.0, (done - as_utc(r.claimed_at)).total_seconds()))
    reviewers = []
    for user_id, times in answered_at.items():
        span_h = (max(times) - min(times)).total_seconds() / 3600.0
        reviewers.append(
            ReviewerStats(
                user_id=user_id,
                username=names[user_id],
                answered=len(times),
                items_per_hour=round(len(times) / hours, 2),
                # Below a minute of activity a rate says little; leave it out.
                active_items_per_hour=round(len(times) / span_h, 2) if span_h >= 1 / 60 else None,
                lead_time_p50_s=percentile(lead[user_id], 50),
                lead_time_p95_s=percentile(lead[user_id], 95),
                handle_time_p50_s=percentile(handle[user_id], 50),
            )
        )
    reviewers.sort(key=lambda s: (-s.answered, s.username))
    every_lead = [v for values in lead.values() for v in values]
    return ReviewStatsOut(
        window_s=window_s,
        answered=len(rows),
        items_per_hour=round(len(rows) / hours, 2),
        lead_time_p50_s=percentile(every_lead, 50),
        lead_time_p95_s=percentile(every_lead, 95),
        reviewers=reviewers,
        api_answered=api_answered,
    )


# -- one detector, as its page shows it ---------------------------------------------------------------------

_det = cast(Table, Detector.__table__)
_lab = cast(Table, Label.__table__)
_mv = cast(Table, ModelVersion.__table__)


@dataclass(frozen=True)
class RecentQuery:
    id: str
    created_at: datetime
    answer: str | None
    confidence: float | None
    source: str | None
    done_processing: bool
    origin: str


@dataclass(frozen=True)
class LabelCount:
    label: str
    human: int
    customer: int

    @property
    def total(self) -> int:
        return self.human + self.customer


@dataclass(frozen=True)
class VersionSummary:
    version: str
    status: str
    created_at: datetime
    promoted_at: datetime | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class DetectorOverview:
    id: str
    name: str
    query: str
    mode: str
    labels: list[str]
    confidence_threshold: float
    patience_time: float
    human_review: str
    pending: int
    recent: list[RecentQuery]
    label_counts: list[LabelCount]
    versions: list[VersionSummary]


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain numbers at the top level of a version's metrics (accuracy, ECE, ...), rounded."""
    return {
        key: round(float(value), 4)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


async def detector_overview(session: AsyncSession, detector_id: str, recent: int = 25) -> DetectorOverview:
    det = (
        await session.execute(select(_det).where(_det.c.id == detector_id, _det.c.deleted_at.is_(None)))
    ).first()
    if det is None:
        raise NotFoundError(f"detector {detector_id} not found")
    pending = (
        await session.execute(
            select(func.count())
            .select_from(_ri)
            .where(_ri.c.detector_id == detector_id, _ri.c.status == literal_column("'pending'", String))
        )
    ).scalar_one()
    queries = (
        await session.execute(
            select(_iq.c.id, _iq.c.created_at, _iq.c.result, _iq.c.done_processing, _iq.c.origin)
            .where(_iq.c.detector_id == detector_id)
            .order_by(_iq.c.created_at.desc())
            .limit(recent)
        )
    ).all()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"HUMAN": 0, "CUSTOMER": 0})
    for r in await session.execute(
        select(_lab.c.label, _lab.c.source, func.count().label("n"))
        .where(_lab.c.detector_id == detector_id, _lab.c.undone_at.is_(None))
        .group_by(_lab.c.label, _lab.c.source)
    ):
        counts[r.label][r.source] = counts[r.label].get(r.source, 0) + int(r.n)
    versions = (
        await session.execute(
            select(_mv.c.version, _mv.c.status, _mv.c.created_at, _mv.c.promoted_at, _mv.c.metrics)
            .where(_mv.c.detector_id == detector_id)
            .order_by(_mv.c.created_at.desc())
            .limit(20)
        )
    ).all()
    await session.commit()
    labels = [str(label) for label in det.labels]
    order = {label: i for i, label in enumerate(labels)}
    return DetectorOverview(
        id=det.id,
        name=det.name,
        query=det.query,
        mode=det.mode,
        labels=labels,
        confidence_threshold=det.confidence_threshold,
        patience_time=det.patience_time,
        human_review=det.human_review,
        pending=int(pending),
        recent=[_recent(q) for q in queries],
        label_counts=sorted(
            (LabelCount(label, c.get("HUMAN", 0), c.get("CUSTOMER", 0)) for label, c in counts.items()),
            key=lambda c: (order.get(c.label, len(order)), c.label),
        ),
        versions=[
            VersionSummary(
                version=v.version,
                status=v.status,
                created_at=as_utc(v.created_at),
                promoted_at=as_utc(v.promoted_at) if v.promoted_at else None,
                metrics=_headline_metrics(v.metrics or {}),
            )
            for v in versions
        ],
    )


def _recent(row: Any) -> RecentQuery:
    result: dict[str, Any] = row.result or {}
    answer = result.get("label")
    if result.get("result_type") == "counting" and result.get("count") is not None:
        answer = str(result["count"])
    return RecentQuery(
        id=row.id,
        created_at=as_utc(row.created_at),
        answer=answer,
        confidence=result.get("confidence"),
        source=result.get("source"),
        done_processing=bool(row.done_processing),
        origin=row.origin,
    )
