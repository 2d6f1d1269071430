"""Confidence maths shared by training (fitting) and runtime (serving)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# An in-domain score below this says the image looks unlike the model's training images: the edge
# escalates it as out of domain, and both sides report it so.
OUT_OF_DOMAIN_BELOW = 0.5


def is_out_of_domain(in_domain: float) -> bool:
    return in_domain < OUT_OF_DOMAIN_BELOW


def softmax(logits: NDArray[np.floating], temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise softmax of logits / T, computed in float64 for stable calibration."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def final_confidence(top_probability: float, in_domain: float, num_classes: int) -> float:
    """c' = q·c + (1−q)/K: still a probability, never below chance; out-of-domain drifts to chance."""
    q = min(1.0, max(0.0, float(in_domain)))
    return q * float(top_probability) + (1.0 - q) / num_classes


def in_domain_probability(
    distance: NDArray[np.floating], threshold: float, scale: float
) -> NDArray[np.float64]:
    """Logistic map of a Mahalanobis distance to an in-domain probability (numpy twin of oodd.onnx)."""
    x = (threshold - np.asarray(distance, dtype=np.float64)) / scale
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
    return out
