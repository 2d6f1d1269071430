"""Held-out evaluation of a classifier, and of a shipped bundle on the same items.

Every number a promotion depends on comes with its uncertainty: accuracy with an exact binomial
(Clopper–Pearson) 95 % interval, balanced accuracy (mean per-class recall) with the same interval
on an effective sample size, per-class precision and recall, the confusion matrix, NLL and the
expected calibration error over 15 equal-width confidence bins (with the bins themselves, for
the reliability diagram).

Balanced accuracy is not a binomial proportion, so its interval is Clopper–Pearson at
n_eff = K² / Σ_k 1/n_k with BA·n_eff successes (the beta-quantile form accepts fractional counts):
n_eff is the sample size whose binomial variance matches Σ_k r_k(1-r_k)/(K² n_k) when all recalls
are equal, and when classes are equally large it is n and the interval is accuracy's exact one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import betaincinv

from common.backbone import BackboneStore
from common.imaging import ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from training.calibration import expected_calibration_error

ECE_BINS = 15
CONFIDENCE_LEVEL = 0.95


class IncomparableModelError(ValueError):
    """The other model answers a different question (labels or mode differ): no paired comparison."""


def clopper_pearson(successes: float, n: float, confidence: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Exact binomial interval for `successes` out of `n` (fractional counts allowed)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must be within [0, {n}]")
    alpha = 1.0 - confidence
    lower = 0.0 if successes <= 0 else float(betaincinv(successes, n - successes + 1, alpha / 2))
    upper = 1.0 if successes >= n else float(betaincinv(successes + 1, n - successes, 1 - alpha / 2))
    return (lower, upper)


def items_digest(item_ids: Sequence[str]) -> str:
    """A hash of the evaluated item set (order-independent), so two evaluations can be checked as paired."""
    digest = hashlib.sha256()
    for item_id in sorted(item_ids):
        digest.update(item_id.encode() + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    support: int
    predicted: int
    precision: float | None
    recall: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "support": self.support,
            "predicted": self.predicted,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass(frozen=True)
class Reliability:
    """Top-class confidence bins (b/n, (b+1)/n]: items, mean confidence and accuracy in each."""

    n_bins: int
    counts: tuple[int, ...]
    confidence: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_bins": self.n_bins,
            "counts": list(self.counts),
            "confidence": list(self.confidence),
            "accuracy": list(self.accuracy),
        }


def reliability_bins(
    probabilities: NDArray[np.floating], labels: NDArray[np.integer], n_bins: int = ECE_BINS
) -> Reliability:
    """The bins behind `expected_calibration_error` (same edges), for plots and reports."""
    probs = np.asarray(probabilities, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts, conf, acc = [], [], []
    for b in range(n_bins):
        mask = bins == b
        counts.append(int(mask.sum()))
        conf.append(float(confidence[mask].mean()) if mask.any() else None)
        acc.append(float(correct[mask].mean()) if mask.any() else None)
    return Reliability(n_bins, tuple(counts), tuple(conf), tuple(acc))


@dataclass(frozen=True)
class Evaluation:
    """One model on one labelled item set (rows of `confusion` are true labels, columns predicted)."""

    labels: tuple[str, ...]
    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    balanced_accuracy: float
    balanced_accuracy_ci95: tuple[float, float]
    per_class: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]
    ece: float
    nll: float
    reliability: Reliability
    items_sha256: str = ""
    model_version: str = ""

    @property
    def classes_present(self) -> int:
        return sum(1 for c in self.per_class if c.support > 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "n": self.n,
            "items_sha256": self.items_sha256,
            "accuracy": self.accuracy,
            "accuracy_ci95": list(self.accuracy_ci95),
            "balanced_accuracy": self.balanced_accuracy,
            "balanced_accuracy_ci95": list(self.balanced_accuracy_ci95),
            "ece": self.ece,
            "ece_bins": self.reliability.n_bins,
            "nll": self.nll,
            "labels": list(self.labels),
            "per_class": {c.label: c.as_dict() for c in self.per_class},
            "confusion_matrix": [list(row) for row in self.confusion],
            "reliability": self.reliability.as_dict(),
        }


def evaluate_probabilities(
    probabilities: NDArray[np.floating],
    labels: NDArray[np.integer],
    label_names: Sequence[str],
    item_ids: Sequence[str] = (),
    model_version: str = "",
    n_bins: int = ECE_BINS,
) -> Evaluation:
    """All held-out metrics from calibrated probabilities (N, K) and true class indices (N,)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = len(label_names)
    if probs.ndim != 2 or probs.shape[1] != k or probs.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"need (N, {k}) probabilities and N > 0 labels, got {probs.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError("labels must be class indices in [0, K)")
    pred = probs.argmax(axis=1)
    n = int(y.shape[0])
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    hits = np.diag(confusion)
    per_class = tuple(
        ClassMetrics(
            label=label_names[i],
            support=int(support[i]),
            predicted=int(predicted[i]),
            precision=float(hits[i] / predicted[i]) if predicted[i] else None,
            recall=float(hits[i] / support[i]) if support[i] else None,
        )
        for i in range(k)
    )
    correct = int(hits.sum())
    present = support > 0
    recalls = hits[present] / support[present]
    balanced = float(recalls.mean())
    n_eff = float(present.sum()) ** 2 / float(np.sum(1.0 / support[present]))
    p_true = np.clip(probs[np.arange(n), y], 1e-300, None)
    return Evaluation(
        labels=tuple(label_names),
        n=n,
        accuracy=correct / n,
        accuracy_ci95=clopper_pearson(correct, n),
        balanced_accuracy=balanced,
        balanced_accuracy_ci95=clopper_pearson(min(balanced * n_eff, n_eff), n_eff),
        per_class=per_class,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        ece=expected_calibration_error(probs, y, n_bins),
        nll=float(-np.mean(np.log(p_true))),
        reliability=reliability_bins(probs, y, n_bins),
        items_sha256=items_digest(item_ids) if item_ids else "",
        model_version=model_version,
    )


def auroc(positive_scores: NDArray[np.floating], negative_scores: NDArray[np.floating]) -> float:
    """Area under the ROC curve for "positive scores higher" (Mann–Whitney U; ties count half)."""
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def bundle_answers(
    bundle_dir: Path,
    images: Sequence[bytes],
    label_names: Sequence[str],
    batch_size: int = 64,
    limits: ImageLimits | None = None,
    backbone_store: BackboneStore | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], str]:
    """A shipped bundle's calibrated probabilities (columns in `label_names` order) and in-domain
    scores on encoded images, answered through `common.runtime.ModelRuntime` exactly as an edge would
    (a split bundle with its backbone from `backbone_store`). Returns (probabilities, q, version)."""
    runtime = ModelRuntime(
        bundle_dir,
        providers=["CPUExecutionProvider"],
        backbone_store=backbone_store,
        backbones=BackbonePool(),
    )
    try:
        meta = runtime.metadata
        if sorted(meta.labels) != sorted(label_names):
            raise IncomparableModelError(
                f"{meta.version} answers {meta.labels}, the candidate answers {list(label_names)}"
            )
        columns = [meta.labels.index(name) for name in label_names]
        lim = limits or ImageLimits()
        chunks: list[NDArray[np.float64]] = []
        q_chunks: list[NDArray[np.float64]] = []
        for start in range(0, len(images), batch_size):
            batch = [
                runtime.image_to_tensor(runtime.decode(data, lim))
                for data in images[start : start + batch_size]
            ]
            probs, q = runtime.run_tensor(np.concatenate(batch))
            chunks.append(probs[:, columns])
            q_chunks.append(q)
        version = meta.version
    finally:
        runtime.close()
    if not chunks:
        return np.zeros((0, len(label_names))), np.zeros(0), version
    return np.concatenate(chunks), np.concatenate(q_chunks), version


def bundle_probabilities(
    bundle_dir: Path,
    images: Sequence[bytes],
    label_names: Sequence[str],
    batch_size: int = 64,
    limits: ImageLimits | None = None,
    backbone_store: BackboneStore | None = None,
) -> tuple[NDArray[np.float64], str]:
    """`bundle_answers` without the in-domain scores."""
    probs, _, version = bundle_answers(bundle_dir, images, label_names, batch_size, limits, backbone_store)
    return probs, version


def evaluate_bundle(
    bundle_dir: Path,
    images: Sequence[bytes],
    labels: NDArray[np.integer],
    label_names: Sequence[str],
    item_ids: Sequence[str] = (),
    backbone_store: BackboneStore | None = None,
) -> Evaluation:
    """`evaluate_probabilities` for a shipped bundle (e.g. the production version) on the same items."""
    probs, version = bundle_probabilities(bundle_dir, images, label_names, backbone_store=backbone_store)
    return evaluate_probabilities(probs, labels, label_names, item_ids, model_version=version)


def chance_level(evaluation: Evaluation) -> float:
    """Balanced accuracy of guessing: 1 / (classes present in the evaluated set)."""
    return 1.0 / max(1, evaluation.classes_present)


# --- the operating point: what cameras get at the detector's threshold ---------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """Answers at `threshold` on final confidences c' = q·c + (1 − q)/K, as the edge decides.

    Confident answers stand alone; the rest are escalated. `confident_accuracy_ci95` is the exact
    (Clopper–Pearson) interval of the confident answers' accuracy.
    """

    threshold: float
    n: int
    confident: int
    confident_correct: int
    confident_accuracy: float | None
    confident_accuracy_ci95: tuple[float, float]
    escalation_rate: float
    accuracy: float
    balanced_accuracy: float
    items_sha256: str = ""
    model_version: str = ""
    method: str = "holdout"  # holdout: the test split; cross_validation: out-of-fold answers

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "n": self.n,
            "confident": self.confident,
            "confident_correct": self.confident_correct,
            "confident_accuracy": self.confident_accuracy,
            "confident_accuracy_ci95": list(self.confident_accuracy_ci95),
            "escalation_rate": self.escalation_rate,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "items_sha256": self.items_sha256,
            "model_version": self.model_version,
            "method": self.method,
        }


def operating_point(
    probabilities: NDArray[np.floating],
    in_domain: NDArray[np.floating],
    labels: NDArray[np.integer],
    threshold: float,
    item_ids: Sequence[str] = (),
    model_version: str = "",
    method: str = "holdout",
) -> OperatingPoint:
    probs = np.asarray(probabilities, dtype=np.float64)
    q = np.clip(np.asarray(in_domain, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    final = q * probs.max(axis=1) + (1.0 - q) / k
    confident = final >= threshold
    right = pred == y
    n_conf = int(confident.sum())
    n_right = int((right & confident).sum())
    present = np.unique(y)
    recalls = [float(right[y == c].mean()) for c in present]
    return OperatingPoint(
        threshold=float(threshold),
        n=int(y.shape[0]),
        confident=n_conf,
        confident_correct=n_right,
        confident_accuracy=n_right / n_conf if n_conf else None,
        confident_accuracy_ci95=clopper_pearson(n_right, n_conf) if n_conf else (0.0, 1.0),
        escalation_rate=1.0 - n_conf / max(1, y.shape[0]),
        accuracy=float(right.mean()) if y.size else 0.0,
        balanced_accuracy=float(np.mean(recalls)) if recalls else 0.0,
        items_sha256=items_digest(item_ids) if item_ids else "",
        model_version=model_version,
        method=method,
    )
