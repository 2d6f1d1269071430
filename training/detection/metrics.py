"""Detection quality, single class: COCO-style average precision and count accuracy.

    average_precision(detections, truths, iou_threshold)   101-point interpolated AP at one IoU
    mean_average_precision(detections, truths)             AP averaged over IoU 0.50:0.05:0.95
    count_accuracy / count_mae                             how often / by how much a count is off

Boxes are (left, top, right, bottom), in any unit shared by predictions and truths. Detections with
a score of 0 or less are padding (a head always answers max_boxes rows) and are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)

Boxes = NDArray[np.floating[Any]]


@dataclass(frozen=True)
class ImageDetections:
    """One image's predicted boxes (n, 4) and their scores (n,)."""

    boxes: Boxes
    scores: NDArray[np.floating[Any]]


def box_iou(a: Boxes, b: Boxes) -> NDArray[np.float64]:
    """Pairwise IoU (n, m) of ltrb boxes; empty or inverted boxes have area 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out: NDArray[np.float64] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def match_detections(
    boxes: Boxes, scores: NDArray[np.floating[Any]], truths: Boxes, iou_threshold: float
) -> NDArray[np.bool_]:
    """Which detections are true positives: best score first, each takes the unmatched truth it
    overlaps most (at least `iou_threshold`), as COCO matches. Returned in the given order."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    hit = np.zeros(scores.shape[0], dtype=bool)
    truths = np.asarray(truths, dtype=np.float64).reshape(-1, 4)
    if truths.shape[0] == 0 or scores.shape[0] == 0:
        return hit
    iou = box_iou(boxes, truths)
    taken = np.zeros(truths.shape[0], dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            taken[j] = True
            hit[i] = True
    return hit


def average_precision(
    detections: Sequence[ImageDetections], truths: Sequence[Boxes], iou_threshold: float = 0.5
) -> float:
    """AP of one class over a data set: precision made monotone, sampled at 101 recall points.

    NaN when the data set holds no true object (AP is undefined there).
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of truths")
    n_true = sum(int(np.asarray(t).reshape(-1, 4).shape[0]) for t in truths)
    if n_true == 0:
        return float("nan")
    all_scores: list[NDArray[np.float64]] = []
    all_hits: list[NDArray[np.bool_]] = []
    for det, truth in zip(detections, truths, strict=True):
        scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
        keep = scores > 0
        boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)[keep]
        all_scores.append(scores[keep])
        all_hits.append(match_detections(boxes, scores[keep], truth, iou_threshold))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    hits = np.concatenate(all_hits) if all_hits else np.zeros(0, dtype=bool)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / n_true
    precision = tp / (tp + fp)
    # The envelope: at each recall, the best precision reachable at that recall or beyond.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(at < envelope.size, envelope[np.minimum(at, envelope.size - 1)], 0.0)
    return float(np.mean(sampled))


def mean_average_precision(
    detections: Sequence[ImageDetections],
    truths: Sequence[Boxes],
    iou_thresholds: Sequence[float] = COCO_IOUS,
) -> float:
    """AP averaged over IoU thresholds (COCO's mAP@0.5:0.95 by default)."""
    return float(np.mean([average_precision(detections, truths, t) for t in iou_thresholds]))


def count_accuracy(predicted: Sequence[int] | NDArray[np.integer[Any]], true: Sequence[int]) -> float:
    p, t = np.asarray(predicted, dtype=np.int64), np.asarray(true, dtype=np.int64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape} predicted counts but {t.shape} true ones")
    return float(np.mean(p == t)) if p.size else float("nan")


def count_mae(predicted: Sequence[int] | NDArray[np.integer[Any]], true: Sequence[int]) -> float:
    p, t = np.asarray(predicted, dtype=np.int64), np.asarray(true, dtype=np.int64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape} predicted counts but {t.shape} true ones")
    return float(np.mean(np.abs(p - t))) if p.size else float("nan")


@dataclass(frozen=True)
class DetectionMetrics:
    map50: float
    map50_95: float
    count_accuracy: float
    count_mae: float
    images: int
    objects: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "map50": round(self.map50, 4),
            "map50_95": round(self.map50_95, 4),
            "count_accuracy": round(self.count_accuracy, 4),
            "count_mae": round(self.count_mae, 4),
            "images": self.images,
            "objects": self.objects,
        }


def evaluate_detections(
    detections: Sequence[ImageDetections],
    truths: Sequence[Boxes],
    predicted_counts: Sequence[int] | NDArray[np.integer[Any]],
    max_count: int | None = None,
) -> DetectionMetrics:
    """All four figures at once; true counts are the truths' box counts (capped at `max_count`,
    the saturating last bucket, when given)."""
    objects = [int(np.asarray(t).reshape(-1, 4).shape[0]) for t in truths]
    true_counts = [min(c, max_count) for c in objects] if max_count is not None else objects
    return DetectionMetrics(
        map50=average_precision(detections, truths, 0.5),
        map50_95=mean_average_precision(detections, truths),
        count_accuracy=count_accuracy(predicted_counts, true_counts),
        count_mae=count_mae(predicted_counts, true_counts),
        images=len(truths),
        objects=sum(objects),
    )
