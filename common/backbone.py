"""Shared backbones: one `backbone.onnx` (image → pooled embedding and a feature map) named by its sha256.

A split bundle (common.bundle) carries only a detector's head and OODD (kilobytes) and names the
backbone it was trained on by content hash. Every detector trained on the same backbone uses the same
file, installed once per model root:

    <model_root>/backbones/<sha256>/backbone.onnx
    <model_root>/backbones/<sha256>/backbone.json     the BackboneRef it was installed with

A backbone file is trusted only when its bytes hash to its name; `BackboneStore.verify` checks that
(once per file state, so a head load does not re-hash 13 MB every time) and installs are atomic
renames, like bundles.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BACKBONES_DIR = "backbones"
BACKBONE_FILE = "backbone.onnx"
BACKBONE_INFO_FILE = "backbone.json"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A backbone of a few tens of MB is expected; anything far larger is refused before it fills a disk.
MAX_BACKBONE_BYTES = 256 * 1024 * 1024


class BackboneError(Exception):
    """A backbone is missing, malformed or does not match its hash; heads that need it cannot serve."""


class BackboneRef(BaseModel):
    """What a split bundle says about the backbone it needs (in predictor_metadata.json)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(
        min_length=1, max_length=200, description="architecture and weights, e.g. efficientnet-lite0/imagenet"
    )
    sha256: str = Field(pattern=SHA256_RE.pattern, description="sha256 of backbone.onnx")
    bytes: int = Field(gt=0, le=MAX_BACKBONE_BYTES)
    input_name: str = "input"
    embedding_output: str = "embedding"
    embedding_dim: int = Field(gt=0, le=65536)
    feature_map_output: str | None = "feature_map"
    feature_map_shape: list[int] | None = Field(default=None, description="C, H, W of the feature map")
    weights_sha256: str = Field(default="", description="sha256 of the pretrained weights it was built from")
    source: str = Field(default="", description="where the weights come from (package and version)")
    parts: dict[str, list[int]] = Field(
        default_factory=dict, description="named column ranges [start, end) of the embedding, e.g. stats"
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BackboneStore:
    """The backbones of one model root (edge, cloud copy, trainer scratch)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_model_root(cls, model_root: Path) -> BackboneStore:
        return cls(model_root / BACKBONES_DIR)

    def _dir(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise BackboneError(f"backbone id {sha256!r} is not a sha256")
        return self.root / sha256

    def path(self, sha256: str) -> Path:
        return self._dir(sha256) / BACKBONE_FILE

    def has(self, sha256: str) -> bool:
        return SHA256_RE.match(sha256) is not None and self.path(sha256).is_file()

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if SHA256_RE.match(p.name) and (p / BACKBONE_FILE).is_file()
        )

    def info(self, sha256: str) -> BackboneRef | None:
        try:
            return BackboneRef.model_validate_json((self._dir(sha256) / BACKBONE_INFO_FILE).read_bytes())
        except (OSError, ValidationError):
            return None

    def verify(self, sha256: str) -> Path:
        """The file's path once its bytes hash to `sha256`; BackboneError when missing or different."""
        path = self.path(sha256)
        try:
            st = path.stat()
        except OSError:
            raise BackboneError(f"backbone {sha256[:12]} is not installed") from None
        state = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._verified.get(sha256) == state:
                return path
        if sha256_path(path) != sha256:
            raise BackboneError(f"backbone {sha256[:12]} does not match its sha256")
        with self._lock:
            self._verified[sha256] = state
        return path

    def install_file(self, src: Path, ref: BackboneRef | None = None) -> Path:
        """Copy `src` in under its own hash (checked against `ref.sha256` when given); idempotent."""
        actual = sha256_path(src)
        if ref is not None and actual != ref.sha256:
            raise BackboneError(f"backbone file hashes to {actual[:12]}, expected {ref.sha256[:12]}")
        if ref is not None and src.stat().st_size != ref.bytes:
            raise BackboneError(f"backbone file is {src.stat().st_size} bytes, expected {ref.bytes}")
        final_dir = self._dir(actual)
        if final_dir.is_dir():
            try:
                self.verify(actual)
                if ref is not None and self.info(actual) is None:
                    _write_atomic(final_dir / BACKBONE_INFO_FILE, ref.model_dump_json(indent=2).encode())
                return final_dir / BACKBONE_FILE
            except BackboneError:
                shutil.rmtree(final_dir, ignore_errors=True)  # a damaged copy is replaced
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            shutil.copyfile(src, staging / BACKBONE_FILE)
            if sha256_path(staging / BACKBONE_FILE) != actual:
                raise BackboneError("backbone file changed while it was copied")
            if ref is not None:
                (staging / BACKBONE_INFO_FILE).write_bytes(ref.model_dump_json(indent=2).encode())
            _fsync(staging / BACKBONE_FILE)
            try:
                os.rename(staging, final_dir)
            except OSError:
                if not final_dir.is_dir():  # not a concurrent install of the same backbone
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.verify(actual)

    def install_bytes(self, data: bytes, ref: BackboneRef | None = None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return self.install_file(Path(name), ref)
        finally:
            Path(name).unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        shutil.rmtree(self._dir(sha256), ignore_errors=True)
        with self._lock:
            self._verified.pop(sha256, None)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
