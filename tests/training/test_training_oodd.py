"""Mahalanobis OODD: shrinkage, calibration anchors and separation on synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from training.oodd import OoddModule, calibrate_logistic, fit_oodd, ledoit_wolf_shrinkage


def test_ledoit_wolf_shrinkage_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for n, p in ((400, 20), (30, 60)):
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        _, expected = ledoit_wolf(x, assume_centered=True)
        assert ledoit_wolf_shrinkage(x) == pytest.approx(expected, rel=1e-6)


def test_calibration_puts_threshold_at_one_half_and_median_at_0999() -> None:
    distances = np.random.default_rng(1).gamma(9.0, 1.0, 2000)
    threshold, scale = calibrate_logistic(distances)
    assert threshold == pytest.approx(np.quantile(distances, 0.995))
    median = float(np.median(distances))
    assert 1 / (1 + math.exp(-(threshold - median) / scale)) == pytest.approx(0.999)


def test_far_features_are_out_of_domain_and_held_out_ones_are_not() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 5, (4, 16))
    labels = rng.integers(0, 4, 3000)
    features = centres[labels] + rng.normal(0, 1, (3000, 16))
    # A dead feature (always 0 in training) is what ReLU networks produce; shrinkage must cope.
    features[:, 0] = 0.0
    oodd = fit_oodd(features[:2000], labels[:2000], features[2000:2500], num_classes=4)
    held_out = oodd.in_domain(features[2500:])
    assert np.mean(held_out >= 0.9) >= 0.9
    far = centres[rng.integers(0, 4, 200)] + rng.normal(0, 4, (200, 16))
    assert np.mean(oodd.in_domain(far) < 0.5) >= 0.95
    poked = features[2500:].copy()
    poked[:, 0] = 3.0
    assert np.all(oodd.in_domain(poked) < 0.5)


def test_torch_module_matches_numpy_distances() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    features = rng.normal(size=(500, 8)) + labels[:, None] * 3
    oodd = fit_oodd(features[:300], labels[:300], features[300:], num_classes=2)
    module: OoddModule = oodd.to_module()
    with torch.no_grad():
        q = module(torch.tensor(features, dtype=torch.float32)).numpy()
    assert q.shape == (500,)
    assert np.max(np.abs(q - oodd.in_domain(features))) <= 1e-4


def test_fit_requires_every_class() -> None:
    with pytest.raises(ValueError, match="every one of 3 classes"):
        fit_oodd(np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((2, 2)), num_classes=3)
