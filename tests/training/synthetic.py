"""Small dataset exports for training tests: MNIST digits, counting squares, RGB+depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from common.bundle import DetectorMode
from training.dataset_export import ExportDetector, ExportSample, write_export
from training.datasets import load_mnist_5k


def detector_id(body: str) -> str:
    return f"det_{body:0<27}"


def digit_samples(n: int, seed: int = 0, binary_digit: int | None = None) -> list[ExportSample]:
    """`n` digits in a seeded order; labels are the digit, or YES/NO for `binary_digit`."""
    images, labels = load_mnist_5k()
    order = np.random.default_rng(seed).permutation(labels.shape[0])[:n]
    out = []
    for i in order:
        digit = int(labels[i])
        label = str(digit) if binary_digit is None else ("YES" if digit == binary_digit else "NO")
        out.append(ExportSample(f"iq_digit{i:04d}", label, images[i], labeled_at="2026-01-01T00:00:00Z"))
    return out


def digit_detector(binary_digit: int | None = None, name: str = "test-digits") -> ExportDetector:
    if binary_digit is not None:
        return ExportDetector(
            id=detector_id("TestIsSeven"),
            name=name,
            query=f"Is this a {binary_digit}?",
            mode=DetectorMode.BINARY,
            labels=["YES", "NO"],
        )
    labels = [str(d) for d in range(10)]
    return ExportDetector(
        id=detector_id("TestWhichDigit"),
        name=name,
        query="Which digit?",
        mode=DetectorMode.MULTI_CLASS,
        labels=labels,
        mode_configuration={"class_names": labels, "num_classes": 10},
    )


def write_digit_export(
    path: Path, n: int, binary_digit: int | None = None, unclear: int = 0, name: str = "test-digits"
) -> Path:
    samples = digit_samples(n, binary_digit=binary_digit)
    for i in range(unclear):
        samples[i] = ExportSample(samples[i].image_query_id, "UNCLEAR", samples[i].image)
    write_export(path, digit_detector(binary_digit, name), samples, created_at="2026-01-02T00:00:00Z")
    return path


def count_image(k: int, rng: np.random.Generator, side: int = 32) -> NDArray[np.uint8]:
    """`k` bright 6x6 squares, one per chosen cell of a 2x2 grid, on a dark background."""
    img = rng.integers(0, 30, (side, side)).astype(np.uint8)
    cell = side // 2
    for c in rng.permutation(4)[:k]:
        y0, x0 = (c // 2) * cell, (c % 2) * cell
        y, x = y0 + int(rng.integers(2, cell - 8)), x0 + int(rng.integers(2, cell - 8))
        img[y : y + 6, x : x + 6] = 230
    return img


def write_count_export(path: Path, n: int, max_count: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        k = i % (max_count + 1)
        samples.append(ExportSample(f"iq_count{i:04d}", str(k), count_image(k, rng)))
    detector = ExportDetector(
        id=detector_id("TestCountSquares"),
        name="test-count",
        query="How many squares?",
        mode=DetectorMode.COUNT,
        labels=[str(k) for k in range(max_count + 1)],
        mode_configuration={"class_name": "square", "max_count": max_count},
    )
    write_export(path, detector, samples)
    return path


def depth_image(near: bool, rng: np.random.Generator, side: int = 16) -> NDArray[np.uint8]:
    """RGB noise that says nothing, and a depth plane that says whether the object is near."""
    rgba = rng.integers(0, 256, (side, side, 4)).astype(np.uint8)
    base = 200 if near else 60
    rgba[:, :, 3] = np.clip(base + rng.integers(-20, 21, (side, side)), 0, 255).astype(np.uint8)
    return rgba


def write_depth_export(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        near = bool(i % 2)
        samples.append(ExportSample(f"iq_depth{i:04d}", "YES" if near else "NO", depth_image(near, rng)))
    detector = ExportDetector(
        id=detector_id("TestIsNear"),
        name="test-depth",
        query="Is the part close to the camera?",
        mode=DetectorMode.BINARY,
        labels=["YES", "NO"],
    )
    write_export(path, detector, samples)
    return path
