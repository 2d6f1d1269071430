"""Backbone registry and embedding store responses (what a split bundle's edge reads is
common.wire.model_registry.BackboneFetchInfo)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class BackboneOut(BaseModel):
    sha256: str = Field(description="sha256 of backbone.onnx: its name")
    id: str = Field(description="architecture and weights, e.g. efficientnet-lite0/imagenet")
    size_bytes: int
    ref: dict[str, Any] = Field(description="the common.backbone.BackboneRef it was registered with")
    created_at: datetime
    download_url: str = Field(description="device role; the bytes with x-content-sha256")


class EmbeddingsStored(BaseModel):
    stored: int = Field(description="rows inserted by this upload")
    already: int = Field(description="rows that were stored before and kept as they were")
    unknown: list[str] = Field(
        default_factory=list, description="image query ids this cloud does not know (nothing stored for them)"
    )
