"""Ground-truth answers from people: `add_label` from the device API, and (through the same
`apply_human_answer`) the review queue. A human answer resolves the query with confidence 1.0, since
the SDK's `wait` only stops on a truthy confidence."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.detectors import UNCLEAR, get_detector, iso_utc
from cloud.app.core.image_queries import get_image_query
from cloud.app.core.review_items import close_open_item
from cloud.app.db.models import Detector as DetectorRow
from cloud.app.db.models import ImageQuery as ImageQueryRow
from cloud.app.db.models import Label, LabelSource
from cloud.app.errors import BadRequestError
from cloud.app.schemas.device import LabelCreate, LabelValue
from common.bundle import DetectorMode
from common.wire.device_api import RESULT_TYPE_BY_MODE, Result

# The SDK compares `source` only with STILL_PROCESSING; USER is Groundlight's name for a customer label.
CUSTOMER_RESULT_SOURCE = "USER"
HUMAN_RESULT_SOURCE = "HUMAN"


def allowed_answers(detector: DetectorRow) -> list[str]:
    return [*(str(label) for label in detector.labels), UNCLEAR]


def normalise_answer(detector: DetectorRow, raw: str) -> str:
    """The detector's labels plus UNCLEAR; YES/NO/UNCLEAR in any case. 400 for anything else."""
    answer = raw.strip()
    allowed = allowed_answers(detector)
    if answer not in allowed and answer.upper() in allowed and answer.upper() in ("YES", "NO", UNCLEAR):
        answer = answer.upper()
    if answer not in allowed:
        shown = ", ".join(allowed[:20]) + (", ..." if len(allowed) > 20 else "")
        raise BadRequestError(f"label {raw[:100]!r} is not an answer of this detector; use one of {shown}")
    return answer


def human_result(detector: DetectorRow, answer: str, source: str) -> Result:
    mode = DetectorMode(detector.mode)
    return Result(
        result_type=RESULT_TYPE_BY_MODE[mode],
        confidence=1.0,
        source=source,
        from_edge=False,
        label=answer,
        count=int(answer) if mode is DetectorMode.COUNT and answer.isdigit() else None,
    )


async def apply_human_answer(
    session: AsyncSession,
    image_query: ImageQueryRow,
    detector: DetectorRow,
    answer: str,
    label_source: LabelSource,
    result_source: str,
    user_id: str | None,
    review_item_id: int | None = None,
) -> Label:
    """Store the label, resolve the query with it and close its pending review item. The caller
    validated `answer` (normalise_answer) and commits."""
    closed = await close_open_item(session, image_query.id, answer, user_id)
    label = Label(
        image_query_id=image_query.id,
        detector_id=detector.id,
        label=answer,
        source=label_source.value,
        user_id=user_id,
        review_item_id=review_item_id if review_item_id is not None else closed,
        created_at=datetime.now(UTC),
    )
    session.add(label)
    image_query.result = human_result(detector, answer, result_source).model_dump(mode="json")
    image_query.done_processing = True
    await session.flush()
    return label


async def add_label(session: AsyncSession, principal: Principal, body: LabelCreate) -> LabelValue:
    image_query = await get_image_query(session, body.image_query_id)
    detector = await get_detector(session, image_query.detector_id)
    answer = normalise_answer(detector, str(body.label))
    label = await apply_human_answer(
        session,
        image_query,
        detector,
        answer,
        LabelSource.CUSTOMER,
        CUSTOMER_RESULT_SOURCE,
        principal.user_id,
    )
    await session.commit()
    return LabelValue(
        confidence=None,
        class_name=answer,
        annotations_requested=[],
        created_at=iso_utc(label.created_at),
        detector_id=None,
        source=LabelSource.CUSTOMER.value,
        text=None,
        rois=body.rois,
    )
