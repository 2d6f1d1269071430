"""Temperature fitting and ECE on synthetic logits with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from common.confidence import softmax
from training.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def _calibrated_sample(n: int = 4000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, (n, k))
    p = softmax(z)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z, labels


def test_fit_temperature_recovers_a_known_overconfidence() -> None:
    z, labels = _calibrated_sample()
    assert fit_temperature(3.0 * z, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.1)


def test_fitted_temperature_minimises_nll() -> None:
    z, labels = _calibrated_sample(seed=1)
    t = fit_temperature(2.0 * z, labels)
    best = negative_log_likelihood(2.0 * z, labels, t)
    assert best <= negative_log_likelihood(2.0 * z, labels, t * 1.05)
    assert best <= negative_log_likelihood(2.0 * z, labels, t / 1.05)


def test_ece_of_known_cases() -> None:
    # Always 80% confident and right 80% of the time: perfectly calibrated.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    # Fully confident and right half the time: off by 0.5.
    probs = np.tile([1.0, 0.0], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5)


def test_temperature_scaling_lowers_ece_of_overconfident_logits() -> None:
    z, labels = _calibrated_sample(seed=2)
    t = fit_temperature(4.0 * z[:2000], labels[:2000])
    report = calibration_report(4.0 * z[2000:], labels[2000:], t)
    assert report["ece_after"] < report["ece_before"] / 2
    assert report["nll_after"] < report["nll_before"]


def test_fit_temperature_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=np.int64))
