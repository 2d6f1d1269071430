"""Operator call for escalations the cloud refused: once the cause is fixed there (a detector
created, a conflicting query removed), `POST /outbox/redrive` sends the dead entries again. Operator scope (edge.api.auth)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from common.ids import is_image_query_id
from edge.api.deps import OPERATOR, StateDep
from edge.api.errors import BadRequestError

router = APIRouter(prefix="/outbox", tags=["outbox"])


class Redriven(BaseModel):
    redriven: int
    pending: int
    dead: int


@router.post("/redrive", response_model=Redriven, operation_id="redrive_outbox", dependencies=[OPERATOR])
async def redrive(
    state: StateDep,
    image_query_id: Annotated[
        str | None, Query(description="only this entry; all dead ones if absent")
    ] = None,
) -> Redriven:
    """Dead entries back to pending; the sender tries them at once. Their last error stays in the
    outbox until they are delivered or die again."""
    if image_query_id is not None and not is_image_query_id(image_query_id):
        raise BadRequestError("image_query_id must be iq_ followed by up to 100 of [A-Za-z0-9_-]")
    moved = await state.outbox.redrive(image_query_id)
    depth = await state.store.run(state.store.depth)
    return Redriven(redriven=moved, pending=depth.pending, dead=depth.dead)
