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


@dataclass(frozen=True)
class NegativeCalibration:
    """The logistic moved so that reviewers' UNCLEAR examples fall below the confidence bar."""

    threshold: float
    scale: float
    cut: float  # the distance where q reaches `need`
    negatives: int
    in_domain_cost: float  # share of in-domain (out-of-fold) distances past the cut
    negatives_passed: float  # share of the negatives inside the cut

    def as_dict(self) -> dict[str, float | int]:
        return {
            "negatives": self.negatives,
            "cut": round(self.cut, 6),
            "in_domain_cost": round(self.in_domain_cost, 4),
            "negatives_passed": round(self.negatives_passed, 4),
        }


def quantile_for(n: int) -> float:
    """Where q = 0.5 sits among in-domain distances, by how many there are: 1 - 5/n within
    [0.9, DEFAULT_QUANTILE]. A handful of labels says little about the tail of the domain, so a young
    detector escalates the unusual (its escalation rate is high anyway) rather than answer near-domain
    images with full confidence; from about a thousand labels the tail is known well enough."""
    if n <= 0:
        return 0.9
    return min(DEFAULT_QUANTILE, max(0.9, 1.0 - 5.0 / n))


def in_domain_needed(confidence_threshold: float, num_classes: int) -> float | None:
    """The q an answer with top probability 1 needs to reach the threshold (see final_confidence)."""
    chance = 1.0 / num_classes
    if not chance < confidence_threshold < 1.0:
        return None
    return (confidence_threshold - chance) / (1.0 - chance)


def calibrate_with_negatives(
    in_domain: NDArray[np.floating],
    negatives: NDArray[np.floating],
    need: float,
    quantile: float = DEFAULT_QUANTILE,
    median_target: float = DEFAULT_MEDIAN_TARGET,
    max_cost: float = 0.10,
    min_negatives: int = 3,
) -> NegativeCalibration | None:
    """Tighten the default logistic when reviewers have marked images UNCLEAR (not this detector's).

    In-domain distances alone cannot say how far away the images a camera also sees are: a threshold
    at their 99.5th percentile lets near-domain images (a digit shown to a product detector) through
    with full confidence. With examples of what is out of domain the cut (where q = `need`, so an
    answer just reaches the confidence threshold) goes where it misclassifies the fewest of both,
    weighted equally, but never below the (1 - max_cost) quantile of in-domain distances (at most
    `max_cost` of ordinary images escalated for it) and never above the default cut. The median
    in-domain image keeps q = `median_target`. None: too few negatives, or the default already
    separates them as well.
    """
    p = np.sort(np.asarray(in_domain, dtype=np.float64))
    n = np.sort(np.asarray(negatives, dtype=np.float64))
    if n.size < min_negatives or p.size < 2 or not (np.isfinite(p).all() and np.isfinite(n).all()):
        return None
    t0, s0 = calibrate_logistic(p, quantile, median_target)
    logit_need = math.log(need / (1.0 - need))
    logit_median = math.log(median_target / (1.0 - median_target))
    if logit_median <= logit_need:
        return None
    median = float(np.median(p))
    default_cut = t0 - s0 * logit_need
    lowest = max(float(np.quantile(p, 1.0 - max_cost)), median + 1e-9)
    if default_cut <= lowest:
        return None
    # Candidate cuts: the bounds and the midpoints between neighbouring distances inside them.
    values = np.unique(np.concatenate([p, n]))
    values = values[(values > lowest) & (values < default_cut)]
    inner = (values[:-1] + values[1:]) / 2 if values.size > 1 else np.zeros(0)
    cuts = np.concatenate([[default_cut], inner[::-1], [lowest]])  # descending: ties go to the lenient

    def error(cut: float) -> float:
        return float(np.mean(p > cut) + np.mean(n <= cut))

    errors = np.array([error(float(c)) for c in cuts])
    best = float(cuts[int(np.argmin(errors))])  # the first minimum: the most lenient of the best
    if best >= default_cut:
        return None
    scale = (best - median) / (logit_median - logit_need)
    return NegativeCalibration(
        threshold=best + scale * logit_need,
        scale=scale,
        cut=best,
        negatives=int(n.size),
        in_domain_cost=float(np.mean(p > best)),
        negatives_passed=float(np.mean(n <= best)),
    )


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


# --- low-rank Mahalanobis, for heads on a shared backbone ------------------------------------------------

DEFAULT_RANK = 64


@dataclass(frozen=True)
class LowRankOodd:
    """Mahalanobis distance under a shrunk shared covariance, stored as its top `rank` eigenpairs.

    d²(x) = min_k Σ_i p_i (u_i·(x − μ_k))² + p_rest (|x − μ_k|² − Σ_i (u_i·(x − μ_k))²), with
    p_i = 1 / ((1 − α) λ_i + α μ) on the top eigenvectors and one precision p_rest for the rest of the
    space (its mean eigenvalue, shrunk the same way). Exact when `rank` covers the sample covariance;
    a few hundred kilobytes per detector instead of a D x D matrix (6.5 MB at D = 1280).
    """

    means: NDArray[np.float64]  # (K, D)
    components: NDArray[np.float64]  # (r, D)
    precisions: NDArray[np.float64]  # (r,)
    rest_precision: float
    threshold: float
    scale: float
    shrinkage: float

    def distances(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        return lowrank_min_distance(
            features, self.means, self.components, self.precisions, self.rest_precision
        )

    def in_domain(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        return in_domain_probability(self.distances(features), self.threshold, self.scale)

    def calibration(self) -> OoddCalibration:
        return OoddCalibration(threshold=self.threshold, scale=self.scale)

    def to_module(self) -> LowRankOoddModule:
        return LowRankOoddModule(self)


def lowrank_min_distance(
    features: NDArray[np.floating],
    means: NDArray[np.float64],
    components: NDArray[np.float64],
    precisions: NDArray[np.float64],
    rest_precision: float,
) -> NDArray[np.float64]:
    x = np.asarray(features, dtype=np.float64)
    best = np.full(x.shape[0], np.inf)
    for mu in means:  # one class at a time keeps memory at (N, D)
        diff = x - mu
        proj = diff @ components.T
        quad = (proj * proj) @ precisions + rest_precision * (
            np.sum(diff * diff, axis=1) - np.sum(proj * proj, axis=1)
        )
        best = np.minimum(best, quad)
    out: NDArray[np.float64] = np.sqrt(np.clip(best, 0.0, None))
    return out


def fit_lowrank_gaussians(
    features: NDArray[np.floating],
    labels: NDArray[np.integer],
    num_classes: int,
    rank: int = DEFAULT_RANK,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float, float]:
    """(means, components, precisions, rest precision, Ledoit-Wolf shrinkage) from training features."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every one of {num_classes} classes needs a sample, got {counts.tolist()}")
    means = np.stack([x[y == k].mean(axis=0) for k in range(num_classes)])
    centred = x - means[y]
    n, d = centred.shape
    alpha = ledoit_wolf_shrinkage(centred)
    if n < d:  # the sample covariance has rank < n: its eigenpairs from the n x n Gram matrix
        gram = centred @ centred.T / n
        evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        keep = evals > 1e-12 * max(1.0, float(evals[0]) if evals.size else 1.0)
        evals, evecs = evals[keep], evecs[:, keep]
        comps = (centred.T @ evecs) / np.sqrt(np.maximum(evals * n, 1e-30))
        comps = comps.T
    else:
        cov = centred.T @ centred / n
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, comps = np.clip(evals[order], 0.0, None), evecs[:, order].T
    trace = float(np.sum(np.sum(centred * centred, axis=0))) / n
    mu = trace / d
    r = min(rank, evals.shape[0])
    top = evals[:r]
    rest_mean = max(0.0, trace - float(top.sum())) / max(1, d - r)
    floor = max(1e-9, 1e-6 * mu)
    precisions = 1.0 / ((1.0 - alpha) * top + alpha * mu + floor)
    rest_precision = 1.0 / ((1.0 - alpha) * rest_mean + alpha * mu + floor)
    return means, comps[:r], precisions, float(rest_precision), float(alpha)


def fit_lowrank_oodd(
    train_features: NDArray[np.floating],
    train_labels: NDArray[np.integer],
    heldout_distances: NDArray[np.floating],
    num_classes: int,
    rank: int = DEFAULT_RANK,
    quantile: float = DEFAULT_QUANTILE,
) -> LowRankOodd:
    """Gaussians on all training features; the logistic calibrated on held-out (out-of-fold) distances."""
    means, comps, precisions, rest, alpha = fit_lowrank_gaussians(
        train_features, train_labels, num_classes, rank
    )
    threshold, scale = calibrate_logistic(np.asarray(heldout_distances, dtype=np.float64), quantile)
    return LowRankOodd(means, comps, precisions, rest, threshold, scale, alpha)


def out_of_fold_distances(
    features: NDArray[np.floating],
    labels: NDArray[np.integer],
    folds: NDArray[np.integer],
    num_classes: int,
    rank: int = DEFAULT_RANK,
    max_folds: int = 3,
) -> NDArray[np.float64]:
    """Each item's distance under Gaussians fitted without its fold (folds merged down to `max_folds`).

    Classes missing from a fold's training part are left out of that fold's Gaussians.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = int(folds.max()) + 1 if folds.size else 1
    merged = folds % min(k, max_folds)
    out = np.zeros(x.shape[0])
    if k < 2:  # no held-out parts: in-sample distances (optimistic, the caller knows)
        means, comps, prec, rest, _ = fit_lowrank_gaussians(
            x, np.unique(y, return_inverse=True)[1], np.unique(y).size, rank
        )
        return lowrank_min_distance(x, means, comps, prec, rest)
    for f in range(min(k, max_folds)):
        train, held = merged != f, merged == f
        present, compact = np.unique(y[train], return_inverse=True)
        means, comps, prec, rest, _ = fit_lowrank_gaussians(x[train], compact, present.size, rank)
        out[held] = lowrank_min_distance(x[held], means, comps, prec, rest)
    return out


class LowRankOoddModule(nn.Module):
    """standardised embedding (N, D) → in_domain (N,), the fitted values as buffers for oodd.onnx."""

    means: Tensor
    components: Tensor
    precisions: Tensor
    rest_precision: Tensor
    threshold: Tensor
    scale: Tensor

    def __init__(self, fitted: LowRankOodd) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor(fitted.means, dtype=torch.float32))
        self.register_buffer("components", torch.tensor(fitted.components, dtype=torch.float32))
        self.register_buffer("precisions", torch.tensor(fitted.precisions, dtype=torch.float32))
        self.register_buffer("rest_precision", torch.tensor(fitted.rest_precision, dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(fitted.threshold, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(fitted.scale, dtype=torch.float32))

    def forward(self, features: Tensor) -> Tensor:
        diff = features.unsqueeze(1) - self.means.unsqueeze(0)  # (N, K, D)
        proj = torch.matmul(diff, self.components.t())  # (N, K, r)
        proj2 = proj * proj
        quad = torch.matmul(proj2, self.precisions) + self.rest_precision * (
            (diff * diff).sum(dim=-1) - proj2.sum(dim=-1)
        )
        distance = torch.sqrt(torch.clamp(quad, min=0.0)).min(dim=1).values
        return torch.sigmoid((self.threshold - distance) / self.scale)
