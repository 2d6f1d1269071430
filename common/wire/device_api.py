"""The Groundlight device API (SDK 1.3.x) as pydantic models: what cameras send and receive.

Field names and required keys follow shared/groundlight-wire.md §8. Our own diagnostics travel in
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


RESULT_TYPE_BY_MODE = {
    DetectorMode.BINARY: ResultType.BINARY,
    DetectorMode.MULTI_CLASS: ResultType.MULTI_CLASS,
    DetectorMode.COUNT: ResultType.COUNTING,
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
    rois: list[dict[str, Any]] | None = None
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


class EdgeInfo(BaseModel):
    upstream_endpoint: str


class DetectorReadiness(BaseModel):
    ready: bool
