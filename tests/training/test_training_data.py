"""Dataset loading, hash splits, preprocessing parity with the runtime, and sample images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from training.datasets import load_mnist_5k, mnist_5k_splits, split_of
from training.demo_bundles import DEMO_PIPELINE
from training.preprocess import images_to_tensor, normalize_uint8
from training.sample_images import demo_digit_images, out_of_domain_images
from training.training_loop import random_shift, remove_class_weight_prior

# The preprocessing parity test may pay for building the demo detectors (seconds on an idle
# machine, minutes on a shared, oversubscribed one).
pytestmark = pytest.mark.timeout(900)


def test_mnist_5k_has_500_white_on_black_digits_per_class() -> None:
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert np.median(images) == 0 and images.max() == 255


def test_splits_are_disjoint_cover_everything_and_are_roughly_70_15_15() -> None:
    splits = mnist_5k_splits()
    parts = [splits.train.indices, splits.val.indices, splits.test.indices]
    joined = np.concatenate(parts)
    assert len(joined) == 5000 and len(np.unique(joined)) == 5000
    fractions = [len(p) / 5000 for p in parts]
    assert (
        abs(fractions[0] - 0.70) < 0.03
        and abs(fractions[1] - 0.15) < 0.03
        and abs(fractions[2] - 0.15) < 0.03
    )
    again = mnist_5k_splits()
    assert np.array_equal(again.test.indices, splits.test.indices)


def test_split_of_is_a_fixed_function_of_the_key() -> None:
    # Pinned: changing the hash scheme would silently move test images into training.
    assert [split_of(f"mnist_5k:{i}") for i in range(12)] == ["train"] * 9 + ["val", "train", "train"]
    counts = {name: 0 for name in ("train", "val", "test")}
    for i in range(20000):
        counts[split_of(f"k:{i}")] += 1
    assert abs(counts["test"] / 20000 - 0.15) < 0.01 and abs(counts["val"] / 20000 - 0.15) < 0.01


@pytest.mark.heavy
def test_training_preprocessing_matches_the_runtime_exactly(digit_bundle: Path) -> None:
    runtime = ModelRuntime(digit_bundle)
    encoded = [data for data, _ in demo_digit_images(5)] + out_of_domain_images(5)
    decoded = [runtime.decode(data, ImageLimits()) for data in encoded]
    ours = images_to_tensor(decoded, DEMO_PIPELINE).numpy()
    theirs = np.concatenate([runtime.image_to_tensor(img) for img in decoded])
    assert ours.shape == theirs.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_sample_images_decode_as_expected() -> None:
    for data, label in demo_digit_images(4) + demo_digit_images(4, image_format="PNG"):
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (28, 28) and img.mode == "L" and 0 <= label <= 9
    modes = set()
    for data in out_of_domain_images(4):
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and min(img.size) >= 48
            modes.add(img.mode)
    assert modes == {"RGB", "L"}


def test_random_shift_moves_digits_and_fills_with_black() -> None:
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 10:18, 10:18] = 255
    x = normalize_uint8(images, DEMO_PIPELINE)
    black = float(x[0, 0, 0, 0])
    shifted = random_shift(x.repeat(64, 1, 1, 1), 2, [black], torch.Generator().manual_seed(0))
    assert shifted.shape == (64, 1, 28, 28)
    assert torch.all(shifted.amax(dim=(1, 2, 3)) == x.max())
    assert torch.all(shifted[:, :, :2, :].eq(black)) and torch.all(shifted[:, :, -2:, :].eq(black))
    assert len({tuple(torch.nonzero(s[0] > 0)[0].tolist()) for s in shifted}) > 5


def test_removing_the_class_weight_prior_subtracts_log_weights() -> None:
    head = torch.nn.Linear(3, 2)
    before = head.bias.detach().clone()
    remove_class_weight_prior(head, (0.5, 5.0))
    expected = before - torch.log(torch.tensor([0.5, 5.0]))
    assert torch.allclose(head.bias, expected)
