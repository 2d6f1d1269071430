"""What edges send from their outbox: `POST /api/v1/escalations` (multipart: an `escalation` JSON part and
an `image` part) and `POST /api/v1/escalations/batch` (up to MAX_BATCH_ESCALATIONS such pairs, in order,
answered one result per entry). For one entry, 2xx means held (the edge deletes its entry); 4xx means
this entry is bad (the edge keeps it as dead), 409 among them: its id is held here for another detector
or with another image; 5xx (for a batch: the whole request) means try again."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from cloud.app.core.escalations import parse_escalation, receive_escalation, receive_escalations
from cloud.app.core.image_queries import image_limits
from cloud.app.deps import CloudState, DeviceDep, SessionDep, StateDep
from cloud.app.errors import BadRequestError
from cloud.app.schemas.device import EscalationAck
from common.imaging import ImageTooLargeError
from common.wire.escalation import MAX_BATCH_ESCALATIONS, EscalationBatchAck

router = APIRouter(prefix="/api/v1/escalations", tags=["edge"])

_MAX_PAYLOAD_BYTES = 256 * 1024


def _refuse_unless_multipart(request: Request, state: CloudState, entries: int) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequestError("send multipart/form-data with the parts 'escalation' (JSON) and 'image'")
    declared = request.headers.get("content-length", "")
    limit = entries * (state.settings.max_image_bytes + _MAX_PAYLOAD_BYTES)
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooLargeError(
            f"request is {declared} bytes; the image limit is {state.settings.max_image_bytes} per escalation"
        )


async def _text_of(part: UploadFile | str) -> bytes | str:
    """The JSON as sent: bytes stay bytes, so invalid UTF-8 is the validator's 400, not replaced."""
    return await part.read() if isinstance(part, UploadFile) else part


async def _image_of(part: UploadFile | str, max_bytes: int) -> bytes:
    if not isinstance(part, UploadFile):
        raise BadRequestError("the 'image' part must be a file")
    if part.size is not None and part.size > max_bytes:
        raise ImageTooLargeError(f"image is {part.size} bytes; the limit is {max_bytes} bytes")
    image = await part.read(max_bytes + 1)
    if len(image) > max_bytes:
        raise ImageTooLargeError(f"image is over the limit of {max_bytes} bytes")
    return image


@router.post(
    "",
    response_model=EscalationAck,
    status_code=201,
    operation_id="create_escalation",
    responses={
        200: {"model": EscalationAck, "description": "already held (a retry)"},
        409: {"description": "this image query id is held for another detector or with another image"},
    },
)
async def create_escalation(
    request: Request, principal: DeviceDep, state: StateDep, session: SessionDep
) -> Response:
    """201 when this call stored the escalation, 200 when it was already here."""
    _refuse_unless_multipart(request, state, 1)
    async with request.form(max_files=2, max_fields=2, max_part_size=_MAX_PAYLOAD_BYTES) as form:
        raw = form.get("escalation")
        image_part = form.get("image")
        if raw is None or image_part is None:
            raise BadRequestError("multipart parts 'escalation' (JSON) and 'image' are both required")
        text = await _text_of(raw)
        image = await _image_of(image_part, state.settings.max_image_bytes)
    limits = image_limits(state.settings)
    received = await receive_escalation(session, state.blobs, limits, parse_escalation(text), image)
    ack = EscalationAck(image_query_id=received.image_query_id, created=received.created)
    return Response(
        ack.model_dump_json(), status_code=201 if received.created else 200, media_type="application/json"
    )


@router.post(
    "/batch",
    response_model=EscalationBatchAck,
    operation_id="create_escalations",
    responses={400: {"description": f"not pairs of parts, or more than {MAX_BATCH_ESCALATIONS} entries"}},
)
async def create_escalations(
    request: Request, principal: DeviceDep, state: StateDep, session: SessionDep
) -> EscalationBatchAck:
    """Many outbox entries in one request: `escalation` and `image` parts alternating, one pair per
    entry. Each entry is taken as its own request would be (and committed on its own); the answer lists
    every entry's status in order, so one bad entry never holds back the others."""
    _refuse_unless_multipart(request, state, MAX_BATCH_ESCALATIONS)
    # Starlette answers 400 to a request with more parts than this.
    most = MAX_BATCH_ESCALATIONS
    async with request.form(max_files=most, max_fields=most, max_part_size=_MAX_PAYLOAD_BYTES) as form:
        entries = await _entries(form, state.settings.max_image_bytes)
    limits = image_limits(state.settings)
    return EscalationBatchAck(results=await receive_escalations(session, state.blobs, limits, entries))


async def _entries(form: FormData, max_image_bytes: int) -> list[tuple[bytes | str, bytes | Exception]]:
    """(JSON text, image or why the image part is refused) per entry, in order."""
    texts = form.getlist("escalation")
    images = form.getlist("image")
    if not texts or len(texts) != len(images) or len(form.multi_items()) != len(texts) + len(images):
        raise BadRequestError(
            "send one 'escalation' (JSON) part and one 'image' part per entry, and no other parts"
        )
    out: list[tuple[bytes | str, bytes | Exception]] = []
    for raw, image_part in zip(texts, images, strict=True):
        image: bytes | Exception
        try:
            image = await _image_of(image_part, max_image_bytes)
        except (BadRequestError, ImageTooLargeError) as exc:
            image = exc
        out.append((await _text_of(raw), image))
    return out
