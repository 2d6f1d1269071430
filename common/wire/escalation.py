"""What the edge sends the cloud for each escalation (multipart: this JSON + the image bytes)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

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
