"""Backbone registry and embedding store (docs/architecture.md §5, §8).

A backbone (common.backbone) is stored once, named by its sha256: the row `backbones` and the blob
`backbones/<sha256>.onnx`. An upload is trusted only after its bytes hash to the name it is stored
under and to its BackboneRef, fit the size limit, and load in ONNX Runtime with the ref's outputs.
Uploading the same backbone again is idempotent (200 and the stored row); the same bytes under a ref
that describes other inputs or outputs is a 409, since every head trained on it relies on those.

The cloud's own copy (for answering with split bundles and for warming uploaded bundles up) lives in
`data_dir/models/backbones/<sha256>/`, beside the installed bundles, installed from the blob after its
hash is checked; one `BackboneStore` and one `BackbonePool` per process, so every detector on one
backbone shares a single ONNX Runtime session.

Embeddings: one float16 row per (image query, backbone), computed by the trainer and uploaded in
batches; rows that exist are kept (an embedding of the same image by the same backbone is the same).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.db.models import Backbone, ImageEmbedding, ImageQuery
from cloud.app.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableError,
)
from cloud.app.schemas.backbones import BackboneOut, EmbeddingsStored
from cloud.app.settings import CloudSettings
from common.backbone import (
    SHA256_RE,
    BackboneError,
    BackboneRef,
    BackboneStore,
    sha256_path,
)
from common.clock import as_utc
from common.error_detail import first_validation_error
from common.runtime import BackbonePool, BackboneRuntime

log = logging.getLogger("cloud.backbones")

BACKBONE_CONTENT_TYPE = "application/octet-stream"
# The ref fields a head depends on: the same bytes must always be described the same way here.
_FUNCTIONAL_FIELDS = ("input_name", "embedding_output", "embedding_dim", "feature_map_output")
MAX_EMBEDDING_ROWS = 100_000
_INSERT_BATCH = 1000


def backbone_blob_key(sha256: str) -> str:
    return f"backbones/{sha256}.onnx"


def download_url(public_url: str, sha256: str) -> str:
    return f"{public_url.rstrip('/')}/api/v1/backbones/{sha256}/download"


def check_sha256(sha256: str) -> str:
    if not SHA256_RE.match(sha256):
        raise NotFoundError(f"backbone {sha256[:70]!r} not found: backbones are named by a lowercase sha256")
    return sha256


def backbone_out(row: Backbone, public_url: str) -> BackboneOut:
    return BackboneOut(
        sha256=row.sha256,
        id=row.id,
        size_bytes=row.size_bytes,
        ref=row.ref,
        created_at=as_utc(row.created_at),
        download_url=download_url(public_url, row.sha256),
    )


def parse_ref(raw: str | bytes) -> BackboneRef:
    try:
        return BackboneRef.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequestError(f"ref is not a BackboneRef: {first_validation_error(exc)}") from None


def stored_ref(row: Backbone) -> BackboneRef:
    return BackboneRef.model_validate(row.ref)


# --- registry -------------------------------------------------------------------------------------


async def get_backbone(session: AsyncSession, sha256: str) -> Backbone:
    row = await session.get(Backbone, check_sha256(sha256))
    if row is None:
        raise NotFoundError(f"backbone {sha256} is not registered")
    return row


def _check_file(path: Path, sha256: str, ref: BackboneRef, limit: int) -> None:
    """Blocking: size, hashes, and a real ONNX Runtime load with the ref's outputs."""
    size = path.stat().st_size
    if size > limit:
        raise PayloadTooLargeError(f"backbone is {size} bytes; the limit is {limit} bytes")
    actual = sha256_path(path)
    if actual != sha256:
        raise UnprocessableError(f"backbone bytes hash to {actual}, not to {sha256} named in the path")
    if ref.bytes != size:
        raise UnprocessableError(f"ref.bytes is {ref.bytes}, but the file is {size} bytes")
    try:
        runtime = BackboneRuntime(path, ref, ["CPUExecutionProvider"])
    except BackboneError as exc:
        raise UnprocessableError(f"backbone rejected: {exc}") from None
    runtime.close()


def _same_function(a: BackboneRef, b: BackboneRef) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in _FUNCTIONAL_FIELDS)


def _existing(row: Backbone, ref: BackboneRef) -> Backbone:
    if not _same_function(stored_ref(row), ref):
        raise ConflictError(
            f"backbone {row.sha256} is registered with other inputs or outputs "
            f"({', '.join(_FUNCTIONAL_FIELDS)}); a backbone's description is immutable"
        )
    return row


async def register_backbone(
    session: AsyncSession, blobs: BlobStore, sha256: str, ref: BackboneRef, upload: Path, limit: int
) -> tuple[Backbone, bool]:
    """Verify and store an uploaded backbone.onnx. Returns (row, created)."""
    check_sha256(sha256)
    if ref.sha256 != sha256:
        raise UnprocessableError(f"ref.sha256 is {ref.sha256}, but the path names {sha256}")
    existing = await session.get(Backbone, sha256)
    if existing is not None:
        await asyncio.to_thread(_check_hash_only, upload, sha256, limit)
        return _existing(existing, ref), False
    await asyncio.to_thread(_check_file, upload, sha256, ref, limit)
    key = backbone_blob_key(sha256)
    # Blob first, then the row: the key is the content hash, so a racing upload writes the same bytes.
    await blobs.put_file(key, upload, BACKBONE_CONTENT_TYPE)
    stmt = (
        _insert(session, Backbone)
        .values(
            sha256=sha256,
            id=ref.id,
            size_bytes=ref.bytes,
            ref=ref.model_dump(mode="json"),
            blob_key=key,
            created_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["sha256"])
        .returning(Backbone.sha256)
    )
    created = (await session.execute(stmt)).scalar_one_or_none() is not None
    await session.commit()
    row = await session.get(Backbone, sha256, populate_existing=True)
    assert row is not None
    if not created:
        return _existing(row, ref), False
    log.info("backbone registered", extra={"fields": {"sha256": sha256, "id": ref.id, "bytes": ref.bytes}})
    return row, True


def _check_hash_only(path: Path, sha256: str, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise PayloadTooLargeError(f"backbone is {size} bytes; the limit is {limit} bytes")
    actual = sha256_path(path)
    if actual != sha256:
        raise UnprocessableError(f"backbone bytes hash to {actual}, not to {sha256} named in the path")


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise RuntimeError(f"unsupported database dialect {dialect}")


async def download_to(session: AsyncSession, blobs: BlobStore, sha256: str, dest: Path) -> Backbone:
    """Copy the stored backbone.onnx to `dest`; BlobNotFoundError (404) when the blob has gone."""
    row = await get_backbone(session, sha256)
    await blobs.get_to_file(row.blob_key, dest)
    return row


# --- the cloud's own installed copies ---------------------------------------------------------------


def model_root(settings: CloudSettings) -> Path:
    """Where the cloud installs production bundles (and, under backbones/, their backbones)."""
    return settings.data_dir / "models"


class LocalBackbones:
    """The cloud's installed backbones under `model_root`/backbones, with the one `BackbonePool` every
    runtime it loads shares them through, and per-sha256 install locks. One per process (the app's
    lifespan makes it), so all detectors on one backbone share a single ONNX Runtime session."""

    def __init__(self, model_root: Path, tmp_root: Path) -> None:
        self.store = BackboneStore.for_model_root(model_root)
        self.pool = BackbonePool()
        # Downloads land here first, so a partial blob never sits in the store.
        self.tmp_root = tmp_root
        self.locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def for_settings(cls, settings: CloudSettings) -> LocalBackbones:
        return cls(model_root(settings), settings.data_dir / "tmp")


async def ensure_installed(
    local: LocalBackbones, session: AsyncSession, blobs: BlobStore, sha256: str
) -> Path:
    """The verified local backbone.onnx, installed from its blob if absent (single-flight per sha256).

    UnprocessableError when the registry does not know it, BlobNotFoundError when its blob has gone,
    BackboneError when the stored bytes do not hash to the name.
    """
    store = local.store
    if store.has(sha256):
        try:
            return await asyncio.to_thread(store.verify, sha256)
        except BackboneError:
            pass  # damaged: installed again below (install_file replaces a bad copy)
    lock = local.locks.setdefault(sha256, asyncio.Lock())
    async with lock:
        if store.has(sha256):
            try:
                return await asyncio.to_thread(store.verify, sha256)
            except BackboneError:
                pass
        row = await session.get(Backbone, check_sha256(sha256))
        if row is None:
            raise UnprocessableError(
                f"backbone {sha256} is not registered; upload it with PUT /api/v1/backbones/{sha256} first"
            )
        ref = stored_ref(row)
        tmp_root = local.tmp_root
        await asyncio.to_thread(tmp_root.mkdir, parents=True, exist_ok=True)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="backbone-", dir=tmp_root))
        try:
            blob = work / "backbone.onnx"
            await blobs.get_to_file(row.blob_key, blob)
            path = await asyncio.to_thread(store.install_file, blob, ref)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("backbone installed", extra={"fields": {"sha256": sha256, "path": str(path)}})
        return path


# --- embeddings -----------------------------------------------------------------------------------


def parse_ids(raw: str | bytes) -> list[str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadRequestError("image_query_ids must be a JSON array of strings") from None
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 120 for v in value):
        raise BadRequestError("image_query_ids must be a JSON array of image query ids (strings)")
    if len(set(value)) != len(value):
        raise BadRequestError("image_query_ids lists an id more than once")
    if len(value) > MAX_EMBEDDING_ROWS:
        raise PayloadTooLargeError(f"at most {MAX_EMBEDDING_ROWS} embeddings per upload; send batches")
    return value


def parse_vectors(data: bytes, rows: int, dim: int) -> NDArray[np.float16]:
    """The .npy matrix as float16 (rows, dim); BadRequestError for anything else."""
    try:
        matrix = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise BadRequestError("vectors is not a readable .npy file (numpy.save, no pickles)") from None
    if matrix.dtype not in (np.float16, np.float32):
        raise BadRequestError(f"vectors must be float16 (or float32), not {matrix.dtype}")
    if matrix.shape != (rows, dim):
        raise BadRequestError(
            f"vectors has shape {tuple(matrix.shape)}; expected ({rows}, {dim}): one row of the "
            "backbone's embedding_dim per image query id"
        )
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
        out: NDArray[np.float16] = matrix.astype("<f2", copy=False)
    if not np.isfinite(out).all():
        raise BadRequestError("vectors holds values that are not finite (as float16)")
    return out


async def store_embeddings(
    session: AsyncSession, sha256: str, ids: list[str], vectors_npy: bytes
) -> EmbeddingsStored:
    """Insert the rows that are new; rows that exist stay as they are. Unknown ids are reported."""
    row = await get_backbone(session, sha256)
    dim = stored_ref(row).embedding_dim
    matrix = await asyncio.to_thread(parse_vectors, vectors_npy, len(ids), dim)
    known: set[str] = set()
    already: set[str] = set()
    for start in range(0, len(ids), _INSERT_BATCH):
        chunk = ids[start : start + _INSERT_BATCH]
        known.update((await session.scalars(select(ImageQuery.id).where(ImageQuery.id.in_(chunk)))).all())
        already.update(
            (
                await session.scalars(
                    select(ImageEmbedding.image_query_id).where(
                        ImageEmbedding.backbone_sha256 == sha256, ImageEmbedding.image_query_id.in_(chunk)
                    )
                )
            ).all()
        )
    now = datetime.now(UTC)
    values = [
        {
            "image_query_id": iq_id,
            "backbone_sha256": sha256,
            "dim": dim,
            "vector": matrix[i].tobytes(),
            "created_at": now,
        }
        for i, iq_id in enumerate(ids)
        if iq_id in known and iq_id not in already
    ]
    stored = 0
    for start in range(0, len(values), _INSERT_BATCH):
        batch = values[start : start + _INSERT_BATCH]
        stmt = (
            _insert(session, ImageEmbedding)
            .values(batch)
            .on_conflict_do_nothing(index_elements=["image_query_id", "backbone_sha256"])
            .returning(ImageEmbedding.image_query_id)
        )
        stored += len((await session.execute(stmt)).all())
    await session.commit()
    unknown = [iq_id for iq_id in ids if iq_id not in known]
    result = EmbeddingsStored(stored=stored, already=len(known) - stored, unknown=unknown)
    log.info(
        "embeddings stored",
        extra={
            "fields": {"sha256": sha256, "stored": stored, "already": result.already, "unknown": len(unknown)}
        },
    )
    return result


async def embeddings_of(
    session: AsyncSession, detector_id: str, sha256: str
) -> dict[str, NDArray[np.float16]]:
    """image query id -> stored embedding by this backbone, for every query of the detector that has one."""
    rows = await session.execute(
        select(ImageEmbedding.image_query_id, ImageEmbedding.dim, ImageEmbedding.vector).where(
            ImageEmbedding.backbone_sha256 == sha256,
            ImageEmbedding.image_query_id.in_(
                select(ImageQuery.id).where(ImageQuery.detector_id == detector_id)
            ),
        )
    )
    out: dict[str, NDArray[np.float16]] = {}
    for iq_id, dim, vector in rows:
        values = np.frombuffer(vector, dtype="<f2")
        if values.shape == (dim,):
            out[iq_id] = values
    return out
