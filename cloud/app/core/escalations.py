"""Escalations from edges (docs/architecture.md §6): the query the edge answered (or could not), its image and why
it wants people to look. Idempotent on `image_query_id`, so the edge's outbox can resend after any
crash: every step is an insert that ignores the duplicate, the image is written only by the request
whose query insert won, and however many copies arrive at once there is one query, one escalation
and one review item. Audits are queued too: their answers measure the edge's accuracy later.

A resend is only a resend when it names the same detector and carries the same image (sha256) as
the query held under that id; anything else is a 409 that the edge keeps as a dead entry, never an
acknowledgement that would drop its image.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.core.detectors import get_detector
from cloud.app.core.image_queries import (
    check_decodes,
    get_image_query,
    image_key,
    insert_image_query,
    refuse_unless_repeat,
    sha256_of_image,
    uncertainty_of,
)
from cloud.app.core.review_items import enqueue_for_review, insert_ignoring_duplicates
from cloud.app.db.models import Escalation
from cloud.app.db.models import ImageQuery as ImageQueryRow
from cloud.app.errors import BadRequestError, CloudError, NotFoundError
from cloud.app.schemas.fields import check_json, check_text
from common.clock import as_utc
from common.error_detail import first_validation_error
from common.ids import is_image_query_id
from common.imaging import ImageError, ImageLimits, inspect_image
from common.validation import InvalidInputError, check_metadata
from common.wire.device_api import HumanReview, ResultSource
from common.wire.escalation import EscalationCreate, EscalationItemResult, EscalationReason

log = logging.getLogger("cloud.escalations")

MAX_EDGE_ID_CHARS = 100
MAX_PATIENCE_S = 3600.0
# An edge clock this far ahead of ours is wrong; such a query is dated when it arrives.
_MAX_CLOCK_SKEW = timedelta(days=1)
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_HUMAN_SOURCES = {"USER", ResultSource.HUMAN.value}


@dataclass(frozen=True)
class Received:
    image_query_id: str
    created: bool


def _check_consistent(payload: EscalationCreate) -> None:
    if not is_image_query_id(payload.image_query_id):
        raise BadRequestError("image_query_id must be iq_ followed by up to 100 of [A-Za-z0-9_-]")
    if payload.image_query.id != payload.image_query_id:
        raise BadRequestError("image_query.id differs from image_query_id")
    if payload.image_query.detector_id != payload.detector_id:
        raise BadRequestError("image_query.detector_id differs from detector_id")
    if not payload.edge_id or len(payload.edge_id) > MAX_EDGE_ID_CHARS:
        raise BadRequestError(f"edge_id must be 1 to {MAX_EDGE_ID_CHARS} characters")
    iq = payload.image_query
    if not 0 < iq.patience_time <= MAX_PATIENCE_S:
        raise BadRequestError(f"image_query.patience_time must lie in (0, {MAX_PATIENCE_S:g}]")
    if not 0 <= iq.confidence_threshold <= 1:
        raise BadRequestError("image_query.confidence_threshold must lie in [0, 1]")
    try:
        if iq.metadata is not None:
            check_metadata(iq.metadata, "image_query.metadata")
    except InvalidInputError as exc:
        raise BadRequestError(f"escalation is not valid: {exc}") from None
    try:
        check_json(iq.model_dump(mode="json", exclude={"result", "intellioptics"}))
        check_json(iq.result.model_dump(mode="json") if iq.result is not None else {})
        check_json(iq.intellioptics.model_dump(mode="json") if iq.intellioptics is not None else {})
        check_text(payload.edge_id)
        check_text(payload.created_at)
    except ValueError as exc:
        raise BadRequestError(f"escalation holds values that cannot be stored: {exc}") from None


def _created_at(text: str) -> datetime:
    """The edge's creation time of the query (an outbox may deliver it long after); our clock when it
    cannot be read or cannot be right."""
    now = datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        moment = as_utc(moment)
        if not _EARLIEST <= moment <= now + _MAX_CLOCK_SKEW:
            return now
    except (ValueError, OverflowError):
        return now
    return moment.astimezone(UTC)


def _refuse_unless_resend(held: ImageQueryRow, detector_id: str, image_sha256: str) -> None:
    """409 when the query held under this id is another detector's or has another image."""
    refuse_unless_repeat([held], detector_id, image_sha256, held.id)


async def receive_escalation(
    session: AsyncSession, blobs: BlobStore, limits: ImageLimits, payload: EscalationCreate, image: bytes
) -> Received:
    """400/413/415 for a malformed entry (the edge dead-letters it), 404 for an unknown detector,
    409 when the id is held for another detector or image (dead-lettered too). The image goes to
    `blobs` only when this call created the query."""
    _check_consistent(payload)
    info = inspect_image(image, limits)
    try:
        detector = await get_detector(session, payload.detector_id)
    except NotFoundError:
        raise NotFoundError(
            f"detector {payload.detector_id[:60]} is not known to this cloud; create it here before its edges escalate"
        ) from None
    image_sha256 = await sha256_of_image(image)
    existing = await session.get(ImageQueryRow, payload.image_query_id)
    if existing is not None:
        _refuse_unless_resend(existing, detector.id, image_sha256)
        if await session.get(Escalation, payload.image_query_id) is not None:
            return Received(payload.image_query_id, created=False)
    await asyncio.to_thread(check_decodes, image, limits, info)

    edge_iq = payload.image_query
    row = ImageQueryRow(
        id=payload.image_query_id,
        detector_id=detector.id,
        created_at=_created_at(edge_iq.created_at or payload.created_at),
        query=edge_iq.query or detector.query,
        result_type=edge_iq.result_type.value,
        result=edge_iq.result.model_dump(mode="json") if edge_iq.result is not None else None,
        patience_time=edge_iq.patience_time,
        confidence_threshold=edge_iq.confidence_threshold,
        metadata_=edge_iq.metadata,
        # Final only when the edge already gave its answer as final (audits, always_return_edge_prediction).
        done_processing=edge_iq.done_processing,
        human_review=(
            HumanReview.ALWAYS.value
            if payload.reason is EscalationReason.HUMAN_REVIEW_ALWAYS
            else HumanReview.DEFAULT.value
        ),
        diagnostics=edge_iq.intellioptics.model_dump(mode="json") if edge_iq.intellioptics else None,
        # The edge model's boxes, as the edge answered them (never refused: the edge already did).
        rois=[roi.model_dump(mode="json") for roi in edge_iq.rois] if edge_iq.rois is not None else None,
        image_key=image_key(detector.id, payload.image_query_id, info.format),
        image_content_type=info.content_type,
        origin="edge",
        edge_id=payload.edge_id,
        request_id=None,
        image_sha256=image_sha256,
    )
    query_created = await insert_image_query(session, row)
    if query_created:
        await blobs.put(row.image_key, image, info.content_type)
        target = row
    else:
        # Another copy of this escalation won, or the query reached the cloud first through the
        # gateway's fallback: keep that query and its image, if it is this one.
        target = await get_image_query(session, payload.image_query_id)
        _refuse_unless_resend(target, detector.id, image_sha256)
    escalation_created = (
        await session.execute(
            insert_ignoring_duplicates(
                session,
                Escalation,
                {
                    "image_query_id": payload.image_query_id,
                    "detector_id": detector.id,
                    "edge_id": payload.edge_id,
                    "reason": payload.reason.value,
                    "edge_created_at": payload.created_at[:40],
                    "received_at": datetime.now(UTC),
                },
                index_elements=["image_query_id"],
            ).returning(Escalation.image_query_id)
        )
    ).scalar_one_or_none() is not None
    answered_by_person = (target.result or {}).get("source") in _HUMAN_SOURCES
    if escalation_created and not answered_by_person:
        await enqueue_for_review(session, target, payload.reason.value, uncertainty_of(edge_iq.result))
    await session.commit()
    if escalation_created:
        log.info(
            "escalation received",
            extra={
                "fields": {
                    "image_query_id": payload.image_query_id,
                    "detector_id": detector.id,
                    "edge_id": payload.edge_id,
                    "reason": payload.reason.value,
                }
            },
        )
    return Received(payload.image_query_id, created=escalation_created)


def parse_escalation(text: bytes | str) -> EscalationCreate:
    """400 naming the first field that is wrong."""
    try:
        return EscalationCreate.model_validate_json(text)
    except ValidationError as exc:
        raise BadRequestError(f"escalation is not valid: {first_validation_error(exc)}") from None


def _id_in(text: bytes | str) -> str | None:
    """The entry's image query id where its JSON has one, so a refused entry can still be named."""
    try:
        value = json.loads(text).get("image_query_id")
    except (ValueError, AttributeError):
        return None
    return value[:60] if isinstance(value, str) else None


async def receive_escalations(
    session: AsyncSession,
    blobs: BlobStore,
    limits: ImageLimits,
    entries: list[tuple[bytes | str, bytes | Exception]],
) -> list[EscalationItemResult]:
    """A batch, entry by entry as `receive_escalation` takes one (each commits on its own): an entry the
    client got wrong gets its 4xx in its result and the rest go on; anything else (the database away)
    fails the request, and the edge sends the whole batch again, which the cloud recognises."""
    results: list[EscalationItemResult] = []
    for index, (text, image) in enumerate(entries):
        try:
            if isinstance(image, Exception):
                raise image
            received = await receive_escalation(session, blobs, limits, parse_escalation(text), image)
        except (CloudError, ImageError) as exc:
            await session.rollback()
            results.append(
                EscalationItemResult(
                    index=index, image_query_id=_id_in(text), status=exc.status, detail=str(exc)[:500]
                )
            )
            continue
        results.append(
            EscalationItemResult(
                index=index,
                image_query_id=received.image_query_id,
                status=201 if received.created else 200,
                created=received.created,
            )
        )
    return results
