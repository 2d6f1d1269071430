"""Model bundle: one version of one detector on disk, written by training and verified by everyone.

Two kinds, told apart by the manifest's schema version:

    single-file (schema 1)  <version>/{primary.onnx, oodd.onnx, pipeline_config.yaml,
                                       predictor_metadata.json, model_id.txt, manifest.json}
                            primary.onnx: image → logits and features
    split (schema 2)        <version>/{head.onnx, oodd.onnx, ... the same four files}
                            head.onnx: backbone output (embedding or feature map) → logits and
                            features; the backbone itself is shared (common.backbone) and named in
                            the manifest and metadata by its sha256
    <model_root>/<detector_id>/current -> <version>

A bundle is trusted only after `verify_bundle` has checked every file against the sha256 in its
manifest; a split bundle installs only where its backbone is installed and matches its hash.
Installs are atomic renames so a reader never sees a half-written version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.backbone import BackboneError, BackboneRef, BackboneStore
from common.ids import is_detector_id

MANIFEST_SCHEMA_VERSION = 1
SPLIT_MANIFEST_SCHEMA_VERSION = 2
PRIMARY_FILE = "primary.onnx"
HEAD_FILE = "head.onnx"
OODD_FILE = "oodd.onnx"
PIPELINE_FILE = "pipeline_config.yaml"
METADATA_FILE = "predictor_metadata.json"
MODEL_ID_FILE = "model_id.txt"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (PRIMARY_FILE, OODD_FILE, PIPELINE_FILE, METADATA_FILE, MODEL_ID_FILE)
SPLIT_BUNDLE_FILES = (HEAD_FILE, OODD_FILE, PIPELINE_FILE, METADATA_FILE, MODEL_ID_FILE)
# What a split bundle's head reads: the backbone's pooled embedding, or its feature map.
HEAD_INPUTS = ("embedding", "feature_map")
CURRENT_LINK = "current"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BundleError(Exception):
    """A bundle is missing, malformed or fails verification; the old version keeps serving."""


class DetectorMode(StrEnum):
    BINARY = "BINARY"
    MULTI_CLASS = "MULTI_CLASS"
    COUNT = "COUNT"
    BOUNDING_BOX = "BOUNDING_BOX"


# Modes answered by a detection head (boxes); their bundle labels are the count buckets "0".."max".
BOX_MODES = (DetectorMode.COUNT, DetectorMode.BOUNDING_BOX)


class PipelineConfig(BaseModel):
    """How raw pixels become the primary model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    input_height: int = Field(gt=0, le=4096)
    input_width: int = Field(gt=0, le=4096)
    # "RGBA" carries RGB + depth: depth cameras send the depth map as the fourth plane of a PNG.
    channels: Literal["L", "RGB", "RGBA"] = "RGB"
    mean: list[float]
    std: list[float]
    layout: Literal["NCHW"] = "NCHW"
    resize: Literal["bilinear", "nearest"] = "bilinear"
    input_name: str = "input"
    logits_output: str = "logits"
    features_output: str = "features"

    @model_validator(mode="after")
    def _norm_matches_channels(self) -> PipelineConfig:
        n = len(self.channels)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"mean and std need {n} values for channels={self.channels}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class OoddCalibration(BaseModel):
    """Maps the Mahalanobis distance to an in-domain probability: q = sigmoid((threshold - d) / scale)."""

    threshold: float
    scale: float = Field(gt=0)
    input_name: str = "features"
    output_name: str = "in_domain"


class DetectionSpec(BaseModel):
    """A detection head's extra outputs, beside `logits` (the log of the count distribution over the
    labels 0..max_count, the last bucket meaning "max_count or more") and `features` (for the OODD):

        boxes   (N, max_boxes, 4) float32, normalised (left, top, right, bottom), best score first
        scores  (N, max_boxes)    float32, each box's calibrated probability of being a real object

    Decoding (peak picking, non-maximum suppression, top-k) happens inside head.onnx, so edge, cloud
    and training read the same boxes from the same graph.
    """

    model_config = ConfigDict(extra="forbid")

    class_name: str = "object"
    max_boxes: int = Field(default=100, ge=1, le=1000)
    boxes_output: str = "boxes"
    scores_output: str = "scores"
    # A box is part of the answer when its calibrated score reaches this (before the count decides).
    score_threshold: float = Field(default=0.5, gt=0, lt=1)


class PredictorMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = 1
    detector_id: str
    version: str
    detector_name: str = ""
    query: str = ""
    mode: DetectorMode
    labels: list[str] = Field(min_length=2)
    temperature: float = Field(default=1.0, gt=0)
    default_confidence_threshold: float = Field(default=0.9, ge=0, le=1)
    oodd: OoddCalibration
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""
    # Split bundles only: the shared backbone, and which of its outputs head.onnx reads.
    backbone: BackboneRef | None = None
    head_input: Literal["embedding", "feature_map"] = "embedding"
    # Detection heads only (COUNT and BOUNDING_BOX): see DetectionSpec.
    detection: DetectionSpec | None = None

    @model_validator(mode="after")
    def _labels_fit_mode(self) -> PredictorMetadata:
        if not is_detector_id(self.detector_id):
            raise ValueError(f"detector_id {self.detector_id!r} is not det_ + 27 base62 characters")
        if not VERSION_RE.match(self.version):
            raise ValueError(f"version {self.version!r} is not a safe version id")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.mode is DetectorMode.BINARY and sorted(self.labels) != ["NO", "YES"]:
            raise ValueError("a BINARY detector's labels are NO and YES")
        if self.mode in BOX_MODES and self.labels != [str(i) for i in range(len(self.labels))]:
            raise ValueError(f"a {self.mode.value} detector's labels are 0..max_count in order")
        if self.mode is DetectorMode.BOUNDING_BOX and self.detection is None:
            raise ValueError("a BOUNDING_BOX bundle needs a detection head")
        if self.detection is not None:
            if self.mode not in BOX_MODES:
                raise ValueError(f"a {self.mode.value} detector has no detection head")
            if self.backbone is None or self.head_input != "feature_map":
                raise ValueError("a detection head reads the shared backbone's feature map")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)


class ManifestEntry(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class ManifestBackbone(BaseModel):
    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)


class Manifest(BaseModel):
    schema_version: int
    detector_id: str
    version: str
    files: dict[str, ManifestEntry]
    backbone: ManifestBackbone | None = None

    @property
    def is_split(self) -> bool:
        return self.schema_version == SPLIT_MANIFEST_SCHEMA_VERSION

    @property
    def required_files(self) -> tuple[str, ...]:
        return SPLIT_BUNDLE_FILES if self.is_split else BUNDLE_FILES


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle(
    out_dir: Path,
    primary_onnx: bytes,
    oodd_onnx: bytes,
    pipeline: PipelineConfig,
    metadata: PredictorMetadata,
) -> Manifest:
    """Write a single-file bundle and a manifest of its hashes into `out_dir` (created, must be empty)."""
    if metadata.backbone is not None:
        raise BundleError("metadata names a backbone: write it with write_split_bundle")
    return _write(out_dir, {PRIMARY_FILE: primary_onnx, OODD_FILE: oodd_onnx}, pipeline, metadata)


def write_split_bundle(
    out_dir: Path,
    head_onnx: bytes,
    oodd_onnx: bytes,
    pipeline: PipelineConfig,
    metadata: PredictorMetadata,
) -> Manifest:
    """Write a split bundle (head + OODD; the backbone named by `metadata.backbone`) into `out_dir`."""
    if metadata.backbone is None:
        raise BundleError("a split bundle's metadata must name its backbone")
    return _write(out_dir, {HEAD_FILE: head_onnx, OODD_FILE: oodd_onnx}, pipeline, metadata)


def _write(
    out_dir: Path, graphs: dict[str, bytes], pipeline: PipelineConfig, metadata: PredictorMetadata
) -> Manifest:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} is not empty")
    for name, data in graphs.items():
        (out_dir / name).write_bytes(data)
    (out_dir / PIPELINE_FILE).write_text(yaml.safe_dump(pipeline.model_dump(mode="json"), sort_keys=False))
    (out_dir / METADATA_FILE).write_text(metadata.model_dump_json(indent=2))
    (out_dir / MODEL_ID_FILE).write_text(metadata.version + "\n")
    ref = metadata.backbone
    names = SPLIT_BUNDLE_FILES if ref is not None else BUNDLE_FILES
    manifest = Manifest(
        schema_version=SPLIT_MANIFEST_SCHEMA_VERSION if ref is not None else MANIFEST_SCHEMA_VERSION,
        detector_id=metadata.detector_id,
        version=metadata.version,
        files={
            name: ManifestEntry(sha256=sha256_file(out_dir / name), bytes=(out_dir / name).stat().st_size)
            for name in names
        },
        backbone=ManifestBackbone(id=ref.id, sha256=ref.sha256, bytes=ref.bytes) if ref is not None else None,
    )
    (out_dir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2, exclude_none=True))
    return manifest


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Check presence, sizes and sha256 of every file; raise BundleError naming the first problem."""
    try:
        manifest = Manifest.model_validate_json((bundle_dir / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: {MANIFEST_FILE} is missing") from None
    except ValidationError as exc:
        raise BundleError(f"{bundle_dir}: {MANIFEST_FILE} is malformed: {exc.errors()[0]['msg']}") from None
    if manifest.schema_version not in (MANIFEST_SCHEMA_VERSION, SPLIT_MANIFEST_SCHEMA_VERSION):
        raise BundleError(f"{bundle_dir}: manifest schema {manifest.schema_version} is not supported")
    if manifest.is_split != (manifest.backbone is not None):
        raise BundleError(
            f"{bundle_dir}: manifest schema {manifest.schema_version} and its backbone disagree"
        )
    missing = [name for name in manifest.required_files if name not in manifest.files]
    if missing:
        raise BundleError(f"{bundle_dir}: manifest does not list {', '.join(missing)}")
    for name, entry in manifest.files.items():
        if "/" in name or name.startswith("."):
            raise BundleError(f"{bundle_dir}: manifest names an unsafe path {name!r}")
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is missing")
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise BundleError(f"{bundle_dir}: {name} does not match its sha256 in the manifest")
    model_id = (bundle_dir / MODEL_ID_FILE).read_text().strip()
    if model_id != manifest.version:
        raise BundleError(f"{bundle_dir}: model_id.txt says {model_id!r}, manifest says {manifest.version!r}")
    return manifest


def check_backbone(bundle_dir: Path, manifest: Manifest, store: BackboneStore) -> BackboneRef | None:
    """For a split bundle: its metadata and manifest agree on the backbone, which `store` holds intact."""
    if manifest.backbone is None:
        return None
    ref = read_metadata(bundle_dir).backbone
    if ref is None or ref.sha256 != manifest.backbone.sha256 or ref.bytes != manifest.backbone.bytes:
        raise BundleError(f"{bundle_dir}: predictor_metadata.json and manifest.json name different backbones")
    try:
        store.verify(ref.sha256)
    except BackboneError as exc:
        raise BundleError(f"{bundle_dir}: {exc}") from None
    return ref


def read_pipeline(bundle_dir: Path) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(yaml.safe_load((bundle_dir / PIPELINE_FILE).read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise BundleError(f"{bundle_dir}: {PIPELINE_FILE} is invalid: {exc}") from None


def read_metadata(bundle_dir: Path) -> PredictorMetadata:
    try:
        return PredictorMetadata.model_validate_json((bundle_dir / METADATA_FILE).read_bytes())
    except (OSError, ValidationError) as exc:
        raise BundleError(f"{bundle_dir}: {METADATA_FILE} is invalid: {exc}") from None


def current_bundle_dir(model_root: Path, detector_id: str) -> Path | None:
    """The directory `current` points at, or None. Detector ids are validated before touching disk."""
    if not is_detector_id(detector_id):
        return None
    link = model_root / detector_id / CURRENT_LINK
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if not VERSION_RE.match(target):
        return None
    resolved = model_root / detector_id / target
    return resolved if resolved.is_dir() else None


def list_detectors(model_root: Path) -> list[str]:
    if not model_root.is_dir():
        return []
    return sorted(
        p.name for p in model_root.iterdir() if is_detector_id(p.name) and (p / CURRENT_LINK).exists()
    )


def install_bundle(src_dir: Path, model_root: Path, keep: int = 2) -> Path:
    """Copy a verified bundle into place and repoint `current` atomically; keep the `keep` newest."""
    manifest = verify_bundle(src_dir)
    metadata = read_metadata(src_dir)
    if metadata.detector_id != manifest.detector_id or metadata.version != manifest.version:
        raise BundleError(f"{src_dir}: metadata and manifest disagree on detector or version")
    # A split bundle goes live only beside the backbone it was trained on (installed first).
    check_backbone(src_dir, manifest, BackboneStore.for_model_root(model_root))
    det_dir = model_root / manifest.detector_id
    det_dir.mkdir(parents=True, exist_ok=True)
    final = det_dir / manifest.version
    if final.exists():
        verify_bundle(final)  # an existing copy goes live only if it is still intact
    else:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=det_dir))
        try:
            for name in (*manifest.required_files, MANIFEST_FILE):
                shutil.copy2(src_dir / name, staging / name)
            verify_bundle(staging)
            _fsync_dir(staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _point_current(det_dir, manifest.version)
    _prune_versions(det_dir, keep)
    return final


def _point_current(det_dir: Path, version: str) -> None:
    tmp_link = det_dir / f".{CURRENT_LINK}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(version, tmp_link)
    os.replace(tmp_link, det_dir / CURRENT_LINK)
    _fsync_dir(det_dir)


def _prune_versions(det_dir: Path, keep: int) -> None:
    current = os.readlink(det_dir / CURRENT_LINK)
    versions = sorted(
        (p for p in det_dir.iterdir() if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    kept = 0
    for path in versions:
        if path.name == current or kept < keep - 1:
            kept += path.name != current
            continue
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bundle_bytes(bundle_dir: Path) -> int:
    """Bytes of the bundle's own graphs (a shared backbone is counted where it is loaded, once)."""
    graph = HEAD_FILE if (bundle_dir / HEAD_FILE).is_file() else PRIMARY_FILE
    return sum((bundle_dir / name).stat().st_size for name in (graph, OODD_FILE))


def manifest_dict(bundle_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    return data
