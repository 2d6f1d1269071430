"""Ground-truth answers from people: `add_label` from the device API, and (through the same
`answer_rules` and `apply_human_answer`) the review queue. A human answer resolves the query with
confidence 1.0, since the SDK's `wait` only stops on a truthy confidence, and its boxes (if any)
become the query's `rois` and are kept with the label for training.

Boxes must agree with the answer: COUNT, as many as the count when boxes are given; BOUNDING_BOX,
none for NO_OBJECTS, 1 to max_num_bboxes for BOUNDING_BOX, any number for GREATER_THAN_MAX (nobody
has to draw them all); UNCLEAR takes none. BINARY and MULTI_CLASS answers may carry any boxes."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.detectors import UNCLEAR, get_detector, iso_utc
from cloud.app.core.image_queries import get_image_query, rois_json
from cloud.app.core.review_items import close_open_item
from cloud.app.db.models import Detector as DetectorRow
from cloud.app.db.models import ImageQuery as ImageQueryRow
from cloud.app.db.models import Label, LabelSource
from cloud.app.errors import BadRequestError
from cloud.app.schemas.device import LabelCreate, LabelValue
from common.bundle import DetectorMode
from common.wire.device_api import BOUNDING_BOX_LABEL, NO_OBJECTS, Result, Roi, make_result

# The SDK compares `source` only with STILL_PROCESSING; USER is Groundlight's name for a customer label.
CUSTOMER_RESULT_SOURCE = "USER"
HUMAN_RESULT_SOURCE = "HUMAN"


def allowed_answers(detector: DetectorRow) -> list[str]:
    return [*(str(label) for label in detector.labels), UNCLEAR]


def normalise_answer(detector: DetectorRow, raw: str) -> str:
    """The detector's labels plus UNCLEAR; YES/NO/UNCLEAR (and a BOUNDING_BOX detector's labels) in
    any case. 400 for anything else."""
    answer = raw.strip()
    allowed = allowed_answers(detector)
    any_case = ("YES", "NO", UNCLEAR) if detector.mode != DetectorMode.BOUNDING_BOX.value else allowed
    if answer not in allowed and answer.upper() in allowed and answer.upper() in any_case:
        answer = answer.upper()
    if answer not in allowed:
        shown = ", ".join(allowed[:20]) + (", ..." if len(allowed) > 20 else "")
        raise BadRequestError(f"label {raw[:100]!r} is not an answer of this detector; use one of {shown}")
    return answer


def max_boxes(detector: DetectorRow) -> int | None:
    """COUNT: max_count; BOUNDING_BOX: max_num_bboxes; other modes have no such limit."""
    config = detector.mode_configuration or {}
    key = {DetectorMode.COUNT.value: "max_count", DetectorMode.BOUNDING_BOX.value: "max_num_bboxes"}
    value = config.get(key.get(detector.mode, ""))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_answer_rois(detector: DetectorRow, answer: str, rois: list[Roi] | None) -> None:
    """400 unless the boxes agree with the answer (the rules in the module docstring)."""
    given = len(rois) if rois is not None else None
    if answer == UNCLEAR:
        if given:
            raise BadRequestError(f"an {UNCLEAR} answer takes no boxes; {given} were given")
        return
    if detector.mode == DetectorMode.COUNT.value and given is not None and given != int(answer):
        raise BadRequestError(
            f"the label says {answer} but {given} boxes were given; send one box per counted object"
        )
    if detector.mode == DetectorMode.BOUNDING_BOX.value:
        if answer == NO_OBJECTS and given:
            raise BadRequestError(f"{NO_OBJECTS} takes no boxes; {given} were given")
        if answer == BOUNDING_BOX_LABEL:
            limit = max_boxes(detector)
            if not given:
                raise BadRequestError(
                    f"{BOUNDING_BOX_LABEL} needs at least one box (else answer {NO_OBJECTS})"
                )
            if limit is not None and given > limit:
                raise BadRequestError(
                    f"{given} boxes are more than this detector's max_num_bboxes ({limit}); "
                    "answer GREATER_THAN_MAX"
                )


def answer_rules(detector: DetectorRow, raw_label: str, rois: list[Roi] | None) -> str:
    """The stored answer for a raw label and its boxes, or 400: one rule for both human paths."""
    answer = normalise_answer(detector, raw_label)
    check_answer_rois(detector, answer, rois)
    return answer


def human_result(detector: DetectorRow, answer: str, source: str) -> Result:
    return make_result(DetectorMode(detector.mode), answer, 1.0, source, from_edge=False)


async def apply_human_answer(
    session: AsyncSession,
    image_query: ImageQueryRow,
    detector: DetectorRow,
    answer: str,
    label_source: LabelSource,
    result_source: str,
    user_id: str | None,
    review_item_id: int | None = None,
    rois: list[Roi] | None = None,
) -> Label:
    """Store the label (with its boxes), resolve the query with both and close its pending review
    item. The caller validated `answer` and `rois` (answer_rules) and commits."""
    closed = await close_open_item(session, image_query.id, answer, user_id)
    label = Label(
        image_query_id=image_query.id,
        detector_id=detector.id,
        label=answer,
        source=label_source.value,
        user_id=user_id,
        review_item_id=review_item_id if review_item_id is not None else closed,
        created_at=datetime.now(UTC),
        rois=rois_json(rois),
    )
    session.add(label)
    image_query.result = human_result(detector, answer, result_source).model_dump(mode="json")
    image_query.rois = rois_json(rois)
    image_query.done_processing = True
    await session.flush()
    return label


async def add_label(session: AsyncSession, principal: Principal, body: LabelCreate) -> LabelValue:
    image_query = await get_image_query(session, body.image_query_id)
    detector = await get_detector(session, image_query.detector_id)
    answer = answer_rules(detector, str(body.label), body.rois)
    label = await apply_human_answer(
        session,
        image_query,
        detector,
        answer,
        LabelSource.CUSTOMER,
        CUSTOMER_RESULT_SOURCE,
        principal.user_id,
        rois=body.rois,
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
