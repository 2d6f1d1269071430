"""How accurate a detector's edge is when it answers on its own (docs/architecture.md §3 step 5).

The edge escalates a sample of its confident answers as audits (`confident_audit_rate`); once a reviewer
answers one in the queue, the pair (edge answer, human answer) is one Bernoulli trial. We report, per
detector and per edge model version, the trials n, the correct ones k, k/n and the exact Clopper–Pearson
interval, which keeps its coverage for the small n that low audit rates give (a normal approximation
does not, least of all near 100 %).

What counts: audits whose review item stands answered by a reviewer (an undone answer reopens the item,
so it no longer counts), with an answer other than UNCLEAR, and whose edge answer is known: the review
queue keeps the query's result from just before the answer (`prior_result`), which for an audit is the
edge's own. COUNT detectors compare counts. The interval maths is here, in plain Python (the regularised
incomplete beta by its continued fraction, inverted by bisection), so the cloud needs no SciPy.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.detectors import UNCLEAR
from cloud.app.db.models import Detector, Escalation, ImageQuery, ReviewItem
from cloud.app.errors import NotFoundError
from cloud.app.schemas.edge_accuracy import AccuracyEstimate, EdgeAccuracyOut, VersionAccuracy
from common.bundle import DetectorMode
from common.clock import as_utc
from common.wire.escalation import EscalationReason

CONFIDENCE_LEVEL = 0.95
# The most recent answered audits read per detector; enough for any interval worth showing.
MAX_ROWS = 100_000

_esc = cast(Table, Escalation.__table__)
_ri = cast(Table, ReviewItem.__table__)
_iq = cast(Table, ImageQuery.__table__)
_det = cast(Table, Detector.__table__)
_AUDIT = literal_column(f"'{EscalationReason.AUDIT.value}'", String)
_ANSWERED = literal_column("'answered'", String)
_PENDING = literal_column("'pending'", String)

# -- exact binomial interval --------------------------------------------------------------------------------

_CF_MAX_ITERATIONS = 10_000
_CF_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITERATIONS + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _CF_EPS:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of Beta(a, b) at x (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast on this side of the mean; use the symmetry on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def beta_quantile(p: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = p, by bisection (the CDF is increasing), to about 1e-12."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2.0
        if regularized_beta(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def clopper_pearson(k: int, n: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float] | None:
    """Exact two-sided interval for a binomial proportion with k successes in n trials; None for n = 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    alpha = 1.0 - level
    low = 0.0 if k == 0 else beta_quantile(alpha / 2.0, k, n - k + 1)
    high = 1.0 if k == n else beta_quantile(1.0 - alpha / 2.0, k + 1, n - k)
    return low, high


def estimate(k: int, n: int, level: float = CONFIDENCE_LEVEL) -> AccuracyEstimate:
    interval = clopper_pearson(k, n, level)
    return AccuracyEstimate(
        n=n,
        correct=k,
        accuracy=round(k / n, 6) if n else None,
        interval_low=round(interval[0], 6) if interval else None,
        interval_high=round(interval[1], 6) if interval else None,
    )


# -- trials from answered audits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    model_version: str | None
    created_at: datetime
    correct: bool


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return None


def judge(mode: str, edge_result: dict[str, Any] | None, human_answer: str) -> bool | None:
    """Whether the edge's answer equals the reviewer's; None when there is no edge answer to judge."""
    if not edge_result or not edge_result.get("from_edge"):
        return None
    if mode == DetectorMode.COUNT.value:
        edge_count = _as_count(edge_result.get("count"))
        if edge_count is None:
            edge_count = _as_count(edge_result.get("label"))
        human_count = _as_count(human_answer)
        if edge_count is None or human_count is None:
            return None
        return edge_count == human_count
    label = edge_result.get("label")
    return None if label is None else str(label) == human_answer


def _summarise(
    detector_id: str, mode: str, trials: Sequence[Trial], pending: int, unclear: int
) -> EdgeAccuracyOut:
    versions: dict[str | None, list[Trial]] = {}
    for trial in trials:
        versions.setdefault(trial.model_version, []).append(trial)
    newest_first = sorted(versions.items(), key=lambda kv: max(t.created_at for t in kv[1]), reverse=True)
    return EdgeAccuracyOut(
        detector_id=detector_id,
        mode=mode,
        confidence_level=CONFIDENCE_LEVEL,
        overall=estimate(sum(t.correct for t in trials), len(trials)),
        by_model_version=[
            VersionAccuracy(
                model_version=version,
                **estimate(sum(t.correct for t in group), len(group)).model_dump(),
            )
            for version, group in newest_first
        ],
        awaiting_review=pending,
        unclear=unclear,
    )


def _trials(mode: str, rows: Iterable[Any]) -> tuple[list[Trial], int]:
    trials: list[Trial] = []
    unclear = 0
    for row in rows:
        if not row.prior_result or not row.prior_result.get("from_edge"):
            continue  # closed by a customer's label (no edge answer kept), or not the edge's query
        if row.answer == UNCLEAR:
            unclear += 1
            continue
        verdict = judge(mode, row.prior_result, str(row.answer))
        if verdict is None:
            continue
        version = (row.diagnostics or {}).get("model_version")
        trials.append(Trial(None if version is None else str(version), as_utc(row.created_at), verdict))
    return trials, unclear


async def edge_accuracy(session: AsyncSession, detector_id: str) -> EdgeAccuracyOut:
    """The edge's accuracy on this detector's answered audits (404 for an unknown detector)."""
    detector = (
        await session.execute(
            select(_det.c.id, _det.c.mode).where(_det.c.id == detector_id, _det.c.deleted_at.is_(None))
        )
    ).first()
    if detector is None:
        await session.commit()
        raise NotFoundError(f"detector {detector_id} not found")
    audits = _esc.c.detector_id == detector_id, _esc.c.reason == _AUDIT
    pending = (
        await session.execute(
            select(func.count())
            .select_from(_esc)
            .join(_ri, _ri.c.image_query_id == _esc.c.image_query_id)
            .where(*audits, _ri.c.status == _PENDING)
        )
    ).scalar_one()
    rows = (
        await session.execute(
            select(_ri.c.answer, _ri.c.prior_result, _iq.c.diagnostics, _iq.c.created_at)
            .select_from(_esc)
            .join(_ri, _ri.c.image_query_id == _esc.c.image_query_id)
            .join(_iq, _iq.c.id == _esc.c.image_query_id)
            .where(*audits, _ri.c.status == _ANSWERED, _ri.c.answer.is_not(None))
            .order_by(_ri.c.answered_at.desc())
            .limit(MAX_ROWS)
        )
    ).all()
    await session.commit()
    trials, unclear = _trials(detector.mode, rows)
    # Many trials and versions make a few bisections each: off the event loop.
    return await asyncio.to_thread(_summarise, detector.id, detector.mode, trials, int(pending), unclear)
