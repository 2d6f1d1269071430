"""Training reports of a model version: the trainer's plots and metrics, stored beside the bundle."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class ReportName(StrEnum):
    """The only report files a model version can have (what training.reports writes)."""

    LEARNING_CURVES = "learning_curves.png"
    CONFUSION_MATRIX = "confusion_matrix.png"
    RELIABILITY = "reliability.png"
    DETECTIONS = "detections.png"
    METRICS = "metrics.json"


class ModelReportOut(BaseModel):
    name: ReportName
    content_type: str = Field(examples=["image/png"])
    size_bytes: int | None = Field(default=None, description="set in the answer to an upload")
    url: str = Field(description="path of the report on this API (same credentials)")


class ModelReportList(BaseModel):
    model_id: str
    detector_id: str
    version: str
    reports: list[ModelReportOut] = Field(description="the reports stored for this version, in a fixed order")
