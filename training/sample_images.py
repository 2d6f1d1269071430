"""Encoded sample images for tests and benchmarks, built from data that ships with installed packages.

Digits come from the MNIST 5k TEST split only, so a served-accuracy check never sees a training
image. Out-of-domain images are tiles of scikit-learn's bundled photos (china.jpg, flower.jpg):
real camera content, nothing like a digit, and available offline.
"""

from __future__ import annotations

import importlib.util
import io
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from training.datasets import mnist_5k_splits

EncodedFormat = Literal["JPEG", "PNG"]
JPEG_QUALITY = 95


def encode_image(
    img: Image.Image, image_format: EncodedFormat = "JPEG", quality: int = JPEG_QUALITY
) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        img.save(buffer, format="JPEG", quality=quality)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_digit_images(n: int, image_format: EncodedFormat = "JPEG", seed: int = 0) -> list[tuple[bytes, int]]:
    """`n` test-split digits as (encoded 28x28 grayscale bytes, label), in a seeded mixed order.

    The split is stored sorted by digit; shuffling means any prefix covers all classes.
    """
    test = mnist_5k_splits().test
    if not 0 <= n <= len(test):
        raise ValueError(f"n must be between 0 and {len(test)} (the test split size)")
    order = np.random.default_rng(seed).permutation(len(test))[:n]
    return [(encode_image(Image.fromarray(test.images[i]), image_format), int(test.labels[i])) for i in order]


SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")


def sample_photo_paths() -> list[Path]:
    """The photos behind `sklearn.datasets.load_sample_images()`, located without importing sklearn.

    Importing sklearn drags scipy and a second OpenMP/BLAS runtime into the training process,
    which only needs two JPEG files.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed; its sample photos are the OOD images")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    paths = [folder / name for name in SAMPLE_PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample photos are missing: {', '.join(missing)}")
    return paths


@lru_cache(maxsize=1)
def _sample_photos() -> tuple[NDArray[np.uint8], ...]:
    photos = []
    for path in sample_photo_paths():
        with Image.open(path) as img:
            photos.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return tuple(photos)


def photo_tiles(n: int, seed: int = 0, min_side: int = 48, max_side: int = 224) -> list[Image.Image]:
    """`n` random square crops of the bundled photos, half of them grayscale, sides in [min, max]."""
    photos = _sample_photos()
    rng = np.random.default_rng(seed)
    tiles: list[Image.Image] = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min_side, min(max_side, h, w) + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        tile = Image.fromarray(photo[y : y + side, x : x + side])
        # Alternate colour mode independently of which photo the tile came from.
        tiles.append(tile.convert("L") if (i // len(photos)) % 2 else tile)
    return tiles


def out_of_domain_images(n: int, seed: int = 0, image_format: EncodedFormat = "JPEG") -> list[bytes]:
    """`n` encoded photo tiles (alternating RGB and grayscale) that no digit detector should trust."""
    return [encode_image(tile, image_format, quality=90) for tile in photo_tiles(n, seed)]
