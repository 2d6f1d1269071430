"""What an edge learns from `GET /edge-api/v1/fetch-model-urls/{detector_id}/`: the production bundle.

The response carries a strong ETag; an edge that sends it back in `If-None-Match` gets 304 until an
admin promotes or rolls back. `download_url` serves the bundle as a tar.gz (common.bundle_archive)
whose sha256 is `sha256`; the edge checks it before unpacking. A split bundle also names its
`backbone` (`GET /api/v1/backbones/{sha256}/download`), which the edge installs first when absent.
"""

from __future__ import annotations

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
