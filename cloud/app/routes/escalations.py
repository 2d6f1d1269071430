"""`POST /api/v1/escalations`: what edges send from their outbox (multipart: `escalation` JSON and
`image` bytes). 2xx means held (the edge deletes its entry); 4xx means this entry is bad (the edge
keeps it as dead), 409 among them: its id is held here for another detector or with another image;
5xx means try again."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from cloud.app.core.escalations import receive_escalation
from cloud.app.deps import DeviceDep, SessionDep, StateDep
from cloud.app.errors import BadRequestError
from cloud.app.schemas.device import EscalationAck
from common.imaging import ImageTooLargeError
from common.wire.escalation import EscalationCreate

router = APIRouter(prefix="/api/v1/escalations", tags=["edge"])

_MAX_PAYLOAD_BYTES = 256 * 1024


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
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequestError("send multipart/form-data with the parts 'escalation' (JSON) and 'image'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > state.settings.max_image_bytes + _MAX_PAYLOAD_BYTES:
        raise ImageTooLargeError(
            f"request is {declared} bytes; the image limit is {state.settings.max_image_bytes}"
        )
    async with request.form(max_files=2, max_fields=2, max_part_size=_MAX_PAYLOAD_BYTES) as form:
        raw = form.get("escalation")
        image_part = form.get("image")
        if raw is None or image_part is None:
            raise BadRequestError("multipart parts 'escalation' (JSON) and 'image' are both required")
        text = await raw.read() if isinstance(raw, UploadFile) else raw
        if not isinstance(image_part, UploadFile):
            raise BadRequestError("the 'image' part must be a file")
        max_bytes = state.settings.max_image_bytes
        if image_part.size is not None and image_part.size > max_bytes:
            raise ImageTooLargeError(f"image is {image_part.size} bytes; the limit is {max_bytes} bytes")
        image = await image_part.read(max_bytes + 1)
        if len(image) > max_bytes:
            raise ImageTooLargeError(f"image is over the limit of {max_bytes} bytes")
    try:
        payload = EscalationCreate.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequestError(
            f"escalation is not valid: {where + ': ' if where else ''}{first.get('msg')}"
        ) from None
    received = await receive_escalation(state, session, payload, image)
    ack = EscalationAck(image_query_id=received.image_query_id, created=received.created)
    return Response(
        ack.model_dump_json(), status_code=201 if received.created else 200, media_type="application/json"
    )
