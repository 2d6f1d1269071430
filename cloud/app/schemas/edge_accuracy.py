"""How often a detector's edge is right when it is confident, measured on audited answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AccuracyEstimate(BaseModel):
    n: int = Field(
        description="audited edge answers a reviewer has answered (UNCLEAR and undone ones excluded)"
    )
    correct: int = Field(
        description="those where the edge's answer equals the reviewer's (counts: same count)"
    )
    accuracy: float | None = Field(description="correct / n; null when n is 0", examples=[0.9])
    interval_low: float | None = Field(description="lower end of the exact (Clopper–Pearson) interval")
    interval_high: float | None = Field(description="upper end of the exact (Clopper–Pearson) interval")


class VersionAccuracy(AccuracyEstimate):
    model_version: str | None = Field(description="the edge model version that answered; null when unknown")


class EdgeAccuracyOut(BaseModel):
    detector_id: str
    mode: str
    confidence_level: float = Field(examples=[0.95])
    overall: AccuracyEstimate
    by_model_version: list[VersionAccuracy] = Field(description="newest audited version first")
    awaiting_review: int = Field(description="audits nobody has answered yet")
    unclear: int = Field(description="audits a reviewer answered UNCLEAR (not counted)")
