"""Demo bundles for tests, built once and reused while the training code is unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.backbones import BuiltBackbone

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "build" / "test-models"


def _code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.joinpath("training").glob("*.py"), ROOT / "common" / "bundle.py"]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def demo_model_root() -> Path:
    """A model root holding the demo detectors; rebuilt only when training code changes."""
    from training.demo_bundles import DEMO_DIGIT_ID, DEMO_SEVEN_ID, build_demo_bundles

    target = CACHE_DIR / _code_hash()
    if all((target / d / "current").exists() for d in (DEMO_DIGIT_ID, DEMO_SEVEN_ID)):
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
    build_demo_bundles(staging, threads=1)  # deterministic weights, and fast on a busy machine
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
    return target


def copy_model_root(src: Path, dst: Path) -> Path:
    """A private copy (symlinks kept) for tests that install, tamper with or remove bundles."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def clone_bundle(src_bundle: Path, detector_id: str, model_root: Path, version: str | None = None) -> Path:
    """Install a copy of a bundle under another detector id (same weights), as a new verified bundle."""
    from common.bundle import (
        OODD_FILE,
        PRIMARY_FILE,
        install_bundle,
        read_metadata,
        read_pipeline,
        write_bundle,
    )

    meta = read_metadata(src_bundle).model_copy(update={"detector_id": detector_id})
    if version is not None:
        meta = meta.model_copy(update={"version": version})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle"
        write_bundle(
            out,
            (src_bundle / PRIMARY_FILE).read_bytes(),
            (src_bundle / OODD_FILE).read_bytes(),
            read_pipeline(src_bundle),
            meta,
        )
        return install_bundle(out, model_root)


BACKBONE_CACHE = ROOT / "build" / "backbones"


def lite0_backbone() -> BuiltBackbone:
    """The real EfficientNet-Lite0 backbone, exported once per checkout into build/backbones."""
    from training.backbones import build_backbone

    return build_backbone(cache_dir=BACKBONE_CACHE)


def png_bytes(image) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def fashion_embeddings(count: int):  # -> (embeddings float16 (count, D), labels (count,), images uint8)
    """The first `count` Fashion-MNIST test images embedded by Lite0, cached under build/test-models."""
    import numpy as np

    from training.datasets import load_fashion_mnist
    from training.embeddings import Embedder

    backbone = lite0_backbone()
    images, labels = load_fashion_mnist("t10k")
    path = CACHE_DIR / f"fashion-{backbone.ref.sha256[:12]}-{count}.npy"
    if not path.is_file():
        embedder = Embedder(backbone)
        try:
            vectors = embedder.embeddings([png_bytes(images[i]) for i in range(count)]).vectors
        finally:
            embedder.close()
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors.astype(np.float16))
        os.replace(tmp, path)
    return np.load(path), labels[:count], images[:count]
