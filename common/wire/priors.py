"""`GET /edge-api/v1/detectors/{detector_id}/prior`: what a detector without a model answers with.

The cloud counts each detector's labels; an edge asks for them for a configured detector that has no
model yet (and keeps the answer, so it can answer offline), and both answer such a detector's queries
with `common.prior.label_prior` of these counts.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.bundle import DetectorMode
from common.wire.alerts import AlertRule
from common.wire.device_api import HumanReview


class DetectorPrior(BaseModel):
    detector_id: str
    name: str = ""
    query: str = ""
    mode: DetectorMode
    labels: list[str] = Field(min_length=2, description="the detector's answers, in key order")
    counts: list[int] = Field(description="labels so far per answer (same order), UNCLEAR not counted")
    confidence_threshold: float = Field(default=0.9, ge=0, le=1)
    has_model: bool = Field(default=False, description="whether a production model exists in the cloud")
    human_review: HumanReview = Field(
        default=HumanReview.DEFAULT, description="the detector's policy for queries that say DEFAULT"
    )
    alert_rules: list[AlertRule] = Field(
        default_factory=list, description="the detector's enabled alert rules, which the edge watches"
    )
