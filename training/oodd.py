"""Out-of-domain detection: Mahalanobis distance on the primary network's penultimate features.

A classifier is confidently wrong on inputs unlike its training data (a photo shown to a digit
model). Class-conditional Gaussians with one shared covariance describe where in-domain features
live; the distance to the nearest class mean, mapped through a logistic calibrated on held-out
in-domain data, gives the in-domain probability q that the runtime blends into the confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from common.bundle import OoddCalibration
from common.confidence import in_domain_probability

DEFAULT_QUANTILE = 0.995
DEFAULT_MEDIAN_TARGET = 0.999


@dataclass(frozen=True)
class MahalanobisOodd:
    """Fitted class means (K, D), shared precision (D, D) and the logistic calibration."""

    means: NDArray[np.float64]
    precision: NDArray[np.float64]
    threshold: float
    scale: float
    shrinkage: float

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def distances(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        return mahalanobis_min_distance(features, self.means, self.precision)

    def in_domain(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        """Numpy twin of oodd.onnx, using the shared logistic from common.confidence."""
        return in_domain_probability(self.distances(features), self.threshold, self.scale)

    def calibration(self) -> OoddCalibration:
        return OoddCalibration(threshold=self.threshold, scale=self.scale)

    def to_module(self) -> OoddModule:
        return OoddModule(self.means, self.precision, self.threshold, self.scale)


def mahalanobis_min_distance(
    features: NDArray[np.floating], means: NDArray[np.float64], precision: NDArray[np.float64]
) -> NDArray[np.float64]:
    """min_k sqrt((x - mu_k)^T P (x - mu_k)) for each row x, in float64."""
    x = np.asarray(features, dtype=np.float64)
    diff = x[:, None, :] - means[None, :, :]
    quad = np.einsum("nkd,de,nke->nk", diff, precision, diff)
    out: NDArray[np.float64] = np.sqrt(np.clip(quad, 0.0, None)).min(axis=1)
    return out


def ledoit_wolf_shrinkage(centred: NDArray[np.float64]) -> float:
    """Ledoit-Wolf's estimate of the best shrinkage of the sample covariance toward mu*I.

    With S = X^T X / n and mu = tr(S) / p: delta = ||S - mu I||^2 / p measures how far S is from
    the target, beta = sum_i ||x_i x_i^T - S||^2 / (p n^2) how noisy S is; shrink by beta/delta.
    """
    n, p = centred.shape
    s = centred.T @ centred / n
    mu = float(np.trace(s)) / p
    delta = float(np.sum((s - mu * np.eye(p)) ** 2)) / p
    row_norms = np.sum(centred * centred, axis=1)
    beta = (float(np.sum(row_norms**2)) - n * float(np.sum(s * s))) / (p * n * n)
    if delta <= 0.0:
        return 1.0
    return float(min(max(beta, 0.0), delta) / delta)


def fit_gaussians(
    features: NDArray[np.floating],
    labels: NDArray[np.integer],
    num_classes: int,
    shrinkage: float | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Class means and a shrunk shared precision from training features.

    Features after ReLU have dead or collinear dimensions, so the sample covariance is singular;
    shrinking toward a scaled identity (Ledoit-Wolf amount unless `shrinkage` is given) keeps it
    invertible and penalises movement along directions the training data never used.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)
    if counts.shape[0] != num_classes or (counts == 0).any():
        raise ValueError(
            f"every one of {num_classes} classes needs at least one sample, got {counts.tolist()}"
        )
    means = np.stack([x[y == k].mean(axis=0) for k in range(num_classes)])
    centred = x - means[y]
    if shrinkage is None:
        shrinkage = ledoit_wolf_shrinkage(centred)
    elif not 0.0 <= shrinkage <= 1.0:
        raise ValueError("shrinkage must be in [0, 1]")
    emp = centred.T @ centred / centred.shape[0]
    mu = float(np.trace(emp)) / emp.shape[0]
    cov = (1.0 - shrinkage) * emp + shrinkage * mu * np.eye(emp.shape[0])
    # A floor on the diagonal guards against an all-zero feature matrix (trace 0).
    cov = cov + np.eye(cov.shape[0]) * max(1e-9, 1e-6 * float(np.trace(cov)) / cov.shape[0])
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2.0
    return means, precision, shrinkage


def calibrate_logistic(
    heldout_distances: NDArray[np.floating],
    quantile: float = DEFAULT_QUANTILE,
    median_target: float = DEFAULT_MEDIAN_TARGET,
) -> tuple[float, float]:
    """threshold = the `quantile` of held-out in-domain distances (q = 0.5 there); scale puts the
    median at q = `median_target`, so typical in-domain inputs barely move the confidence."""
    d = np.asarray(heldout_distances, dtype=np.float64)
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError("need finite held-out distances")
    threshold = float(np.quantile(d, quantile))
    median = float(np.median(d))
    logit = math.log(median_target / (1.0 - median_target))
    spread = threshold - median
    if spread <= 0:
        # Degenerate (all distances equal): fall back to a width relative to the distance itself.
        spread = max(1e-6, 0.1 * abs(threshold))
    return threshold, spread / logit


def fit_oodd(
    train_features: NDArray[np.floating],
    train_labels: NDArray[np.integer],
    heldout_features: NDArray[np.floating],
    num_classes: int,
    shrinkage: float | None = None,
    quantile: float = DEFAULT_QUANTILE,
) -> MahalanobisOodd:
    """Fit Gaussians on training features, calibrate on held-out in-domain features.

    Training features sit closer to their means than unseen ones do, so calibrating on them would
    put the threshold too low and flag ordinary new images as out of domain.
    """
    means, precision, amount = fit_gaussians(train_features, train_labels, num_classes, shrinkage)
    heldout = mahalanobis_min_distance(heldout_features, means, precision)
    threshold, scale = calibrate_logistic(heldout, quantile)
    return MahalanobisOodd(means, precision, threshold, scale, amount)


class OoddModule(nn.Module):
    """features (N, D) → in_domain (N,), with all fitted values as buffers so they export to ONNX."""

    means: Tensor
    precision: Tensor
    threshold: Tensor
    scale: Tensor

    def __init__(
        self,
        means: NDArray[np.float64],
        precision: NDArray[np.float64],
        threshold: float,
        scale: float,
    ) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("precision", torch.tensor(precision, dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(threshold, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def forward(self, features: Tensor) -> Tensor:
        diff = features.unsqueeze(1) - self.means.unsqueeze(0)
        quad = (torch.matmul(diff, self.precision) * diff).sum(dim=-1)
        distance = torch.sqrt(torch.clamp(quad, min=0.0)).min(dim=1).values
        return torch.sigmoid((self.threshold - distance) / self.scale)
