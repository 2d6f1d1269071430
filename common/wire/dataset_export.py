"""The dataset export format: what the cloud writes (cloud.app.core.exports) and training reads.

    <export>.tar.gz
      manifest.json            ExportManifest below (first member, so a reader can stream)
      images/<iq_id>.<ext>     one image per item, ext from its content type (jpg, png, bmp, webp)

One item per image query: the latest label that was not undone, from a reviewer (HUMAN) or from the
device API (CUSTOMER). Items whose latest label is not one of the detector's labels (UNCLEAR, a class
that no longer exists) or whose image is gone are left out and counted in `excluded`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from common.bundle import DetectorMode

EXPORT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"


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
    image: str = Field(description="path inside the archive: images/<iq_id>.<ext>")
    content_type: str


class ExportManifest(BaseModel):
    format_version: int = EXPORT_FORMAT_VERSION
    export_id: str = ""
    detector: ExportDetector
    created_at: str
    items: list[ExportItem]
    excluded: dict[str, int] = Field(
        default_factory=dict, description="image queries left out, by reason (label value or missing_image)"
    )
