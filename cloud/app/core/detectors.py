"""Detectors: create (names are unique), read, list, update, and their wire form. Deleted detectors
(cloud.app.core.detector_lifecycle) are not found here: every lookup and list leaves them out.

A detector's `labels` column is what a human may answer besides UNCLEAR: YES/NO for BINARY, the
class names for MULTI_CLASS, "0".."max_count" for COUNT, NO_OBJECTS/BOUNDING_BOX/GREATER_THAN_MAX for
BOUNDING_BOX (the boxes themselves go with the label). Training and review both read it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.audit import AuditAction, record
from cloud.app.db.models import Detector as DetectorRow
from cloud.app.errors import BadRequestError, ConflictError, NotFoundError
from cloud.app.schemas.device import DetectorCreationInput, DetectorUpdate
from common.bundle import DetectorMode
from common.clock import as_utc
from common.ids import is_detector_id, new_detector_id
from common.validation import InvalidInputError, check_metadata, decode_metadata
from common.wire.device_api import BOUNDING_BOX_LABEL, GREATER_THAN_MAX, NO_OBJECTS, Detector

UNCLEAR = "UNCLEAR"
BINARY_LABELS = ["YES", "NO"]
DEFAULT_MAX_COUNT = 10
MAX_COUNT_LIMIT = 100
MAX_CLASSES = 100
BOUNDING_BOX_LABELS = [NO_OBJECTS, BOUNDING_BOX_LABEL, GREATER_THAN_MAX]


def iso_utc(moment: datetime) -> str:
    """ISO-8601 with a Z; SQLite hands back naive datetimes, which are UTC."""
    return as_utc(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def mode_spec(
    mode_name: str, config: dict[str, Any] | None
) -> tuple[DetectorMode, dict[str, Any] | None, list[str]]:
    """(mode, mode_configuration as stored and served, labels) from what the SDK sent."""
    try:
        mode = DetectorMode(mode_name.upper())
    except ValueError:
        supported = ", ".join(m.value for m in DetectorMode)
        raise BadRequestError(f"mode {mode_name[:40]!r} is not supported; use one of {supported}") from None
    config = config or {}
    if mode is DetectorMode.BINARY:
        return mode, None, list(BINARY_LABELS)
    if mode is DetectorMode.MULTI_CLASS:
        names = config.get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise BadRequestError(
                "a MULTI_CLASS detector needs mode_configuration.class_names, a list of names"
            )
        if not 2 <= len(names) <= MAX_CLASSES:
            raise BadRequestError(f"a MULTI_CLASS detector needs 2 to {MAX_CLASSES} class names")
        if len(set(names)) != len(names):
            raise BadRequestError("class names must be unique")
        if UNCLEAR in names or any(len(n) > 100 for n in names):
            raise BadRequestError(f"class names must be at most 100 characters and not {UNCLEAR}")
        return mode, {"class_names": names, "num_classes": len(names)}, list(names)
    class_name = config.get("class_name")
    if not isinstance(class_name, str) or not class_name.strip() or len(class_name) > 100:
        raise BadRequestError(
            f"a {mode.value} detector needs mode_configuration.class_name (1 to 100 characters)"
        )
    key = "max_num_bboxes" if mode is DetectorMode.BOUNDING_BOX else "max_count"
    limit = config.get(key)
    if limit is None:
        limit = DEFAULT_MAX_COUNT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_COUNT_LIMIT:
        raise BadRequestError(f"{key} must be an integer from 1 to {MAX_COUNT_LIMIT}")
    if mode is DetectorMode.BOUNDING_BOX:
        return mode, {"class_name": class_name, "max_num_bboxes": limit}, list(BOUNDING_BOX_LABELS)
    labels = [str(i) for i in range(limit + 1)]
    return mode, {"max_count": limit, "class_name": class_name}, labels


def bundle_labels(mode: str, labels: list[str], mode_configuration: dict[str, Any] | None) -> list[str]:
    """The labels a model bundle of this detector has: its own, except for BOUNDING_BOX, whose
    detection head answers count buckets "0".."max_num_bboxes" like a COUNT detector's."""
    if mode != DetectorMode.BOUNDING_BOX.value:
        return [str(label) for label in labels]
    limit = (mode_configuration or {}).get("max_num_bboxes", DEFAULT_MAX_COUNT)
    return [str(i) for i in range(int(limit) + 1)]


def _metadata(raw: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The same rules as image-query metadata (common.validation): the SDK's base64 of at most 1024
    bytes of JSON (its 1362-character limit), or the object itself."""
    if raw is None:
        return None
    try:
        return check_metadata(raw) if isinstance(raw, dict) else decode_metadata(raw)
    except InvalidInputError as exc:
        raise BadRequestError(str(exc)) from None


async def create_detector(
    session: AsyncSession, body: DetectorCreationInput, actor: Principal
) -> DetectorRow:
    """409 on a taken name, also when two creates race (the unique index decides)."""
    mode, mode_configuration, labels = mode_spec(body.mode, body.mode_configuration)
    row = DetectorRow(
        id=new_detector_id(),
        name=body.name,
        query=body.query,
        group_name=body.group_name or "",
        mode=mode.value,
        mode_configuration=mode_configuration,
        labels=labels,
        confidence_threshold=body.confidence_threshold,
        patience_time=body.patience_time,
        metadata_=_metadata(body.metadata),
        status="ON",
        created_at=datetime.now(UTC),
    )
    session.add(row)
    record(
        session, actor, AuditAction.DETECTOR_CREATE, "detector", row.id, {"name": row.name, "mode": row.mode}
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ConflictError(f"a detector named {body.name!r} already exists") from None
    return row


async def get_detector(session: AsyncSession, detector_id: str) -> DetectorRow:
    """404 for an unknown id and for a deleted detector alike."""
    row = await session.get(DetectorRow, detector_id) if is_detector_id(detector_id) else None
    if row is None or row.deleted_at is not None:
        raise NotFoundError(f"detector {detector_id[:60]} not found")
    return row


async def list_detectors(
    session: AsyncSession, page: int, page_size: int, name: str | None = None
) -> tuple[list[DetectorRow], int]:
    """Newest first; `name` filters to the exact name (at most one, names are unique)."""
    where: list[ColumnElement[bool]] = [DetectorRow.deleted_at.is_(None)]
    if name is not None:
        where.append(DetectorRow.name == name)
    count = (await session.execute(select(func.count()).select_from(DetectorRow).where(*where))).scalar_one()
    rows = (
        await session.scalars(
            select(DetectorRow)
            .where(*where)
            .order_by(DetectorRow.created_at.desc(), DetectorRow.id.desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
    ).all()
    return list(rows), int(count)


async def update_detector(
    session: AsyncSession, detector_id: str, patch: DetectorUpdate, actor: Principal
) -> DetectorRow:
    """A new name that another live detector has is a 409, and nothing changes."""
    row = await get_detector(session, detector_id)
    changes: dict[str, Any] = {}
    for field in ("confidence_threshold", "patience_time", "status", "name", "query", "human_review"):
        value = getattr(patch, field)
        if value is not None and value != getattr(row, field):
            changes[field] = {"from": getattr(row, field), "to": value}
            setattr(row, field, value)
    if changes:
        record(session, actor, AuditAction.DETECTOR_UPDATE, "detector", row.id, {"name": row.name, **changes})
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ConflictError(f"a detector named {patch.name!r} exists already") from None
    return row


def detector_to_wire(row: DetectorRow) -> Detector:
    return Detector(
        id=row.id,
        created_at=iso_utc(row.created_at),
        name=row.name,
        query=row.query,
        group_name=row.group_name,
        metadata=row.metadata_,
        mode=DetectorMode(row.mode),
        mode_configuration=row.mode_configuration,
        confidence_threshold=row.confidence_threshold,
        patience_time=row.patience_time,
        status="OFF" if row.status == "OFF" else "ON",
    )
