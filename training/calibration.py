"""Temperature scaling and calibration error.

Confidence thresholds decide whether an answer is trusted or escalated to a person, so the
probability the runtime reports must mean what it says. One temperature, fitted on held-out
logits, fixes most of a network's over-confidence without changing any prediction.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from common.confidence import softmax

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def negative_log_likelihood(
    logits: NDArray[np.floating], labels: NDArray[np.integer], temperature: float = 1.0
) -> float:
    """Mean NLL of the true labels under softmax(logits / T), in float64 with log-sum-exp."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    picked = z[np.arange(z.shape[0]), np.asarray(labels, dtype=np.int64)]
    return float(np.mean(log_norm - picked))


def fit_temperature(
    logits: NDArray[np.floating],
    labels: NDArray[np.integer],
    log_t_bounds: tuple[float, float] = (-3.0, 3.0),
    tol: float = 1e-5,
) -> float:
    """The T > 0 minimising validation NLL, by golden-section search on log T.

    NLL is convex in 1/T, hence unimodal in log T, so a bracketing search is robust and needs no
    gradients or learning rate; the bounds (T in [0.05, 20]) cover every sane network.
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError("need (N, K) logits and N labels with N > 0")
    lo, hi = log_t_bounds

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = lo + (1 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2.0)


def expected_calibration_error(
    probabilities: NDArray[np.floating], labels: NDArray[np.integer], n_bins: int = 15
) -> float:
    """ECE of the top-class confidence over equal-width bins: sum_b |acc_b - conf_b| * n_b / N."""
    probs = np.asarray(probabilities, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence is never below 1/K > 0.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += abs(float(correct[mask].mean()) - float(confidence[mask].mean())) * int(mask.sum())
    return ece / max(1, int(probs.shape[0]))


def calibration_report(
    logits: NDArray[np.floating], labels: NDArray[np.integer], temperature: float
) -> dict[str, float]:
    """Accuracy, NLL and ECE at T=1 and at the fitted T, for metadata and logs."""
    raw, scaled = softmax(logits), softmax(logits, temperature)
    return {
        "accuracy": float((raw.argmax(axis=1) == labels).mean()),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": expected_calibration_error(raw, labels),
        "ece_after": expected_calibration_error(scaled, labels),
    }
