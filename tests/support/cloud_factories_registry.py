"""Rows for registry and export tests, written straight into the test database: detectors with fixed
ids (the demo bundles'), API tokens for the first-start admin and reviewer, image queries with their
image blob, labels."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import ApiToken, Detector, ImageQuery, Label, LabelSource, ModelVersion, User
from cloud.app.security import new_api_token, new_token_id, token_digest
from cloud.app.settings import to_async_url
from common.bundle import DetectorMode, read_metadata
from common.ids import new_detector_id, new_image_query_id

T = TypeVar("T")


async def with_session(database_url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = make_engine(to_async_url(database_url), pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


def run_in_db(database_url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """For synchronous tests and fixtures: run `fn(session)` on a fresh engine and event loop."""
    return asyncio.run(with_session(database_url, fn))


async def token_for(session: AsyncSession, username: str) -> str:
    """A new API token for an existing user (the first-start `admin` or `reviewer`)."""
    user = (await session.execute(select(User).where(User.username == username))).scalar_one()
    token = new_api_token()
    session.add(
        ApiToken(
            id=new_token_id(),
            name=f"tests {secrets.token_hex(4)}",
            user_id=user.id,
            token_hash=token_digest(token),
            snippet=token[:20],
        )
    )
    await session.commit()
    return token


def labels_for(mode: DetectorMode, labels: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    if mode is DetectorMode.BINARY:
        return ["YES", "NO"], None
    if mode is DetectorMode.MULTI_CLASS:
        return list(labels), {"class_names": list(labels), "num_classes": len(labels)}
    return list(labels), {"max_count": len(labels) - 1, "class_name": "object"}


async def ensure_detector(
    session: AsyncSession,
    detector_id: str | None = None,
    *,
    mode: DetectorMode = DetectorMode.BINARY,
    labels: list[str] | None = None,
    name: str | None = None,
    query: str = "Is this a test?",
) -> Detector:
    """The detector with this id, inserted if absent (names get a random suffix: they are unique)."""
    detector_id = detector_id or new_detector_id()
    existing = await session.get(Detector, detector_id)
    if existing is not None:
        return existing
    stored_labels, mode_configuration = labels_for(mode, labels or ["NO", "YES"])
    detector = Detector(
        id=detector_id,
        name=name or f"test-{detector_id[-8:]}-{secrets.token_hex(3)}",
        query=query,
        mode=mode.value,
        mode_configuration=mode_configuration,
        labels=stored_labels,
    )
    session.add(detector)
    await session.commit()
    return detector


async def ensure_detector_for_bundle(
    session: AsyncSession, bundle_dir: Path, detector_id: str | None = None
) -> Detector:
    meta = read_metadata(bundle_dir)
    return await ensure_detector(
        session,
        detector_id or meta.detector_id,
        mode=meta.mode,
        labels=list(meta.labels),
        query=meta.query or "demo",
    )


async def forget_models(session: AsyncSession, detector_id: str) -> None:
    """No versions, no production alias: a clean registry for one detector."""
    await session.execute(
        update(Detector).where(Detector.id == detector_id).values(production_version_id=None)
    )
    await session.execute(delete(ModelVersion).where(ModelVersion.detector_id == detector_id))
    await session.commit()


async def add_image_query(
    session: AsyncSession,
    blobs: BlobStore,
    detector_id: str,
    image: bytes,
    content_type: str = "image/png",
    *,
    store_image: bool = True,
) -> str:
    iq_id = new_image_query_id()
    ext = {"image/png": "png", "image/jpeg": "jpg"}.get(content_type, "bin")
    key = f"images/{detector_id}/{iq_id}.{ext}"
    if store_image:
        await blobs.put(key, image, content_type)
    session.add(
        ImageQuery(
            id=iq_id,
            detector_id=detector_id,
            query="test",
            result_type="binary_classification",
            patience_time=30.0,
            confidence_threshold=0.9,
            image_key=key,
            image_content_type=content_type,
        )
    )
    await session.commit()
    return iq_id


async def add_label(
    session: AsyncSession,
    detector_id: str,
    image_query_id: str,
    label: str,
    *,
    source: LabelSource = LabelSource.HUMAN,
    at: datetime | None = None,
    undone: bool = False,
) -> int:
    row = Label(
        image_query_id=image_query_id,
        detector_id=detector_id,
        label=label,
        source=source.value,
        created_at=at or datetime.now(UTC),
        undone_at=datetime.now(UTC) if undone else None,
    )
    session.add(row)
    await session.commit()
    return row.id
