"""What the edge sends the cloud for each escalation (multipart: this JSON + the image bytes), one per
request or many in one (`POST /api/v1/escalations/batch`, docs/architecture.md §6)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from common.wire.device_api import ImageQuery


class EscalationReason(StrEnum):
    LOW_CONFIDENCE = "low_confidence"
    OUT_OF_DOMAIN = "out_of_domain"
    WANT_ASYNC = "want_async"
    HUMAN_REVIEW_ALWAYS = "human_review_always"
    AUDIT = "audit"
    # The detector has no model yet: the query was answered with its label prior.
    NO_MODEL = "no_model"


class EscalationCreate(BaseModel):
    image_query_id: str
    detector_id: str
    reason: EscalationReason
    image_query: ImageQuery
    image_content_type: str
    edge_id: str
    created_at: str


# The most escalations one batch request may carry; the cloud refuses a larger one with 413.
MAX_BATCH_ESCALATIONS = 32


class EscalationItemResult(BaseModel):
    """The outcome of one entry of a batch, as its own request would have answered it."""

    index: int = Field(description="position of the entry in the request, from 0")
    image_query_id: str | None = Field(description="the entry's id, null when its JSON could not be read")
    status: int = Field(description="201 stored now, 200 already held, 4xx this entry is bad (kept as dead)")
    created: bool = False
    detail: str | None = Field(default=None, description="why a 4xx entry was refused")


class EscalationBatchAck(BaseModel):
    """200 for a batch that was read: every entry has its own result, in request order."""

    results: list[EscalationItemResult]
