"""Label priors (docs/architecture.md §9): what a detector without a usable model answers, in the cloud and, through
`GET /edge-api/v1/detectors/{id}/prior`, on its edges.

The counts are those a dataset export would train on: per image query of the detector its latest
label that was not undone, from a reviewer (HUMAN) or the device API (CUSTOMER), counted by value;
UNCLEAR and answers that are no longer the detector's are not counted. `common.prior.label_prior`
turns them into the answer (the most frequent label, Laplace-smoothed, 1/K before any label).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import Detector, Label, LabelSource
from common.bundle import DetectorMode
from common.prior import PriorAnswer, label_prior
from common.wire.device_api import HumanReview, Result, ResultSource, make_result
from common.wire.priors import DetectorPrior

COUNTED_SOURCES = (LabelSource.HUMAN.value, LabelSource.CUSTOMER.value)


async def label_counts(session: AsyncSession, detector_ids: list[str]) -> dict[str, dict[str, int]]:
    """detector id -> {label value: image queries whose latest counted label it is}."""
    if not detector_ids:
        return {}
    ranked = (
        select(
            Label.detector_id,
            Label.label,
            func.row_number()
            .over(partition_by=Label.image_query_id, order_by=(Label.created_at.desc(), Label.id.desc()))
            .label("rank"),
        )
        .where(
            Label.detector_id.in_(detector_ids),
            Label.undone_at.is_(None),
            Label.source.in_(COUNTED_SOURCES),
        )
        .subquery()
    )
    rows = await session.execute(
        select(ranked.c.detector_id, ranked.c.label, func.count())
        .where(ranked.c.rank == 1)
        .group_by(ranked.c.detector_id, ranked.c.label)
    )
    out: dict[str, dict[str, int]] = {}
    for detector_id, label, n in rows:
        out.setdefault(detector_id, {})[label] = int(n)
    return out


def counts_in_key_order(detector: Detector, counts: dict[str, int]) -> list[int]:
    return [counts.get(str(label), 0) for label in detector.labels]


async def detector_prior(session: AsyncSession, detector: Detector) -> DetectorPrior:
    counts = (await label_counts(session, [detector.id])).get(detector.id, {})
    return DetectorPrior(
        detector_id=detector.id,
        name=detector.name,
        query=detector.query,
        mode=DetectorMode(detector.mode),
        labels=[str(label) for label in detector.labels],
        counts=counts_in_key_order(detector, counts),
        confidence_threshold=detector.confidence_threshold,
        human_review=HumanReview(detector.human_review),
        has_model=detector.production_version_id is not None,
    )


def prior_answer(prior: DetectorPrior) -> PriorAnswer:
    return label_prior(prior.labels, prior.counts)


def prior_result(prior: DetectorPrior) -> Result:
    """The answer as an image-query result: an algorithm's (never an edge's), the count for COUNT."""
    answer = prior_answer(prior)
    return make_result(prior.mode, answer.label, answer.confidence, ResultSource.ALGORITHM, from_edge=False)
