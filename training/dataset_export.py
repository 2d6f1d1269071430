"""The cloud's dataset export: one detector's labelled images as a tar.gz with a JSON manifest.

    manifest.json   {format_version, detector: {id, name, query, mode, labels, mode_configuration},
                     created_at, items: [{image_query_id, label, source, labeled_at,
                                          image: "images/<image_query_id>.<ext>" | null, content_type,
                                          rois: [{label, score, geometry}] | null}],
                     embeddings: {<backbone sha256>: {file, dim, dtype, image_query_ids}}}
    images/...      the image files the items name
    embeddings/<sha256>.npy   format 2: float16 (count, dim) embeddings by that backbone, one row per
                    id in its `image_query_ids`; an item may then come without its image

Format 3 adds each item's `rois` (the boxes that came with its label, common.wire.device_api.Roi);
formats 1 and 2 read as items without boxes.

`read_export` takes such a file apart (defensively: only regular files named by the manifest are
read, paths are checked, sizes bounded); `write_export` makes one from in-memory images, so tests
and benchmarks can produce exports without a cloud. UNCLEAR answers stay in the export (they are
part of the record) and are skipped for training.

Splits are per item, from a hash of its image_query_id (`item_split`): an item keeps its split
across exports, label additions and code changes, so every version of a detector is tested on the
same items and a test image never becomes a training image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.bundle import DetectorMode
from common.error_detail import first_validation_error
from common.imaging import ImageFormat, content_type_of, sniff_format
from common.wire.device_api import Roi
from training.datasets import SplitName, split_of

EXPORT_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
EMBEDDINGS_DIR = "embeddings"
MAX_EMBEDDINGS_BYTES = 1024 * 1024 * 1024
UNCLEAR = "UNCLEAR"
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}


class ExportError(ValueError):
    """The export file is malformed, unsafe or inconsistent; nothing should be trained from it."""


def _labels_as_text(value: Any) -> Any:
    """COUNT labels may arrive as numbers; the bundle format (and the cloud) spell them as text."""
    if isinstance(value, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class ExportDetector(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    query: str = ""
    mode: DetectorMode
    labels: list[str] = Field(min_length=2)
    mode_configuration: dict[str, Any] | None = None

    _text_labels = field_validator("labels", mode="before")(_labels_as_text)

    @model_validator(mode="after")
    def _labels_fit_mode(self) -> ExportDetector:
        if len(set(self.labels)) != len(self.labels) or UNCLEAR in self.labels:
            raise ValueError(f"labels must be unique and must not include {UNCLEAR}")
        if self.mode is DetectorMode.BINARY and sorted(self.labels) != ["NO", "YES"]:
            raise ValueError("a BINARY detector's labels are YES and NO")
        if self.mode is DetectorMode.COUNT and self.labels != [str(i) for i in range(len(self.labels))]:
            raise ValueError("a COUNT detector's labels are 0..max_count in order")
        return self


class ExportItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    image_query_id: str = Field(min_length=1, max_length=200)
    label: str
    source: str = ""
    labeled_at: str = ""
    image: str | None
    content_type: str = ""
    # Format 3: the label's boxes (normalised 0..1); None when none came with it, and in older formats.
    rois: list[Roi] | None = None

    _text_label = field_validator("label", mode="before")(_labels_as_text)

    @field_validator("image")
    @classmethod
    def _safe_image_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        folder, _, name = value.partition("/")
        if folder != IMAGES_DIR or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"image path {value!r} is not {IMAGES_DIR}/<file name>")
        return value


class ExportEmbeddingsEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str
    dim: int = Field(gt=0, le=65536)
    dtype: str = "float16"
    image_query_ids: list[str]

    @field_validator("file")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        folder, _, name = value.partition("/")
        if folder != EMBEDDINGS_DIR or not name.endswith(".npy") or "/" in name or name.startswith("."):
            raise ValueError(f"embeddings path {value!r} is not {EMBEDDINGS_DIR}/<sha256>.npy")
        return value


class ExportManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int
    detector: ExportDetector
    created_at: str = ""
    items: list[ExportItem]
    embeddings: dict[str, ExportEmbeddingsEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ExportManifest:
        if self.format_version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"format_version {self.format_version} is not supported "
                f"(this reader knows {', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
            )
        ids = Counter(item.image_query_id for item in self.items)
        dup = [k for k, n in ids.items() if n > 1]
        if dup:
            raise ValueError(f"image_query_id {dup[0]!r} appears {ids[dup[0]]} times")
        images = Counter(item.image for item in self.items if item.image is not None)
        shared = [k for k, n in images.items() if n > 1]
        if shared:
            raise ValueError(f"image {shared[0]!r} is named by more than one item")
        allowed = {*self.detector.labels, UNCLEAR}
        bad = [item for item in self.items if item.label not in allowed]
        if bad:
            raise ValueError(
                f"item {bad[0].image_query_id!r} has label {bad[0].label!r}, "
                f"not one of the detector's labels or {UNCLEAR}"
            )
        known = set(ids)
        for sha, entry in self.embeddings.items():
            if entry.file != f"{EMBEDDINGS_DIR}/{sha}.npy":
                raise ValueError(f"embeddings of {sha[:12]} must be in {EMBEDDINGS_DIR}/{sha}.npy")
            strangers = [i for i in entry.image_query_ids if i not in known]
            if strangers:
                raise ValueError(f"embeddings name {strangers[0]!r}, which is not an item")
        covered = {i for entry in self.embeddings.values() for i in entry.image_query_ids}
        bare = [i.image_query_id for i in self.items if i.image is None and i.image_query_id not in covered]
        if bare:
            raise ValueError(f"item {bare[0]!r} has neither an image nor an embedding")
        return self


def item_split(
    image_query_id: str,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> SplitName:
    """train / val / test for one item, from the sha256 of its image_query_id alone."""
    return split_of(image_query_id, val_fraction, test_fraction)


@dataclass(frozen=True)
class LabelSnapshot:
    """What a model was trained from: how many labelled items, and a hash of (id, label) pairs."""

    count: int
    sha256: str
    per_label: dict[str, int]
    unclear_skipped: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sha256": self.sha256,
            "per_label": dict(self.per_label),
            "unclear_skipped": self.unclear_skipped,
        }


@dataclass(frozen=True)
class DatasetExport:
    """A parsed export: the manifest, each item's image bytes and embeddings, keyed by image_query_id.

    `embeddings[backbone_sha256]` is a float16 (n, dim) matrix with `embedding_ids[backbone_sha256]`
    naming its rows.
    """

    manifest: ExportManifest
    images: Mapping[str, bytes] = field(repr=False)
    source: str = ""
    embeddings: Mapping[str, NDArray[np.float16]] = field(default_factory=dict, repr=False)
    embedding_ids: Mapping[str, list[str]] = field(default_factory=dict, repr=False)

    def has_image(self, item: ExportItem) -> bool:
        return item.image_query_id in self.images

    def embeddings_by(self, backbone_sha256: str) -> dict[str, NDArray[np.float16]]:
        """image_query_id -> its stored embedding by this backbone (rows of the export's matrix)."""
        matrix = self.embeddings.get(backbone_sha256)
        if matrix is None:
            return {}
        return {iq: matrix[i] for i, iq in enumerate(self.embedding_ids[backbone_sha256])}

    @property
    def detector(self) -> ExportDetector:
        return self.manifest.detector

    def trainable_items(self) -> list[ExportItem]:
        """Items with a real answer (UNCLEAR skipped), in manifest order."""
        return [item for item in self.manifest.items if item.label != UNCLEAR]

    def unclear_items(self) -> list[ExportItem]:
        """Items reviewers answered UNCLEAR: what the detector should not answer with confidence."""
        return [item for item in self.manifest.items if item.label == UNCLEAR]

    def image_bytes(self, item: ExportItem) -> bytes:
        try:
            return self.images[item.image_query_id]
        except KeyError:
            raise ExportError(
                f"item {item.image_query_id} came without its image (only its embedding)"
            ) from None

    def splits(
        self, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION
    ) -> dict[SplitName, list[ExportItem]]:
        out: dict[SplitName, list[ExportItem]] = {"train": [], "val": [], "test": []}
        for item in self.trainable_items():
            out[item_split(item.image_query_id, val_fraction, test_fraction)].append(item)
        return out

    def label_snapshot(self) -> LabelSnapshot:
        """Order-independent: the hash covers the sorted `id<TAB>label` lines of trainable items."""
        items = self.trainable_items()
        digest = hashlib.sha256()
        for iq_id, label in sorted((i.image_query_id, i.label) for i in items):
            digest.update(f"{iq_id}\t{label}\n".encode())
        counts = Counter(i.label for i in items)
        return LabelSnapshot(
            count=len(items),
            sha256=digest.hexdigest(),
            per_label={label: counts.get(label, 0) for label in self.detector.labels},
            unclear_skipped=len(self.manifest.items) - len(items),
        )


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def read_export(path: Path, max_image_bytes: int = MAX_IMAGE_BYTES) -> DatasetExport:
    """Parse an export tar.gz in one sequential pass; ExportError on anything malformed or unsafe.

    Only regular-file members named `manifest.json` or named by an item are read; links, devices
    and other files are ignored, and no path is ever extracted to disk.
    """
    manifest_raw, blobs = _read_members(path, max_image_bytes)
    manifest = _parse_manifest(path, manifest_raw)
    images = _item_images(path, manifest, blobs)
    matrices: dict[str, NDArray[np.float16]] = {}
    for sha, entry in manifest.embeddings.items():
        matrices[sha] = _embedding_matrix(path, entry, blobs.get(entry.file))
    return DatasetExport(
        manifest=manifest,
        images=images,
        source=str(path),
        embeddings=matrices,
        embedding_ids={sha: list(entry.image_query_ids) for sha, entry in manifest.embeddings.items()},
    )


def _member_limit(name: str, max_image_bytes: int) -> int:
    """Each kind of member has its own size cap, so a hostile archive cannot exhaust memory."""
    if name == MANIFEST_NAME:
        return MAX_MANIFEST_BYTES
    if name.startswith(EMBEDDINGS_DIR + "/"):
        return MAX_EMBEDDINGS_BYTES
    return max_image_bytes


def _read_members(path: Path, max_image_bytes: int) -> tuple[bytes | None, dict[str, bytes]]:
    """(manifest bytes, other wanted members by name) in one streaming pass: a .tar.gz cannot seek."""
    manifest_raw: bytes | None = None
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = _member_name(member)
                limit = _member_limit(name, max_image_bytes)
                if not (
                    name == MANIFEST_NAME
                    or name.startswith(IMAGES_DIR + "/")
                    or name.startswith(EMBEDDINGS_DIR + "/")
                ):
                    continue
                if member.size > limit:
                    raise ExportError(f"{path}: {name} is {member.size} bytes, over the {limit}-byte limit")
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                data = fh.read()
                if name == MANIFEST_NAME:
                    manifest_raw = data
                else:
                    blobs[name] = data
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ExportError(f"{path}: not a readable tar.gz: {exc}") from None
    return manifest_raw, blobs


def _parse_manifest(path: Path, manifest_raw: bytes | None) -> ExportManifest:
    """The manifest, with the first validation error named by where it is (for whoever made the file)."""
    if manifest_raw is None:
        raise ExportError(f"{path}: {MANIFEST_NAME} is missing")
    try:
        return ExportManifest.model_validate_json(manifest_raw)
    except ValidationError as exc:
        raise ExportError(
            f"{path}: {MANIFEST_NAME} is invalid at {first_validation_error(exc, '<root>')}"
        ) from None


def _item_images(path: Path, manifest: ExportManifest, blobs: dict[str, bytes]) -> dict[str, bytes]:
    """image_query_id -> image bytes; an item naming an image the archive lacks is an error, not a skip."""
    images: dict[str, bytes] = {}
    for item in manifest.items:
        if item.image is None:
            continue
        blob = blobs.get(item.image)
        if blob is None:
            raise ExportError(
                f"{path}: {item.image} (item {item.image_query_id}) is missing from the archive"
            )
        images[item.image_query_id] = blob
    return images


def _embedding_matrix(path: Path, entry: ExportEmbeddingsEntry, blob: bytes | None) -> NDArray[np.float16]:
    """The .npy member of one backbone's embeddings, checked against its manifest entry."""
    if blob is None:
        raise ExportError(f"{path}: {entry.file} is missing from the archive")
    try:
        matrix = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ExportError(f"{path}: {entry.file} is not a readable .npy file: {exc}") from None
    expected = (len(entry.image_query_ids), entry.dim)
    if matrix.dtype != np.float16 or matrix.shape != expected:
        raise ExportError(
            f"{path}: {entry.file} is {matrix.dtype} {matrix.shape}, expected float16 {expected}"
        )
    if not np.isfinite(matrix).all():
        raise ExportError(f"{path}: {entry.file} holds values that are not finite")
    out: NDArray[np.float16] = matrix
    return out


ImageLike = bytes | Image.Image | NDArray[np.uint8]


@dataclass(frozen=True)
class ExportSample:
    """One labelled image to write: encoded bytes, a PIL image or a uint8 array (PNG-encoded)."""

    image_query_id: str
    label: str
    image: ImageLike
    source: str = "HUMAN"
    labeled_at: str = ""
    rois: list[Roi] | None = None


def encode_png(image: Image.Image | NDArray[np.uint8]) -> bytes:
    """PNG bytes of a PIL image or a uint8 array: (H, W) → L, (H, W, 3) → RGB, (H, W, 4) → RGBA."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _encoded(image: ImageLike) -> tuple[bytes, str, str]:
    data = image if isinstance(image, bytes) else encode_png(image)
    fmt = sniff_format(data)
    if fmt is None or fmt not in _EXTENSIONS:
        raise ExportError("image bytes are not JPEG, PNG, BMP or WebP")
    return data, _EXTENSIONS[fmt], content_type_of(ImageFormat(fmt))


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_export(
    path: Path,
    detector: ExportDetector,
    samples: Iterable[ExportSample],
    created_at: str = "",
    embeddings: Mapping[str, Mapping[str, NDArray[np.floating]]] | None = None,
    omit_embedded_images: bool = False,
) -> ExportManifest:
    """Write an export file the reader (and the cloud's format) accepts; atomic, byte-reproducible.

    `embeddings[backbone_sha256][image_query_id]` adds stored embeddings (as the cloud does); with
    `omit_embedded_images` an item that has one comes without its image, like an export asked for
    with images="missing". The manifest is validated before anything is written, so a bad label or a
    duplicate id raises ExportError instead of producing a file nobody can train from.
    """
    vectors = embeddings or {}
    embedded = {iq for by_id in vectors.values() for iq in by_id}
    entries: list[tuple[ExportItem, bytes | None]] = []
    for sample in samples:
        if omit_embedded_images and sample.image_query_id in embedded:
            item = ExportItem(
                image_query_id=sample.image_query_id,
                label=sample.label,
                source=sample.source,
                labeled_at=sample.labeled_at,
                image=None,
                rois=sample.rois,
            )
            entries.append((item, None))
            continue
        data, ext, content_type = _encoded(sample.image)
        item = ExportItem(
            image_query_id=sample.image_query_id,
            label=sample.label,
            source=sample.source,
            labeled_at=sample.labeled_at,
            image=f"{IMAGES_DIR}/{sample.image_query_id}.{ext}",
            content_type=content_type,
            rois=sample.rois,
        )
        entries.append((item, data))
    npy: dict[str, bytes] = {}
    listed: dict[str, ExportEmbeddingsEntry] = {}
    for sha, by_id in vectors.items():
        ids = [item.image_query_id for item, _ in entries if item.image_query_id in by_id]
        matrix = np.stack([np.asarray(by_id[i], dtype=np.float16) for i in ids]) if ids else None
        if matrix is None:
            continue
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        npy[sha] = buffer.getvalue()
        listed[sha] = ExportEmbeddingsEntry(
            file=f"{EMBEDDINGS_DIR}/{sha}.npy", dim=int(matrix.shape[1]), image_query_ids=ids
        )
    try:
        manifest = ExportManifest(
            format_version=EXPORT_FORMAT_VERSION,
            detector=detector,
            created_at=created_at,
            items=[item for item, _ in entries],
            embeddings=listed,
        )
    except ValidationError as exc:
        raise ExportError(f"export would be invalid: {exc.errors()[0]['msg']}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _tar_add(tar, MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=1).encode())
            for item, image in entries:
                if item.image is not None and image is not None:
                    _tar_add(tar, item.image, image)
            for sha, blob in npy.items():
                _tar_add(tar, f"{EMBEDDINGS_DIR}/{sha}.npy", blob)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return manifest
