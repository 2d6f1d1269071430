"""The coins-on-photographs data set: reproducible, its boxes tight around each coin's visible pixels,
coins never closer than the head can tell apart."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from training.detection.synthetic import (
    BACKGROUNDS,
    DIAMETER_RANGE,
    MIN_SEPARATION,
    as_items,
    background_images,
    coin_cutouts,
    generate,
    generate_one,
)


@pytest.fixture(scope="module")
def samples():  # type: ignore[no-untyped-def]
    return generate(12, seed=11, max_count=8, with_masks=True)


def test_every_background_loads_offline() -> None:
    images = background_images()
    assert len(images) == len(BACKGROUNDS) >= 10
    for img in images:
        assert img.dtype == np.uint8 and min(img.shape[:2]) >= 128
        assert img.std() > 10  # a photograph, not a flat fill


def test_coins_are_segmented_one_by_one() -> None:
    coins = coin_cutouts()
    assert 20 <= len(coins) <= 24
    for coin in coins:
        assert coin.grey.shape == coin.alpha.shape
        assert coin.alpha.min() >= 0.0 and coin.alpha.max() <= 1.0
        inside = coin.alpha > 0.5
        h, w = coin.alpha.shape
        # A disc fills about pi/4 of its square box, and its rim is the coin, not the background.
        assert 0.6 < inside.sum() / ((h - 6) * (w - 6)) < 0.85
        assert coin.grey[inside].mean() > coin.grey[coin.alpha < 0.05].mean() + 0.15


def test_the_same_seed_gives_the_same_samples(samples) -> None:  # type: ignore[no-untyped-def]
    again = generate(3, seed=11, max_count=8, start=4)
    for a, b in zip(samples[4:7], again, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(np.asarray(generate_one(11, 5).image), np.asarray(samples[5].image))
    other = generate_one(12, 5)
    assert not np.array_equal(np.asarray(other.image), np.asarray(samples[5].image))


def test_boxes_are_the_extent_of_each_coins_visible_pixels(samples) -> None:  # type: ignore[no-untyped-def]
    side = 224
    for sample in samples:
        assert sample.image.size == (side, side) and sample.image.mode == "RGB"
        assert sample.visible is not None and sample.visible.shape == (sample.count, side, side)
        assert 0 <= sample.count <= 8
        for box, mask in zip(sample.boxes, sample.visible, strict=True):
            assert mask.sum() >= 16
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            expected = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]) / side
            np.testing.assert_allclose(box, expected, atol=1e-6)
            assert 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0
        # Two coins never own the same pixel.
        if sample.count > 1:
            assert sample.visible.sum(axis=0).max() == 1


def test_a_pasted_coin_is_where_its_mask_says() -> None:
    """Composing on a background changes the coins' visible pixels and nothing far from any layer."""
    from scipy import ndimage

    from training.detection.synthetic import _background, _compose

    background = _background(np.random.default_rng(9), 224)
    image, layers = _compose(np.random.default_rng(9), 4, 224, MIN_SEPARATION)
    coins = [layer for layer in layers if layer.is_object]
    assert len(coins) == 4
    diff = np.abs(image - background).mean(axis=2)
    for layer in coins:
        assert layer.visible is not None
        assert diff[layer.visible].mean() > 0.03
    touched = np.any([layer.alpha > 0.01 for layer in layers], axis=0)
    # Shadows fall a few pixels off their layer: far from every layer the scene is untouched
    # (but for the faint tails of the blurred shadows).
    far = ~ndimage.binary_dilation(touched, iterations=12)
    assert far.any()
    np.testing.assert_allclose(image[far], background[far], atol=2e-3)  # under one grey level


def test_coin_centres_are_apart(samples) -> None:  # type: ignore[no-untyped-def]
    counts = [s.count for s in generate(60, seed=4)]
    assert min(counts) == 0 and max(counts) >= 7  # the whole range of counts occurs
    for sample in [*samples, *generate(20, seed=4)]:
        centres = (sample.boxes[:, :2] + sample.boxes[:, 2:]) / 2 * 224
        for a, b in itertools.combinations(centres, 2):
            assert math.dist(a, b) >= MIN_SEPARATION - 1e-3
            # ... so no two share a cell of the backbone's stride-16 grid.
            assert tuple((a // 16).astype(int)) != tuple((b // 16).astype(int))


def test_items_are_jpeg_bytes_with_their_boxes(samples) -> None:  # type: ignore[no-untyped-def]
    items = as_items(samples[:3], "t")
    assert [i.id for i in items] == ["t-00000", "t-00001", "t-00002"]
    for item, sample in zip(items, samples[:3], strict=True):
        img = Image.open(io.BytesIO(item.image))
        assert img.format == "JPEG" and img.size == (224, 224)
        assert np.array_equal(item.boxes, sample.boxes)


def test_larger_images_scale_their_coins() -> None:
    big = generate_one(5, 1, side=320, count=4, with_masks=True)
    assert big.image.size == (320, 320) and big.count == 4
    widths = (big.boxes[:, 2] - big.boxes[:, 0]) * 320
    assert widths.max() <= DIAMETER_RANGE[1] * 320 / 224 * 1.3
