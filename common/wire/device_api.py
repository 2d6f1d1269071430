"""The Groundlight device API (SDK 1.3.x) as pydantic models: what cameras send and receive.

Field names and required keys follow docs/wire.md §8. Our own diagnostics travel in
`ImageQuery.intellioptics`, which the SDK ignores.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from common.bundle import DetectorMode


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ResultType(StrEnum):
    BINARY = "binary_classification"
    MULTI_CLASS = "multi_classification"
    COUNTING = "counting"
    BOUNDING_BOX = "bounding_box"


RESULT_TYPE_BY_MODE = {
    DetectorMode.BINARY: ResultType.BINARY,
    DetectorMode.MULTI_CLASS: ResultType.MULTI_CLASS,
    DetectorMode.COUNT: ResultType.COUNTING,
    DetectorMode.BOUNDING_BOX: ResultType.BOUNDING_BOX,
}


class ResultSource(StrEnum):
    ALGORITHM = "ALGORITHM"
    HUMAN = "HUMAN"
    STILL_PROCESSING = "STILL_PROCESSING"


class HumanReview(StrEnum):
    DEFAULT = "DEFAULT"
    ALWAYS = "ALWAYS"
    NEVER = "NEVER"


class Result(BaseModel):
    """One model for all result kinds; `result_type` is always sent so the SDK picks the right class."""

    model_config = ConfigDict(extra="allow")

    result_type: ResultType
    confidence: float | None = Field(default=None, ge=0, le=1)
    source: str = ResultSource.ALGORITHM
    from_edge: bool = False
    label: str | None = None
    count: int | None = None
    greater_than_max: bool | None = None

    @model_serializer(mode="wrap")
    def _drop_foreign_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Keep `confidence` even when null (the SDK reads it); drop unset kind-specific keys."""
        data: dict[str, Any] = handler(self)
        for key in ("label", "greater_than_max"):
            if data.get(key) is None:
                data.pop(key, None)
        if self.result_type is not ResultType.COUNTING:
            data.pop("count", None)
        return data


class BBoxGeometry(BaseModel):
    """A box in normalised image coordinates (0..1, origin top-left); `x`, `y` are its centre."""

    left: float
    top: float
    right: float
    bottom: float
    x: float
    y: float


class Roi(BaseModel):
    """One box: what a reviewer drew, what a customer sent with a label, or what a model found.

    The SDK requires every key (label, score and all six geometry values) when it parses one.
    """

    label: str
    score: float
    geometry: BBoxGeometry

    @classmethod
    def from_box(cls, label: str, score: float, left: float, top: float, right: float, bottom: float) -> Roi:
        return cls(
            label=label,
            score=score,
            geometry=BBoxGeometry(
                left=left, top=top, right=right, bottom=bottom, x=(left + right) / 2, y=(top + bottom) / 2
            ),
        )


# What a BOUNDING_BOX answer's label says (the boxes themselves travel in ImageQuery.rois).
NO_OBJECTS = "NO_OBJECTS"
BOUNDING_BOX_LABEL = "BOUNDING_BOX"
GREATER_THAN_MAX = "GREATER_THAN_MAX"


def make_result(
    mode: DetectorMode,
    label: str,
    confidence: float | None,
    source: str,
    from_edge: bool,
    greater_than_max: bool | None = None,
) -> Result:
    """The one place a label becomes a wire Result. COUNT: `count` from the label ("0".."max");
    BOUNDING_BOX: a count bucket (a model's answer) becomes NO_OBJECTS, BOUNDING_BOX or
    GREATER_THAN_MAX, a person's label passes unchanged."""
    count: int | None = None
    if mode is DetectorMode.COUNT and label.isdigit():
        count = int(label)
    elif mode is DetectorMode.BOUNDING_BOX and label.isdigit():
        label = (
            GREATER_THAN_MAX if greater_than_max else NO_OBJECTS if int(label) == 0 else BOUNDING_BOX_LABEL
        )
    return Result(
        result_type=RESULT_TYPE_BY_MODE[mode],
        confidence=None if confidence is None else round(confidence, 6),
        source=source,
        from_edge=from_edge,
        label=label,
        count=count,
        greater_than_max=greater_than_max if mode is DetectorMode.COUNT else None,
    )


class EdgeDiagnostics(BaseModel):
    """Our extras on an image query; the SDK ignores unknown keys."""

    raw_confidence: float | None = None
    in_domain_score: float | None = None
    out_of_domain: bool | None = None
    model_version: str | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    audit: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ImageQuery(BaseModel):
    id: str
    type: Literal["image_query"] = "image_query"
    created_at: str
    query: str
    detector_id: str
    result_type: ResultType
    result: Result | None
    patience_time: float
    confidence_threshold: float
    metadata: dict[str, Any] | None = None
    rois: list[Roi] | None = None
    text: str | None = None
    done_processing: bool = False
    intellioptics: EdgeDiagnostics | None = None


class Detector(BaseModel):
    id: str
    type: Literal["detector"] = "detector"
    created_at: str
    name: str
    query: str
    group_name: str = ""
    metadata: dict[str, Any] | None = None
    mode: DetectorMode
    mode_configuration: dict[str, Any] | None = None
    confidence_threshold: float = Field(ge=0, le=1)
    patience_time: float = 30.0
    status: Literal["ON", "OFF"] = "ON"
    escalation_type: str = "STANDARD"


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    count: int
    next: str | None = None
    previous: str | None = None
    results: list[T]


class UserGroup(BaseModel):
    id: int
    name: str


class Me(BaseModel):
    email: str
    username: str
    group: UserGroup
    is_superuser: bool = False


# What a cloud user (or service account) may do.
class Role(StrEnum):
    ADMIN = "admin"
    REVIEWER = "reviewer"
    DEVICE = "device"  # cameras, edges, scripts: device API, edge API, escalations
    TRAINER = "trainer"  # the training service: leases jobs, reads exports, uploads what it trained


# `GET /device-api/v1/me`.
class AccountMe(Me):
    """The SDK's `Me` (which ignores keys it does not know) plus the caller's role, so that a service
    (the trainer) can tell before it starts whether its token may do its work."""

    role: Role


class EdgeInfo(BaseModel):
    upstream_endpoint: str


class DetectorReadiness(BaseModel):
    ready: bool
