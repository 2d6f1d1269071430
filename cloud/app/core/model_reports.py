"""Reports of a model version (learning curves, confusion matrix, reliability diagram, metrics.json)
as blobs under `models/<detector_id>/<version>/reports/<name>`.

The trainer uploads them after registering the bundle; the review pages show them. Names come from a
fixed set and each kind has a size limit and a content check (PNG signature, a JSON object), so the
store never holds anything a browser could be tricked into running. Uploading a name again replaces it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobNotFoundError, BlobStore
from cloud.app.core.registry import get_model
from cloud.app.db.models import ModelVersion
from cloud.app.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from cloud.app.schemas.model_reports import ModelReportList, ModelReportOut, ReportName

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ReportKind:
    content_type: str
    max_bytes: int


KINDS: dict[ReportName, ReportKind] = {
    ReportName.LEARNING_CURVES: ReportKind("image/png", 5 * 1024 * 1024),
    ReportName.CONFUSION_MATRIX: ReportKind("image/png", 5 * 1024 * 1024),
    ReportName.RELIABILITY: ReportKind("image/png", 5 * 1024 * 1024),
    ReportName.DETECTIONS: ReportKind("image/png", 5 * 1024 * 1024),
    ReportName.METRICS: ReportKind("application/json", 2 * 1024 * 1024),
}
PLOTS = (
    ReportName.DETECTIONS,
    ReportName.LEARNING_CURVES,
    ReportName.CONFUSION_MATRIX,
    ReportName.RELIABILITY,
)


def report_blob_key(detector_id: str, version: str, name: ReportName) -> str:
    return f"models/{detector_id}/{version}/reports/{name.value}"


def report_path(model_id: str, name: ReportName) -> str:
    return f"/api/v1/models/{model_id}/reports/{name.value}"


def max_bytes(name: ReportName) -> int:
    return KINDS[name].max_bytes


def check_report(name: ReportName, data: bytes) -> None:
    """BadRequestError unless `data` is what a report of this name must be."""
    kind = KINDS[name]
    if len(data) > kind.max_bytes:
        raise PayloadTooLargeError(f"{name.value} is over the limit of {kind.max_bytes} bytes")
    if not data:
        raise BadRequestError(f"{name.value}: the request body is empty")
    if kind.content_type == "image/png":
        if not data.startswith(PNG_SIGNATURE):
            raise BadRequestError(f"{name.value} must be a PNG image")
        return
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError(f"{name.value} must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"{name.value} must be a JSON object")


def _out(row: ModelVersion, name: ReportName, size: int | None = None) -> ModelReportOut:
    return ModelReportOut(
        name=name, content_type=KINDS[name].content_type, size_bytes=size, url=report_path(row.id, name)
    )


async def store_report(
    session: AsyncSession, blobs: BlobStore, model_id: str, name: ReportName, data: bytes
) -> ModelReportOut:
    row = await get_model(session, model_id)
    await asyncio.to_thread(check_report, name, data)
    await blobs.put(report_blob_key(row.detector_id, row.version, name), data, KINDS[name].content_type)
    return _out(row, name, len(data))


async def read_report(
    session: AsyncSession, blobs: BlobStore, model_id: str, name: ReportName
) -> tuple[bytes, str]:
    """(bytes, content type); NotFoundError when the version has no such report."""
    row = await get_model(session, model_id)
    try:
        data = await blobs.get(report_blob_key(row.detector_id, row.version, name))
    except BlobNotFoundError:
        raise NotFoundError(f"model version {model_id} has no report {name.value}") from None
    return data, KINDS[name].content_type


async def present_reports(blobs: BlobStore, row: ModelVersion) -> list[ReportName]:
    """The report names stored for one version, in the fixed order."""
    found = await asyncio.gather(
        *(blobs.exists(report_blob_key(row.detector_id, row.version, name)) for name in ReportName)
    )
    return [name for name, ok in zip(ReportName, found, strict=True) if ok]


async def reports_by_model(blobs: BlobStore, rows: Iterable[ModelVersion]) -> dict[str, list[ReportName]]:
    rows = list(rows)
    found = await asyncio.gather(*(present_reports(blobs, row) for row in rows))
    return {row.id: names for row, names in zip(rows, found, strict=True)}


async def list_reports(session: AsyncSession, blobs: BlobStore, model_id: str) -> ModelReportList:
    row = await get_model(session, model_id)
    names: Sequence[ReportName] = await present_reports(blobs, row)
    return ModelReportList(
        model_id=row.id,
        detector_id=row.detector_id,
        version=row.version,
        reports=[_out(row, name) for name in names],
    )


async def read_metrics_report(blobs: BlobStore, row: ModelVersion) -> dict[str, object] | None:
    """metrics.json of a version as a dict, or None when it has none (or it cannot be read)."""
    try:
        data = await blobs.get(report_blob_key(row.detector_id, row.version, ReportName.METRICS))
    except BlobNotFoundError:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
