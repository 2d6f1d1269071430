"""Image queries posted to the cloud: validate, answer with the production model when there is one
(with the detector's label prior when there is none, so a new detector answers at once), queue for
people when the answer is not good enough or came from the prior, and serve them back.

Idempotent on the client's `image_query_id` and on its `X-Request-Id` (kept whole, or hashed whole:
common.validation.idempotency_key): the row is inserted with ON CONFLICT DO NOTHING and read back, so
concurrent retries make exactly one query, and the image is written only by the request whose insert
won. A repeat must name the same detector and carry the same image (sha256) as the first; anything
else under either key is a 409, never the first query's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore
from cloud.app.core import alert_rules, model_answers, priors
from cloud.app.core.detectors import get_detector, iso_utc
from cloud.app.core.model_answers import ProductionModels
from cloud.app.core.review_items import enqueue_for_review, insert_ignoring_duplicates
from cloud.app.db.models import Detector as DetectorRow
from cloud.app.db.models import Escalation
from cloud.app.db.models import ImageQuery as ImageQueryRow
from cloud.app.errors import BadRequestError, ConflictError, NotFoundError
from cloud.app.schemas.device import AccountMonthToDateInfo
from cloud.app.settings import CloudSettings
from common.alerts import is_confident
from common.bundle import DetectorMode
from common.ids import is_image_query_id, new_image_query_id
from common.imaging import ImageFormat, ImageInfo, ImageLimits, decode_image, inspect_image
from common.params import SubmitParams, with_detector_policy
from common.runtime import Prediction
from common.validation import (
    EarlierQuery,
    InvalidInputError,
    check_metadata,
    idempotency_key,
    image_digest,
    repeat_conflict,
)
from common.wire.device_api import (
    RESULT_TYPE_BY_MODE,
    EdgeDiagnostics,
    HumanReview,
    ImageQuery,
    Result,
    ResultSource,
    ResultType,
    Roi,
    make_result,
)
from common.wire.escalation import EscalationReason

log = logging.getLogger("cloud.image_queries")

# Larger images are hashed off the event loop.
_INLINE_HASH_BYTES = 1 << 20
_EXTENSIONS = {
    ImageFormat.JPEG: "jpg",
    ImageFormat.PNG: "png",
    ImageFormat.BMP: "bmp",
    ImageFormat.WEBP: "webp",
}


@dataclass(frozen=True)
class Submitted:
    image_query: ImageQuery
    created: bool
    server_timing: str = ""
    # want_async: the model's answer is computed after the response (answer_in_background).
    answer_later: bool = False


def image_limits(settings: CloudSettings) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes)


def image_key(detector_id: str, image_query_id: str, fmt: ImageFormat) -> str:
    return f"images/{detector_id}/{image_query_id}.{_EXTENSIONS[fmt]}"


def uncertainty_of(result: Result | None) -> float:
    """1 - confidence: reviewers see the least certain answers first; no answer at all is 1."""
    if result is None or result.confidence is None:
        return 1.0
    return 1.0 - result.confidence


def review_reason(
    params: SubmitParams, result: Result | None, threshold: float, from_prior: bool = False
) -> EscalationReason | None:
    """Why a query goes to people, or None when the model's answer stands (human_review=NEVER: never).
    A label prior's answer never stands alone: whatever its confidence, a person answers (no_model)."""
    if params.human_review is HumanReview.NEVER:
        return None
    if params.human_review is HumanReview.ALWAYS:
        return EscalationReason.HUMAN_REVIEW_ALWAYS
    if params.want_async:
        return EscalationReason.WANT_ASYNC
    if result is None or from_prior:
        return EscalationReason.NO_MODEL
    if result.confidence is None or result.confidence < threshold:
        return EscalationReason.LOW_CONFIDENCE
    return None


def model_result(detector: DetectorRow, prediction: Prediction) -> Result:
    return make_result(
        DetectorMode(detector.mode),
        prediction.label,
        prediction.confidence,
        ResultSource.ALGORITHM,
        from_edge=False,
        greater_than_max=prediction.greater_than_max,
    )


def rois_json(rois: list[Roi] | None) -> list[dict[str, Any]] | None:
    """Boxes as stored (labels.rois, image_queries.rois)."""
    return None if rois is None else [roi.model_dump(mode="json") for roi in rois]


def rois_from_json(raw: Any) -> list[Roi] | None:
    """Stored boxes back as Roi; a row that holds none, or nothing readable, gives None (a bad row
    must not break serving its query)."""
    if not isinstance(raw, list):
        return None
    try:
        return [Roi.model_validate(item) for item in raw]
    except ValidationError:
        log.warning("stored rois are not readable; served as none")
        return None


def model_rois(prediction: Prediction | None) -> list[dict[str, Any]] | None:
    """A detection head's boxes as stored in image_queries.rois (labelled with its class name);
    None for classifiers."""
    if prediction is None or prediction.boxes is None:
        return None
    label = prediction.class_name or "object"
    return rois_json(
        [Roi.from_box(label, box.score, box.left, box.top, box.right, box.bottom) for box in prediction.boxes]
    )


async def find_image_queries(
    session: AsyncSession, image_query_id: str | None, request_key: str | None
) -> list[ImageQueryRow]:
    """The queries holding this id or this idempotency key: none, one, or two."""
    keys = []
    if image_query_id is not None:
        keys.append(ImageQueryRow.id == image_query_id)
    if request_key is not None:
        keys.append(ImageQueryRow.request_id == request_key)
    if not keys:
        return []
    return list((await session.scalars(select(ImageQueryRow).where(or_(*keys)).limit(2))).all())


def refuse_unless_repeat(
    rows: list[ImageQueryRow], detector_id: str, image_sha256: str, image_query_id: str | None
) -> None:
    """409 unless every query sharing a key with this request is the one it repeats."""
    for row in rows:
        earlier = EarlierQuery(row.id, row.detector_id, row.image_sha256)
        why = repeat_conflict(
            earlier, detector_id=detector_id, image_sha256=image_sha256, image_query_id=image_query_id
        )
        if why is not None:
            raise ConflictError(why)


async def sha256_of_image(image: bytes) -> str:
    if len(image) > _INLINE_HASH_BYTES:
        return await asyncio.to_thread(image_digest, image)
    return image_digest(image)


async def submit_image_query(
    session: AsyncSession,
    blobs: BlobStore,
    models: ProductionModels,
    limits: ImageLimits,
    params: SubmitParams,
    image: bytes,
    request_id: str | None,
) -> Submitted:
    """Bad bytes are refused (400/413/415) before anything is stored or run; the image goes to `blobs`,
    the answer comes from the production model in `models`."""
    start = time.perf_counter()
    info = inspect_image(image, limits)
    if params.metadata is not None:
        try:
            check_metadata(params.metadata)
        except InvalidInputError as exc:
            raise BadRequestError(str(exc)) from None
    detector = await get_detector(session, params.detector_id)
    params = with_detector_policy(params, HumanReview(detector.human_review))
    request_key = idempotency_key(request_id)
    image_sha256 = await sha256_of_image(image)
    existing = await find_image_queries(session, params.image_query_id, request_key)
    refuse_unless_repeat(existing, detector.id, image_sha256, params.image_query_id)
    if existing:
        return Submitted(image_query_to_wire(existing[0]), created=False)

    threshold = (
        params.confidence_threshold
        if params.confidence_threshold is not None
        else detector.confidence_threshold
    )
    patience = params.patience_time if params.patience_time is not None else detector.patience_time
    prediction = None
    if not params.want_async:  # the documented async contract is `result: null` at submission
        prediction = await model_answers.predict(models, session, detector.id, image, limits, info)
    if prediction is None:
        # Nothing decoded the pixels yet; a reviewer must never be shown bytes that do not decode.
        await asyncio.to_thread(check_decodes, image, limits, info)
    result: Result | None = None
    if prediction is not None:
        result = model_result(detector, prediction)
    elif not params.want_async:
        result = priors.prior_result(await priors.detector_prior(session, detector))
    reason = review_reason(params, result, threshold, from_prior=prediction is None)
    total_ms = (time.perf_counter() - start) * 1e3
    diagnostics = _diagnostics(prediction, reason, total_ms)

    iq_id = params.image_query_id or new_image_query_id()
    row = ImageQueryRow(
        id=iq_id,
        detector_id=detector.id,
        created_at=datetime.now(UTC),
        query=detector.query,
        result_type=RESULT_TYPE_BY_MODE[DetectorMode(detector.mode)].value,
        result=result.model_dump(mode="json") if result is not None else None,
        patience_time=patience,
        confidence_threshold=threshold,
        metadata_=params.metadata,
        # want_async without review (human_review=NEVER) is done once the background answer lands.
        done_processing=reason is None and not params.want_async,
        human_review=params.human_review.value,
        diagnostics=diagnostics.model_dump(mode="json"),
        rois=model_rois(prediction),
        image_key=image_key(detector.id, iq_id, info.format),
        image_content_type=info.content_type,
        origin="cloud",
        edge_id=None,
        request_id=request_key,
        image_sha256=image_sha256,
    )
    inserted = await insert_image_query(session, row)
    if not inserted:
        await session.rollback()
        winners = await find_image_queries(session, params.image_query_id, request_key)
        if not winners:
            raise ConflictError("an image query with this id or request id is being created; retry")
        # The rollback expired `detector`; its id is the one asked for.
        refuse_unless_repeat(winners, params.detector_id, image_sha256, params.image_query_id)
        return Submitted(image_query_to_wire(winners[0]), created=False)
    await blobs.put(row.image_key, image, info.content_type)
    if reason is not None:
        await enqueue_for_review(session, row, reason, uncertainty_of(result))
    if (
        prediction is not None
        and result is not None
        and is_confident(prediction.confidence, prediction.in_domain, threshold)
    ):
        await alert_rules.observe_cloud_answer(
            session,
            detector,
            label=result.label or prediction.label,
            count=result.count,
            confidence=prediction.confidence,
            image_query_id=row.id,
        )
    await session.commit()
    timing = ", ".join(
        f"{name};dur={value:.3f}" for name, value in (("cloud", total_ms), *diagnostics.timings_ms.items())
    )
    return Submitted(
        image_query_to_wire(row), created=True, server_timing=timing, answer_later=params.want_async
    )


async def answer_in_background(
    sessions: async_sessionmaker[AsyncSession],
    models: ProductionModels,
    limits: ImageLimits,
    image_query_id: str,
    detector_id: str,
    image: bytes,
    info: ImageInfo | None,
) -> None:
    """After a want_async submission was answered `result: null`: add the model's answer (the label
    prior's without a model) so that `wait_for_ml_result` sees one. A person's answer that arrived
    first is never overwritten, and the query stays queued for review."""
    try:
        async with sessions() as session:
            detector = await session.get(DetectorRow, detector_id)
            row = await session.get(ImageQueryRow, image_query_id)
            if detector is None or detector.deleted_at is not None or row is None or row.done_processing:
                return
            prediction = await model_answers.predict(models, session, detector_id, image, limits, info)
            if prediction is not None:
                result = model_result(detector, prediction)
            else:
                result = priors.prior_result(await priors.detector_prior(session, detector))
            queued = row.human_review != HumanReview.NEVER.value
            diagnostics = _diagnostics(prediction, EscalationReason.WANT_ASYNC if queued else None, 0.0)
            diagnostics.timings_ms.pop("cloud_total", None)
            await session.execute(
                update(ImageQueryRow)
                .where(ImageQueryRow.id == image_query_id, ImageQueryRow.done_processing.is_(False))
                .values(
                    result=result.model_dump(mode="json"),
                    diagnostics=diagnostics.model_dump(mode="json"),
                    rois=model_rois(prediction),
                    done_processing=not queued,
                )
            )
            await session.commit()
    except Exception:  # nobody waits on this task: log, and the query still reaches a person
        log.exception("background model answer failed", extra={"fields": {"image_query_id": image_query_id}})


def check_decodes(image: bytes, limits: ImageLimits, info: ImageInfo) -> None:
    """A full decode (CPU: run it in a thread): bytes nobody can look at are refused, not stored."""
    decode_image(image, limits, info=info)


def _diagnostics(prediction: Prediction | None, reason: str | None, total_ms: float) -> EdgeDiagnostics:
    if prediction is None:
        return EdgeDiagnostics(escalated=reason is not None, escalation_reason=reason)
    return EdgeDiagnostics(
        raw_confidence=round(prediction.raw_confidence, 6),
        in_domain_score=round(prediction.in_domain, 6),
        out_of_domain=prediction.out_of_domain,
        model_version=prediction.model_version,
        escalated=reason is not None,
        escalation_reason=reason,
        timings_ms={**prediction.timings_ms, "cloud_total": round(total_ms, 3)},
    )


async def insert_image_query(session: AsyncSession, row: ImageQueryRow) -> bool:
    """Insert unless a query with the same id or request id exists; True when this call inserted.
    The statement waits for a concurrent insert of the same key to settle, so exactly one wins."""
    # None as SQL NULL (not JSON 'null'), so that `result IS NULL` means "no answer yet".
    values = {
        column.key: null() if (value := getattr(row, attr.key)) is None else value
        for attr in ImageQueryRow.__mapper__.column_attrs
        for column in attr.columns
    }
    stmt = insert_ignoring_duplicates(session, ImageQueryRow, values).returning(ImageQueryRow.id)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


def _live() -> ColumnElement[bool]:
    """Queries of detectors that are not deleted (a deleted detector's queries are hidden with it)."""
    return ImageQueryRow.detector_id.in_(select(DetectorRow.id).where(DetectorRow.deleted_at.is_(None)))


async def get_image_query(session: AsyncSession, image_query_id: str) -> ImageQueryRow:
    row = (
        (
            await session.execute(select(ImageQueryRow).where(ImageQueryRow.id == image_query_id, _live()))
        ).scalar_one_or_none()
        if is_image_query_id(image_query_id)
        else None
    )
    if row is None:
        raise NotFoundError(f"image query {image_query_id[:120]} not found")
    return row


async def list_image_queries(
    session: AsyncSession, page: int, page_size: int, detector_id: str | None = None
) -> tuple[list[ImageQueryRow], int]:
    """Newest first, optionally for one detector."""
    where = [_live()]
    if detector_id is not None:
        where.append(ImageQueryRow.detector_id == detector_id)
    count = (
        await session.execute(select(func.count()).select_from(ImageQueryRow).where(*where))
    ).scalar_one()
    rows = (
        await session.scalars(
            select(ImageQueryRow)
            .where(*where)
            .order_by(ImageQueryRow.created_at.desc(), ImageQueryRow.id.desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
    ).all()
    return list(rows), int(count)


async def get_image(session: AsyncSession, blobs: BlobStore, image_query_id: str) -> tuple[bytes, str]:
    row = await get_image_query(session, image_query_id)
    return await blobs.get(row.image_key), row.image_content_type


def image_query_to_wire(row: ImageQueryRow) -> ImageQuery:
    return ImageQuery(
        id=row.id,
        created_at=iso_utc(row.created_at),
        query=row.query,
        detector_id=row.detector_id,
        result_type=ResultType(row.result_type),
        result=Result.model_validate(row.result) if row.result else None,
        patience_time=row.patience_time,
        confidence_threshold=row.confidence_threshold,
        metadata=row.metadata_,
        rois=rois_from_json(row.rois),
        done_processing=row.done_processing,
        intellioptics=EdgeDiagnostics.model_validate(row.diagnostics) if row.diagnostics else None,
    )


async def month_to_date_usage(session: AsyncSession) -> AccountMonthToDateInfo:
    """Counts since the first of this month (UTC); this deployment sets no limits."""
    now = datetime.now(UTC)
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    iqs = (
        await session.execute(
            select(func.count()).select_from(ImageQueryRow).where(ImageQueryRow.created_at >= since)
        )
    ).scalar_one()
    escalations = (
        await session.execute(
            select(func.count()).select_from(Escalation).where(Escalation.received_at >= since)
        )
    ).scalar_one()
    active = (
        await session.execute(
            select(func.count())
            .select_from(DetectorRow)
            .where(DetectorRow.status == "ON", DetectorRow.deleted_at.is_(None))
        )
    ).scalar_one()
    return AccountMonthToDateInfo(iqs=int(iqs), escalations=int(escalations), active_detectors=int(active))
