"""Dataset export job responses (the request and the archive format are common.wire.dataset_export)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cloud.app.db.models import JobStatus


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
