"""Model registry: bundles as blobs, versions as rows, one production alias per detector (docs/architecture.md §5, §7).

A version is immutable. An upload is unpacked and verified, checked against its detector (id, mode,
labels), re-packed canonically (common.bundle_archive: same bundle, same bytes) and stored as
`models/<detector_id>/<version>.tar.gz`. Uploading a version again is idempotent when the canonical
archive has the same sha256 (200, the existing row) and a 409 when the content differs.

Statuses: candidate (registered), production (the detector's alias; exactly one or none), retired
(was production). Promote moves the alias and stamps `promoted_at`; rollback moves it back to the
version promoted most recently before the current one and leaves the stamps alone, so repeated
rollbacks walk back through the promotion history. The production version cannot be deleted.

Split bundles (head + OODD, common.bundle schema 2) name a shared backbone by sha256; the registry
takes one only when that backbone is registered (cloud.app.core.backbones), and edges learn where to
fetch it from `fetch-model-urls`. Every upload is run once (warm-up, through the same ModelRuntime that
answers queries) before it is stored, so a graph that does not load or run is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.blobstore import BlobStore
from cloud.app.core import backbones, notifications
from cloud.app.core.audit import AuditAction, record
from cloud.app.core.backbones import LocalBackbones
from cloud.app.core.detectors import bundle_labels
from cloud.app.db.models import Backbone, Detector, ModelStatus, ModelVersion
from cloud.app.errors import ConflictError, NotFoundError, PayloadTooLargeError, UnprocessableError
from cloud.app.schemas.models import ModelVersionDetail, ModelVersionOut
from common.backbone import BackboneStore
from common.bundle import (
    BundleError,
    Manifest,
    PipelineConfig,
    PredictorMetadata,
    install_bundle,
    read_metadata,
    read_pipeline,
    verify_bundle,
)
from common.bundle_archive import (
    ARCHIVE_CONTENT_TYPE,
    ArchiveTooLargeError,
    pack_bundle,
    sha256_of,
    unpack_bundle,
)
from common.clock import as_utc
from common.clock import utcnow as _utcnow
from common.ids import new_id
from common.runtime import BackbonePool, ModelRuntime
from common.wire.model_registry import BackboneFetchInfo, ModelFetchInfo

log = logging.getLogger("cloud.registry")

NO_MODEL_YET = "no model for this detector yet"
# Installed production bundles the cloud answers with: the active one and the one before it.
KEEP_INSTALLED = 2


def new_model_id() -> str:
    return new_id("mdl")


def model_blob_key(detector_id: str, version: str) -> str:
    return f"models/{detector_id}/{version}.tar.gz"


def download_url(public_url: str, model_id: str) -> str:
    return f"{public_url.rstrip('/')}/api/v1/models/{model_id}/download"


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


# --- upload -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedBundle:
    """An uploaded archive after unpacking, verification and canonical re-packing."""

    manifest: Manifest
    metadata: PredictorMetadata
    pipeline: PipelineConfig
    archive: Path
    sha256: str
    size_bytes: int
    bundle_dir: Path


def prepare_bundle(upload: Path, work_dir: Path) -> PreparedBundle:
    """Blocking: unpack `upload` into `work_dir`, verify, re-pack. Raises CloudError 413/422."""
    bundle_dir = work_dir / "bundle"
    try:
        manifest = unpack_bundle(upload, bundle_dir)
        metadata = read_metadata(bundle_dir)
        pipeline = read_pipeline(bundle_dir)
        if metadata.detector_id != manifest.detector_id or metadata.version != manifest.version:
            raise BundleError("predictor_metadata.json and manifest.json disagree on detector or version")
        canonical = work_dir / "canonical.tar.gz"
        pack_bundle(bundle_dir, canonical)
    except ArchiveTooLargeError as exc:
        raise PayloadTooLargeError(f"bundle archive rejected: {exc}") from None
    except BundleError as exc:
        # Messages name our temp directory; the client only needs what is wrong.
        detail = str(exc).replace(f"{bundle_dir}: ", "").replace(str(bundle_dir), "bundle")
        raise UnprocessableError(f"bundle rejected: {detail}") from None
    return PreparedBundle(
        manifest, metadata, pipeline, canonical, sha256_of(canonical), canonical.stat().st_size, bundle_dir
    )


def warm_up(bundle_dir: Path, store: BackboneStore, pool: BackbonePool) -> None:
    """Blocking: load the bundle (backbone from `store` through `pool`) and run it once; 422 otherwise."""
    runtime: ModelRuntime | None = None
    try:
        # verify=True also checks that metadata and manifest name the same backbone (check_backbone).
        runtime = ModelRuntime(bundle_dir, verify=True, backbone_store=store, backbones=pool)
        runtime.warmup()
    except Exception as exc:  # onnxruntime raises its own types for graphs that do not load or run
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BundleError) else str(exc)
        detail = detail.replace(f"{bundle_dir}: ", "").replace(str(bundle_dir), "bundle")
        raise UnprocessableError(f"bundle rejected: it does not run: {detail[:500]}") from None
    finally:
        if runtime is not None:
            runtime.close()


def _check_fits_detector(prepared: PreparedBundle, detector: Detector) -> None:
    meta = prepared.metadata
    if meta.detector_id != detector.id:
        raise UnprocessableError(f"bundle is for detector {meta.detector_id}, not {detector.id}")
    if meta.mode.value != detector.mode:
        raise UnprocessableError(
            f"bundle mode is {meta.mode.value}; detector {detector.id} is {detector.mode}"
        )
    wanted = bundle_labels(detector.mode, list(detector.labels), detector.mode_configuration)
    if sorted(meta.labels) != sorted(wanted):
        raise UnprocessableError(f"bundle labels {meta.labels} do not match the detector's labels {wanted}")


def _predictor_summary(prepared: PreparedBundle) -> dict[str, Any]:
    meta = prepared.metadata
    return {
        "detector_name": meta.detector_name,
        "query": meta.query,
        "mode": meta.mode.value,
        "labels": list(meta.labels),
        "temperature": meta.temperature,
        "default_confidence_threshold": meta.default_confidence_threshold,
        "oodd": meta.oodd.model_dump(mode="json"),
        "created_at": meta.created_at,
        "pipeline": prepared.pipeline.model_dump(mode="json"),
        # Split bundles: the shared backbone (common.backbone.BackboneRef) and which output the head reads.
        "backbone": meta.backbone.model_dump(mode="json") if meta.backbone is not None else None,
        "head_input": meta.head_input if meta.backbone is not None else None,
    }


def backbone_sha(row: ModelVersion) -> str | None:
    """The sha256 of the backbone a registered split bundle needs; None for a single-file bundle."""
    backbone = (row.manifest or {}).get("backbone")
    sha = backbone.get("sha256") if isinstance(backbone, dict) else None
    return sha if isinstance(sha, str) else None


async def _check_backbone_registered(session: AsyncSession, prepared: PreparedBundle) -> None:
    needed = prepared.manifest.backbone
    if needed is None:
        return
    row = await session.get(Backbone, needed.sha256)
    if row is None:
        raise UnprocessableError(
            f"bundle needs backbone {needed.sha256} ({needed.id}), which is not registered; "
            f"upload it first with PUT /api/v1/backbones/{needed.sha256}"
        )
    ref = prepared.metadata.backbone
    if ref is None or ref.sha256 != needed.sha256:
        raise UnprocessableError(
            "bundle rejected: predictor_metadata.json and manifest.json name different backbones"
        )
    registered = backbones.stored_ref(row)
    if row.size_bytes != needed.bytes or ref.embedding_dim != registered.embedding_dim:
        raise UnprocessableError(
            f"bundle describes backbone {needed.sha256} differently from its registration "
            f"({needed.bytes} bytes, embedding_dim {ref.embedding_dim}; registered: "
            f"{row.size_bytes} bytes, embedding_dim {registered.embedding_dim})"
        )


async def get_detector(session: AsyncSession, detector_id: str, *, lock: bool = False) -> Detector:
    """A deleted detector is not found: its registry is hidden with it until a restore."""
    stmt = select(Detector).where(Detector.id == detector_id, Detector.deleted_at.is_(None))
    if lock:  # serialises alias changes per detector on PostgreSQL; SQLite has one writer anyway
        stmt = stmt.with_for_update()
    detector = (await session.execute(stmt)).scalar_one_or_none()
    if detector is None:
        raise NotFoundError(f"detector {detector_id} not found")
    return detector


async def _find_version(session: AsyncSession, detector_id: str, version: str) -> ModelVersion | None:
    return (
        await session.execute(
            select(ModelVersion).where(
                ModelVersion.detector_id == detector_id, ModelVersion.version == version
            )
        )
    ).scalar_one_or_none()


def _same_or_conflict(existing: ModelVersion, prepared: PreparedBundle) -> ModelVersion:
    if existing.sha256 != prepared.sha256:
        raise ConflictError(
            f"version {existing.version} of detector {existing.detector_id} is already registered with "
            "different content; a version is immutable, upload the new bundle under a new version"
        )
    return existing


async def register_bundle(
    session: AsyncSession,
    blobs: BlobStore,
    local: LocalBackbones,
    detector_id: str,
    upload: Path,
    work_dir: Path,
    *,
    actor: Principal,
    promote: bool = False,
    lineage: dict[str, Any] | None = None,
) -> tuple[ModelVersion, bool]:
    """Verify, warm up and store an uploaded bundle archive. Returns (row, created).

    The warm-up loads a split bundle's backbone from `local`, installing it there first.
    """
    detector = await get_detector(session, detector_id)
    prepared = await asyncio.to_thread(prepare_bundle, upload, work_dir)
    _check_fits_detector(prepared, detector)
    version = prepared.manifest.version

    existing = await _find_version(session, detector_id, version)
    if existing is not None:
        row = _same_or_conflict(existing, prepared)
        if promote:
            await promote_model(session, row.id, actor)
        return row, False

    await _check_backbone_registered(session, prepared)
    if prepared.manifest.backbone is not None:
        await backbones.ensure_installed(local, session, blobs, prepared.manifest.backbone.sha256)
    await asyncio.to_thread(warm_up, prepared.bundle_dir, local.store, local.pool)

    row = ModelVersion(
        id=new_model_id(),
        detector_id=detector_id,
        version=version,
        status=ModelStatus.CANDIDATE,
        blob_key=model_blob_key(detector_id, version),
        sha256=prepared.sha256,
        size_bytes=prepared.size_bytes,
        manifest=prepared.manifest.model_dump(mode="json"),
        predictor=_predictor_summary(prepared),
        metrics=dict(prepared.metadata.metrics),
        lineage={**prepared.metadata.lineage, **(lineage or {})},
    )
    session.add(row)
    try:
        # The row claims (detector, version) before the blob is written, so two uploads racing for
        # one version never overwrite each other's blob: the loser fails here and compares hashes.
        await session.flush()
    except IntegrityError:
        await session.rollback()
        existing = await _find_version(session, detector_id, version)
        if existing is None:
            raise
        return _same_or_conflict(existing, prepared), False
    await blobs.put_file(row.blob_key, prepared.archive, ARCHIVE_CONTENT_TYPE)
    if promote:
        locked = await get_detector(session, detector_id, lock=True)
        previous = locked.production_version_id
        await _set_production(session, locked, row, stamp=True)
        await _audit_alias(session, actor, AuditAction.MODEL_PROMOTE, row, previous)
    await session.commit()
    log.info(
        "model registered",
        extra={
            "fields": {
                "detector_id": detector_id,
                "version": version,
                "model_id": row.id,
                "promoted": promote,
            }
        },
    )
    return row, True


# --- alias: promote, rollback, delete ---------------------------------------------------------------


async def get_model(session: AsyncSession, model_id: str) -> ModelVersion:
    row = (
        await session.execute(
            select(ModelVersion)
            .join(Detector, Detector.id == ModelVersion.detector_id)
            .where(ModelVersion.id == model_id, Detector.deleted_at.is_(None))
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"model version {model_id} not found")
    return row


async def _set_production(
    session: AsyncSession, detector: Detector, target: ModelVersion, *, stamp: bool
) -> None:
    """Point the alias at `target`; whatever was production before is retired."""
    await session.execute(
        update(ModelVersion)
        .where(
            ModelVersion.detector_id == detector.id,
            ModelVersion.status == ModelStatus.PRODUCTION,
            ModelVersion.id != target.id,
        )
        .values(status=ModelStatus.RETIRED)
        .execution_options(synchronize_session="fetch")
    )
    target.status = ModelStatus.PRODUCTION
    if stamp:
        target.promoted_at = _utcnow()
    detector.production_version_id = target.id


async def _audit_alias(
    session: AsyncSession, actor: Principal, action: AuditAction, row: ModelVersion, previous: str | None
) -> None:
    """The audit row and the `model_promoted` notification, in the alias change's transaction."""
    detail = {"detector_id": row.detector_id, "version": row.version, "previous_model_id": previous}
    event = record(session, actor, action, "model", row.id, detail)
    verb = "rolled back to" if action is AuditAction.MODEL_ROLLBACK else "promoted"
    detector = await session.get(Detector, row.detector_id)
    name = detector.name if detector is not None else row.detector_id
    await notifications.record_event(
        session,
        notifications.EventKind.MODEL_PROMOTED,
        f"alias:{row.id}:{event.at.timestamp()}",
        f"{name}: version {row.version} {verb} by {actor.username}",
        {**detail, "action": action.value, "by": actor.username, "model_id": row.id, "detector_name": name},
        detector_id=row.detector_id,
        at=event.at,
    )


async def promote_model(session: AsyncSession, model_id: str, actor: Principal) -> ModelVersion:
    row = await get_model(session, model_id)
    detector = await get_detector(session, row.detector_id, lock=True)
    if detector.production_version_id == row.id and row.status == ModelStatus.PRODUCTION:
        return row  # already the alias: promoting again changes nothing
    previous = detector.production_version_id
    await _set_production(session, detector, row, stamp=True)
    await _audit_alias(session, actor, AuditAction.MODEL_PROMOTE, row, previous)
    await session.commit()
    log.info("model promoted", extra={"fields": {"detector_id": row.detector_id, "model_id": row.id}})
    return row


async def rollback_model(session: AsyncSession, detector_id: str, actor: Principal) -> ModelVersion:
    """Back to the version promoted most recently before the current production one."""
    detector = await get_detector(session, detector_id, lock=True)
    if detector.production_version_id is None:
        raise ConflictError(f"detector {detector_id} has no production version to roll back from")
    current = await get_model(session, detector.production_version_id)
    stmt = select(ModelVersion).where(
        ModelVersion.detector_id == detector_id,
        ModelVersion.id != current.id,
        ModelVersion.promoted_at.is_not(None),
    )
    if current.promoted_at is not None:
        stmt = stmt.where(ModelVersion.promoted_at < current.promoted_at)
    target = (
        await session.execute(stmt.order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc()).limit(1))
    ).scalar_one_or_none()
    if target is None:
        raise ConflictError(f"detector {detector_id} has no earlier promoted version to roll back to")
    await _set_production(session, detector, target, stamp=False)
    await _audit_alias(session, actor, AuditAction.MODEL_ROLLBACK, target, current.id)
    await session.commit()
    log.info(
        "model rolled back",
        extra={"fields": {"detector_id": detector_id, "from": current.id, "to": target.id}},
    )
    return target


async def delete_model(session: AsyncSession, blobs: BlobStore, model_id: str, actor: Principal) -> None:
    row = await get_model(session, model_id)
    detector = await get_detector(session, row.detector_id, lock=True)
    if detector.production_version_id == row.id or row.status == ModelStatus.PRODUCTION:
        raise ConflictError(
            f"model version {model_id} is the production version of {row.detector_id}; "
            "promote another version or roll back first"
        )
    blob_key = row.blob_key
    detail = {"detector_id": row.detector_id, "version": row.version, "sha256": row.sha256}
    await session.delete(row)
    record(session, actor, AuditAction.MODEL_DELETE, "model", model_id, detail)
    await session.commit()
    # After the commit: a failed blob delete leaves an orphan blob, never a row without its blob.
    try:
        await blobs.delete(blob_key)
    except Exception:
        log.warning("could not delete model blob", extra={"fields": {"key": blob_key}}, exc_info=True)


# --- reads ----------------------------------------------------------------------------------------


async def list_models(session: AsyncSession, detector_id: str) -> tuple[Detector, list[ModelVersion]]:
    detector = await get_detector(session, detector_id)
    rows = (
        await session.execute(
            select(ModelVersion)
            .where(ModelVersion.detector_id == detector_id)
            .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
        )
    ).scalars()
    return detector, list(rows)


def model_out(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        id=row.id,
        detector_id=row.detector_id,
        version=row.version,
        status=ModelStatus(row.status),
        is_production=row.status == ModelStatus.PRODUCTION,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        created_at=_aware(row.created_at) or _utcnow(),
        promoted_at=_aware(row.promoted_at),
    )


def model_detail(row: ModelVersion, public_url: str) -> ModelVersionDetail:
    return ModelVersionDetail(
        **model_out(row).model_dump(),
        download_url=download_url(public_url, row.id),
        manifest=row.manifest,
        predictor=row.predictor,
        metrics=row.metrics,
        lineage=row.lineage,
    )


async def production_model(session: AsyncSession, detector_id: str) -> ModelVersion | None:
    return (
        await session.execute(
            select(ModelVersion)
            .join(Detector, Detector.production_version_id == ModelVersion.id)
            .where(Detector.id == detector_id, Detector.deleted_at.is_(None))
        )
    ).scalar_one_or_none()


async def fetch_info(session: AsyncSession, detector_id: str, public_url: str) -> ModelFetchInfo:
    """What an edge needs to download the production bundle; 404 when there is none."""
    row = await production_model(session, detector_id)
    if row is None:
        await get_detector(session, detector_id)  # an unknown detector says so
        raise NotFoundError(NO_MODEL_YET)
    predictor = row.predictor
    ref = predictor.get("backbone")
    backbone = None
    if isinstance(ref, dict):
        backbone = BackboneFetchInfo(
            id=str(ref["id"]),
            sha256=str(ref["sha256"]),
            size_bytes=int(ref["bytes"]),
            download_url=backbones.download_url(public_url, str(ref["sha256"])),
        )
    return ModelFetchInfo(
        detector_id=detector_id,
        model_version_id=row.id,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        download_url=download_url(public_url, row.id),
        mode=predictor["mode"],
        labels=[str(x) for x in predictor.get("labels", [])],
        pipeline=predictor.get("pipeline", {}),
        backbone=backbone,
    )


def fetch_etag(model_id: str, sha256: str, backbone_sha256: str | None = None) -> str:
    """Strong: the same version with the same bytes (and the same backbone), and nothing else, has this tag."""
    key = f"{model_id}:{sha256}" + (f":{backbone_sha256}" if backbone_sha256 else "")
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match asks: `*`, or any listed tag with or without W/."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


async def download_to(session: AsyncSession, blobs: BlobStore, model_id: str, dest: Path) -> ModelVersion:
    """Copy the stored tar.gz to `dest`; BlobNotFoundError (404) when the blob has gone."""
    row = await get_model(session, model_id)
    await blobs.get_to_file(row.blob_key, dest)
    return row


# --- the cloud's own copy of production bundles ------------------------------------------------------


@dataclass
class InstalledBundles:
    """The production bundles installed under `model_root` (backbones.model_root), with their
    backbones in `backbones`. One per process (the app's lifespan makes it): it remembers
    detector id -> (model id, sha256, dir) so a hit costs no blob I/O, and holds one install lock
    per detector."""

    model_root: Path
    backbones: LocalBackbones
    dirs: dict[str, tuple[str, str, Path]] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)


def _install_archive(archive: Path, expected_sha256: str, model_root: Path, version: str, work: Path) -> Path:
    """Blocking: check the archive's sha256, unpack, verify, install (atomic rename, `current`)."""
    actual = sha256_of(archive)
    if actual != expected_sha256:
        raise BundleError(f"stored bundle has sha256 {actual}, the registry says {expected_sha256}")
    bundle_dir = work / "bundle"
    manifest = unpack_bundle(archive, bundle_dir)
    if manifest.version != version:
        raise BundleError(f"stored bundle is version {manifest.version}, the registry says {version}")
    try:
        return install_bundle(bundle_dir, model_root, keep=KEEP_INSTALLED)
    except OSError:
        # Another process sharing data_dir renamed the same version into place first.
        final = model_root / manifest.detector_id / manifest.version
        verify_bundle(final)
        return final


def _intact(path: Path) -> bool:
    try:
        verify_bundle(path)
    except BundleError:
        return False
    return True


async def production_bundle_dir(
    installed: InstalledBundles, session: AsyncSession, blobs: BlobStore, detector_id: str
) -> Path | None:
    """The verified, installed production bundle of a detector, for the cloud's own answers.

    Downloaded once per version into data_dir/models/<detector_id>/<version>/ (single-flight per
    detector); afterwards a call is one small query and no blob I/O. A split bundle's backbone is
    installed (verified, from its blob) into data_dir/models/backbones/<sha256>/ first. None: no
    production version.
    """
    row = (
        await session.execute(
            select(
                ModelVersion.id,
                ModelVersion.version,
                ModelVersion.sha256,
                ModelVersion.blob_key,
                ModelVersion.manifest,
            )
            .join(Detector, Detector.production_version_id == ModelVersion.id)
            .where(Detector.id == detector_id, Detector.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    model_id, version, sha256, blob_key, manifest = row
    hit = installed.dirs.get(detector_id)
    if hit is not None and hit[0] == model_id and hit[1] == sha256 and hit[2].is_dir():
        return hit[2]
    lock = installed.locks.setdefault(detector_id, asyncio.Lock())
    async with lock:
        hit = installed.dirs.get(detector_id)
        if hit is not None and hit[0] == model_id and hit[1] == sha256 and hit[2].is_dir():
            return hit[2]
        model_root = installed.model_root
        needed = (manifest or {}).get("backbone")
        if isinstance(needed, dict) and isinstance(needed.get("sha256"), str):
            await backbones.ensure_installed(installed.backbones, session, blobs, needed["sha256"])
        final: Path = model_root / detector_id / version
        if not await asyncio.to_thread(_intact, final):  # a missing directory is not intact either
            final = await _download_and_install(blobs, blob_key, sha256, model_root, version)
        installed.dirs[detector_id] = (model_id, sha256, final)
        return final


async def _download_and_install(
    blobs: BlobStore, blob_key: str, sha256: str, model_root: Path, version: str
) -> Path:
    await asyncio.to_thread(model_root.mkdir, parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".download-", dir=model_root))
    try:
        archive = work / "bundle.tar.gz"
        await blobs.get_to_file(blob_key, archive)
        path = await asyncio.to_thread(_install_archive, archive, sha256, model_root, version, work)
        log.info("production bundle installed", extra={"fields": {"path": str(path)}})
        return path
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
