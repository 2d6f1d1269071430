"""Request and response bodies of the review API (`/api/v1/review`); only the cloud and its pages use them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from cloud.app.schemas.fields import RoisIn
from common.wire.device_api import Roi


class AnswerKey(BaseModel):
    label: str = Field(description="What is stored when this answer is given", examples=["YES"])
    key: str | None = Field(description="The keyboard key on the labeling page (none past the ninth)")


class EdgePrediction(BaseModel):
    """What the model (edge or cloud) answered before the query came to review."""

    label: str | None = None
    count: int | None = None
    confidence: float | None = None
    source: str | None = None
    from_edge: bool = False


class ClaimedItem(BaseModel):
    id: int
    image_query_id: str
    detector_id: str
    detector_name: str
    query: str = Field(description="The detector's question")
    mode: str = Field(description="BINARY, MULTI_CLASS, COUNT or BOUNDING_BOX", examples=["COUNT"])
    class_name: str | None = Field(
        default=None, description="COUNT and BOUNDING_BOX: what is counted or boxed", examples=["bolt"]
    )
    max_count: int | None = Field(
        default=None, description="COUNT: max_count; BOUNDING_BOX: max_num_bboxes; else null"
    )
    labels: list[str] = Field(description="The detector's labels; UNCLEAR is always accepted too")
    answers: list[AnswerKey] = Field(description="Every accepted answer with its key, UNCLEAR last")
    image_url: str
    prediction: EdgePrediction | None = None
    model_rois: list[Roi] | None = Field(
        default=None, description="The model's boxes (edge or cloud), normalised 0..1; a starting point"
    )
    in_domain_score: float | None = None
    out_of_domain: bool | None = None
    uncertainty: float
    reason: str = Field(description="Why it is here, as recorded (an EscalationReason value)")
    reason_text: str = Field(default="", description="The same, in words, with the numbers behind it")
    confidence_threshold: float | None = Field(
        default=None, description="The threshold the model's confidence was held against"
    )
    created_at: datetime = Field(description="When the image query was created")
    deadline: datetime = Field(description="Patience deadline: answer before this")
    lease_expires_at: datetime
    lease_s: float = Field(description="Lease length; heartbeat well before it runs out")


class AnswerIn(BaseModel):
    label: str | int = Field(description="One of the detector's labels, or UNCLEAR", examples=["YES"])
    rois: RoisIn = Field(
        default=None,
        description=(
            "The boxes the reviewer drew (normalised 0..1; x, y may be left out). COUNT: as many as the "
            "label says, when given; BOUNDING_BOX: none for NO_OBJECTS, at least one for BOUNDING_BOX; "
            "never with UNCLEAR"
        ),
    )


class AnswerOut(BaseModel):
    item_id: int
    image_query_id: str
    label: str
    label_id: int
    next: ClaimedItem | None = Field(
        default=None,
        description="With `?next=true`: the next item, claimed for you as `POST /claim` would (null when "
        "nothing is claimable)",
    )


class LeaseOut(BaseModel):
    item_id: int
    lease_expires_at: datetime


class UndoOut(BaseModel):
    item_id: int
    image_query_id: str
    label: str = Field(description="The answer that was undone")


class Neighbour(BaseModel):
    image_query_id: str
    label: str = Field(description="its standing label")
    similarity: float = Field(description="cosine similarity of the two embeddings, 1 = the same")
    image_url: str = Field(description="path of its image on this API (same credentials)")


class NeighboursOut(BaseModel):
    """The labelled images of the item's detector most like it, most similar first."""

    item_id: int
    available: bool = Field(description="false: nothing to compare with; `why` says what is missing")
    why: str | None = None
    backbone: str | None = Field(default=None, description="the embedding space: the production backbone")
    compared: int = Field(default=0, description="labelled images with an embedding that were compared")
    neighbours: list[Neighbour]


class SkippedItem(BaseModel):
    """An item you skipped that still waits for an answer (`DELETE .../skip` offers it to you again)."""

    item_id: int
    image_query_id: str
    detector_id: str
    detector_name: str
    query: str
    skipped_at: datetime


class QueueSummary(BaseModel):
    detector_id: str
    detector_name: str
    query: str
    mode: str
    pending: int = Field(description="Items waiting for an answer, leased or not")
    claimable: int = Field(
        description="Pending items you could claim now (no live lease, not skipped by you)"
    )
    answered_last_hour: int
    in_label_all: bool = Field(
        default=True,
        description='whether "Label all queues" offers its items to you (PUT /queues/{id}/label-all)',
    )


class ReviewerStats(BaseModel):
    user_id: str
    username: str
    answered: int
    items_per_hour: float = Field(description="Answers in the window divided by its length in hours")
    active_items_per_hour: float | None = Field(
        description="Answers per hour between this reviewer's first and last answer in the window"
    )
    lead_time_p50_s: float | None = Field(description="Image query creation to answer")
    lead_time_p95_s: float | None
    handle_time_p50_s: float | None = Field(description="Claim to answer")


class ReviewStatsOut(BaseModel):
    window_s: float
    answered: int
    items_per_hour: float
    lead_time_p50_s: float | None
    lead_time_p95_s: float | None
    reviewers: list[ReviewerStats]
    api_answered: int = Field(
        default=0, description="items closed through the API (device or trainer tokens): not reviewers' work"
    )


class LabelAllIn(BaseModel):
    included: bool = Field(description='false: "Label all queues" leaves this detector out for you')
