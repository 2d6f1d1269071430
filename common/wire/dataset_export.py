"""The dataset export format: what the cloud writes (cloud.app.core.exports) and training reads.

    <export>.tar.gz
      manifest.json            ExportManifest below (first member, so a reader can stream)
      images/<iq_id>.<ext>     one image per item, ext from its content type (jpg, png, bmp, webp)
      embeddings/<sha256>.npy  format 2: float16 (count, dim) embeddings by that backbone, rows in the
                               order of `embeddings[sha256].image_query_ids`

Format 2 adds `embeddings` and lets an item go without its image (`image: null`) when the export was
asked for with `images="missing"` and that item's embedding by the requested backbone is included:
a retrain of a head then reads no image it has seen before.

Format 3 adds each item's `rois`: the boxes that came with its label (common.wire.device_api.Roi,
normalised 0..1), null when none did. COUNT and BOUNDING_BOX detectors train their detection heads
on them.

One item per image query: the latest label that was not undone, from a reviewer (HUMAN) or from the
device API (CUSTOMER). UNCLEAR items are included: trainers learn from them what the detector should
not answer (its out-of-domain examples) and train no class on them. Items whose label is a class that
no longer exists, or whose image is gone, are left out and counted in `excluded`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.bundle import DetectorMode
from common.wire.device_api import Roi
from common.wire.training_jobs import JobStatus

EXPORT_FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
EMBEDDINGS_DIR = "embeddings"
EMBEDDING_DTYPE = "float16"


class ExportDetector(BaseModel):
    id: str
    name: str
    query: str
    mode: DetectorMode
    labels: list[str]
    mode_configuration: dict[str, Any] | None = None


class ExportItem(BaseModel):
    image_query_id: str
    label: str
    source: str = Field(description="HUMAN (review queue) or CUSTOMER (device API)")
    labeled_at: str = Field(description="ISO-8601 UTC")
    image: str | None = Field(
        description="path inside the archive: images/<iq_id>.<ext>; null when only its embedding is included"
    )
    content_type: str
    rois: list[Roi] | None = Field(default=None, description="format 3: the label's boxes; null when none")


class ExportEmbeddings(BaseModel):
    """One backbone's embeddings in an export: `file` holds float16 (len(image_query_ids), dim)."""

    file: str = Field(description="embeddings/<sha256>.npy")
    dim: int
    dtype: str = EMBEDDING_DTYPE
    image_query_ids: list[str]


class ExportRequest(BaseModel):
    """Body of `POST /api/v1/detectors/{detector_id}/exports` (optional: the default is every image)."""

    backbone_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="include stored embeddings by this backbone"
    )
    images: Literal["all", "missing"] = Field(
        default="all", description="missing: only images whose embedding by backbone_sha256 is not stored"
    )


# What `POST /api/v1/detectors/{detector_id}/exports` and `GET /api/v1/exports/{export_id}` answer.
class ExportJobOut(BaseModel):
    id: str = Field(description="export id (`exp_…`)")
    detector_id: str
    status: JobStatus
    item_count: int = Field(description="images in the archive (set when it has succeeded)")
    error: str | None = None
    requested_by: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    download_url: str | None = Field(default=None, description="set once the export has succeeded")
    backbone_sha256: str | None = Field(default=None, description="embeddings by this backbone are included")
    images: Literal["all", "missing"] = Field(
        default="all", description="missing: items with an included embedding come without their image"
    )


class ExportManifest(BaseModel):
    format_version: int = EXPORT_FORMAT_VERSION
    export_id: str = ""
    detector: ExportDetector
    created_at: str
    items: list[ExportItem]
    excluded: dict[str, int] = Field(
        default_factory=dict, description="image queries left out, by reason (label value or missing_image)"
    )
    embeddings: dict[str, ExportEmbeddings] = Field(
        default_factory=dict, description="backbone sha256 -> its stored embeddings of these items"
    )
