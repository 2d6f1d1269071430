"""What an edge learns from `GET /edge-api/v1/fetch-model-urls/{detector_id}/`: the production bundle.

The response carries a strong ETag; an edge that sends it back in `If-None-Match` gets 304 until an
admin promotes or rolls back. `download_url` serves the bundle as a tar.gz (common.bundle_archive)
whose sha256 is `sha256`; the edge checks it before unpacking. A split bundle also names its
`backbone` (`GET /api/v1/backbones/{sha256}/download`), which the edge installs first when absent.

Also the registry's own answers, which the trainer reads: model versions (`/api/v1/detectors/{id}/models`,
`/api/v1/models/{id}`, promote, rollback) and the backbone registry and embedding store
(`/api/v1/backbones/{sha256}`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from common.bundle import DetectorMode

SHA256_HEADER = "x-content-sha256"


class BackboneFetchInfo(BaseModel):
    """The shared backbone a split bundle needs (common.backbone); fetched once per edge."""

    id: str
    sha256: str = Field(description="sha256 of backbone.onnx behind download_url")
    size_bytes: int
    download_url: str = Field(description="absolute URL; send the same x-api-token")


class ModelFetchInfo(BaseModel):
    detector_id: str
    model_version_id: str = Field(description="registry id of this version (`mdl_…`)")
    version: str = Field(description="the bundle's model_id.txt")
    sha256: str = Field(description="sha256 of the tar.gz behind download_url")
    size_bytes: int
    download_url: str = Field(description="absolute URL; send the same x-api-token")
    mode: DetectorMode
    labels: list[str]
    pipeline: dict[str, Any] = Field(default_factory=dict, description="pipeline_config.yaml as JSON")
    backbone: BackboneFetchInfo | None = Field(
        default=None, description="split bundles: install this backbone (if absent) before the bundle"
    )


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    RETIRED = "retired"


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
    # Free-form: the bundle's own files as JSON (common.bundle reads them).
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


# A registered backbone (`PUT` and `GET /api/v1/backbones/{sha256}`).
class BackboneOut(BaseModel):
    sha256: str = Field(description="sha256 of backbone.onnx: its name")
    id: str = Field(description="architecture and weights, e.g. efficientnet-lite0/imagenet")
    size_bytes: int
    ref: dict[str, Any] = Field(description="the common.backbone.BackboneRef it was registered with")
    created_at: datetime
    download_url: str = Field(description="device role; the bytes with x-content-sha256")


# What `POST /api/v1/backbones/{sha256}/embeddings` answers.
class EmbeddingsStored(BaseModel):
    stored: int = Field(description="rows inserted by this upload")
    already: int = Field(description="rows that were stored before and kept as they were")
    unknown: list[str] = Field(
        default_factory=list, description="image query ids this cloud does not know (nothing stored for them)"
    )


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
