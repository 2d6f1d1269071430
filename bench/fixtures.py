"""What the benchmark runs on: a model root with both bundles, and the frames it sends.

The digit bundle comes from the test cache (`build/test-models`, filled by
`tests.support.models.demo_model_root`, which trains it if no cached one verifies). The camera-size
bundle has random weights and is built here, next to a copy of the digit bundle, under
`build/bench-models/<training code hash>/`; later runs reuse it, so they start in seconds.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.bundle import BundleError, current_bundle_dir, read_metadata, read_pipeline, verify_bundle

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "build" / "bench-models"
TEST_CACHE_DIR = ROOT / "build" / "test-models"  # where tests.support.models caches the demo bundles
CAMERA_FRAME_SIZE = (640, 480)
CAMERA_JPEG_QUALITY = 90


@dataclass(frozen=True)
class BenchBundle:
    """One detector under test and the encoded frames sent to it (cycled through by every client)."""

    key: str
    detector_id: str
    version: str
    input_desc: str
    frames: list[bytes]

    @property
    def mean_frame_bytes(self) -> int:
        return sum(len(f) for f in self.frames) // len(self.frames)


def _code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.joinpath("training").glob("*.py"), ROOT / "common" / "bundle.py"]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _usable(model_root: Path, detector_ids: tuple[str, ...]) -> bool:
    """Every detector has a current bundle that this checkout's runtime accepts."""
    for detector_id in detector_ids:
        path = current_bundle_dir(model_root, detector_id)
        if path is None:
            return False
        try:
            verify_bundle(path)
            read_metadata(path)
            read_pipeline(path)
        except (BundleError, ValueError, OSError):
            return False
    return True


def _newest_usable(parent: Path, detector_ids: tuple[str, ...]) -> Path | None:
    if not parent.is_dir():
        return None
    candidates = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if _usable(path, detector_ids):
            return path
    return None


def bench_model_root(rebuild: bool = False) -> Path:
    """A model root holding the demo digit detector and the camera-size detector.

    Any cached root whose bundles still verify is reused (newest first), even if the training code
    changed since: a benchmark needs bundles of the right shape, not the latest training recipe.
    `rebuild` builds a fresh one for the current training code.
    """
    from training.demo_bundles import DEMO_CAMERA_ID, DEMO_DIGIT_ID, build_camera_bundle

    both = (DEMO_DIGIT_ID, DEMO_CAMERA_ID)
    target = CACHE_DIR / _code_hash()
    if not rebuild:
        cached = _newest_usable(CACHE_DIR, both)
        if cached is not None:
            return cached
    digit_root = None if rebuild else _newest_usable(TEST_CACHE_DIR, (DEMO_DIGIT_ID,))
    if digit_root is None:
        from tests.support.models import demo_model_root

        digit_root = demo_model_root()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
    try:
        shutil.copytree(digit_root / DEMO_DIGIT_ID, staging / DEMO_DIGIT_ID, symlinks=True)
        build_camera_bundle(staging, DEMO_CAMERA_ID)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def bundle_dir(model_root: Path, detector_id: str) -> Path:
    path = current_bundle_dir(model_root, detector_id)
    if path is None:
        raise FileNotFoundError(f"no current bundle for {detector_id} under {model_root}")
    return path


def digit_frames(n: int) -> list[bytes]:
    """28x28 grayscale JPEGs from the MNIST test split (what the digit detector was trained on)."""
    from training.sample_images import demo_digit_images

    return [data for data, _ in demo_digit_images(n)]


def camera_frames(n: int, size: tuple[int, int] = CAMERA_FRAME_SIZE) -> list[bytes]:
    """Camera-like RGB JPEG frames: crops of real photos resized to `size`."""
    from training.sample_images import photo_tiles

    frames = []
    for tile in photo_tiles(n, seed=1, min_side=200, max_side=420):
        buffer = io.BytesIO()
        tile.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(
            buffer, format="JPEG", quality=CAMERA_JPEG_QUALITY
        )
        frames.append(buffer.getvalue())
    return frames


def load_bundles(
    model_root: Path, keys: list[str], n_digit: int = 64, n_camera: int = 16
) -> list[BenchBundle]:
    from training.demo_bundles import DEMO_CAMERA_ID, DEMO_DIGIT_ID

    bundles = []
    for key in keys:
        if key == "digit":
            detector_id, frames = DEMO_DIGIT_ID, digit_frames(n_digit)
        elif key == "camera":
            detector_id, frames = DEMO_CAMERA_ID, camera_frames(n_camera)
        else:
            raise ValueError(f"unknown bundle {key!r}; choose digit or camera")
        path = bundle_dir(model_root, detector_id)
        meta, pipe = read_metadata(path), read_pipeline(path)
        desc = f"{pipe.input_width}x{pipe.input_height} {pipe.channels}"
        bundles.append(BenchBundle(key, detector_id, meta.version, desc, frames))
    return bundles
