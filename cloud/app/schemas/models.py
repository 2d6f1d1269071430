"""Model registry responses (cloud only; what edges read is common.wire.model_registry)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from cloud.app.db.models import ModelStatus


class ModelVersionOut(BaseModel):
    id: str = Field(description="registry id (`mdl_…`)")
    detector_id: str
    version: str = Field(description="the bundle's model_id.txt")
    status: ModelStatus
    is_production: bool
    sha256: str = Field(description="sha256 of the stored tar.gz")
    size_bytes: int
    created_at: datetime
    promoted_at: datetime | None = Field(description="last explicit promotion; rollbacks keep it")


class ModelVersionDetail(ModelVersionOut):
    download_url: str
    manifest: dict[str, Any] = Field(description="the bundle's manifest.json")
    predictor: dict[str, Any] = Field(
        description="mode, labels, temperature, OODD calibration, pipeline; backbone (its BackboneRef) and "
        "head_input for split bundles, null otherwise"
    )
    metrics: dict[str, Any] = Field(description="metrics on held-out data, from predictor_metadata.json")
    lineage: dict[str, Any]


class ModelVersionList(BaseModel):
    detector_id: str
    production_version_id: str | None
    results: list[ModelVersionOut] = Field(description="newest first")
