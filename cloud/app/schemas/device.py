"""Bodies of the cloud's device API that the edge does not share: detector creation and update,
labels, account usage, and the escalation acknowledgement (docs/wire.md §5, §8)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cloud.app.schemas.fields import RoisIn, StorableJson, StorableStr
from common.validation import MAX_NAME_CHARS, check_name
from common.wire.device_api import HumanReview, Roi

# common.validation's name rule: stored trimmed, so a lookup by the trimmed name finds it.
DetectorName = Annotated[str, AfterValidator(check_name)]


class DetectorCreationInput(BaseModel):
    """What `create_detector` sends. Absent keys default as docs/wire.md §5 says (0.9, 30 s, BINARY)."""

    model_config = ConfigDict(extra="ignore")

    name: DetectorName = Field(
        description=f"trimmed, then 1 to {MAX_NAME_CHARS} characters", examples=["door-closed"]
    )
    query: StorableStr = Field(min_length=1, max_length=1000, examples=["Is the door closed?"])
    group_name: StorableStr | None = Field(default=None, max_length=200)
    confidence_threshold: float = Field(default=0.9, ge=0, le=1)
    patience_time: float = Field(default=30.0, gt=0, le=3600)
    # The SDK sends these as null; a pipeline is chosen by training, not by the caller.
    pipeline_config: Any = None
    edge_pipeline_config: Any = None
    # URL-safe base64 of a JSON object (the SDK's form), or the object itself.
    metadata: str | StorableJson | None = Field(default=None)
    mode: StorableStr = Field(default="BINARY", examples=["BINARY", "MULTI_CLASS", "COUNT", "BOUNDING_BOX"])
    mode_configuration: StorableJson | None = Field(
        default=None,
        examples=[
            {"class_names": ["red", "green"]},
            {"class_name": "widget", "max_count": 5},
            {"class_name": "person", "max_num_bboxes": 10},
        ],
    )
    priming_group_id: str | None = None


class DetectorUpdate(BaseModel):
    """`PATCH /v1/detectors/{id}`: the SDK sends one key at a time."""

    model_config = ConfigDict(extra="forbid")

    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    patience_time: float | None = Field(default=None, gt=0, le=3600)
    status: Literal["ON", "OFF"] | None = None
    escalation_type: Literal["STANDARD"] | None = None
    # Ours (the admin pages): a new name (unique, like at creation) or wording of the question.
    name: DetectorName | None = Field(default=None, description="trimmed; unique among live detectors")
    query: StorableStr | None = Field(default=None, min_length=1, max_length=1000)
    human_review: HumanReview | None = Field(
        default=None, description="for queries that say DEFAULT: DEFAULT (by confidence), ALWAYS or NEVER"
    )


class LabelCreate(BaseModel):
    """`add_label`: the SDK turns an int label into a string; both are accepted."""

    model_config = ConfigDict(extra="ignore")

    label: StorableStr | int = Field(examples=["YES", "red", "3"])
    image_query_id: StorableStr = Field(min_length=1, max_length=120)
    rois: RoisIn = Field(
        default=None,
        description="Boxes, normalised 0..1; COUNT: one per counted object; BOUNDING_BOX: none for NO_OBJECTS",
    )


class LabelValue(BaseModel):
    """What `add_label` parses; `{}` would break it even though it throws the result away."""

    confidence: float | None = None
    class_name: str
    annotations_requested: list[str] = Field(default_factory=list)
    created_at: str
    detector_id: int | None = None
    source: str
    text: str | None = None
    rois: list[Roi] | None = None


class AccountMonthToDateInfo(BaseModel):
    iqs: int
    escalations: int
    active_detectors: int
    iqs_limit: int | None = None
    escalations_limit: int | None = None
    active_detectors_limit: int | None = None


class EscalationAck(BaseModel):
    """The edge drops its outbox entry on any 2xx; `created` is false for a retry we already hold."""

    image_query_id: str
    created: bool


def page_links(
    base_url: str, page: int, page_size: int, count: int, params: dict[str, str]
) -> tuple[str | None, str | None]:
    """Absolute `next` and `previous` URLs (the SDK rejects anything that is not a URL)."""

    def link(number: int) -> str:
        return f"{base_url}?{urlencode({**params, 'page': number, 'page_size': page_size})}"

    has_next = page * page_size < count
    return (link(page + 1) if has_next else None, link(page - 1) if page > 1 else None)
