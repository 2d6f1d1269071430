"""Detection metrics on hand-made boxes whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.detection.metrics import (
    ImageDetections,
    average_precision,
    box_iou,
    count_accuracy,
    count_mae,
    evaluate_detections,
    match_detections,
    mean_average_precision,
)

BOX = np.array([[0.1, 0.1, 0.3, 0.3]], dtype=np.float32)


def det(boxes: list[list[float]], scores: list[float]) -> ImageDetections:
    return ImageDetections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))


def test_iou_of_known_boxes() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype=np.float64)
    b = np.array([[1, 0, 3, 2], [5, 5, 6, 6]], dtype=np.float64)
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(2 / 6)  # half of each overlaps
    assert iou[1, 0] == 0.0 and iou[0, 1] == 0.0
    assert box_iou(a, a).diagonal() == pytest.approx([1.0, 1.0])
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 2)


def test_perfect_detections_score_one_at_every_iou() -> None:
    truths = [BOX, np.array([[0.5, 0.5, 0.9, 0.8], [0.1, 0.6, 0.2, 0.7]], np.float32)]
    detections = [det(BOX.tolist(), [0.9]), det(truths[1].tolist(), [0.8, 0.7])]
    assert average_precision(detections, truths, 0.5) == pytest.approx(1.0)
    assert mean_average_precision(detections, truths) == pytest.approx(1.0)


def test_a_shifted_box_passes_at_half_and_fails_at_three_quarters() -> None:
    # Shifted by 0.045 of a 0.2 wide box: IoU = 0.031 / 0.049 = 0.633.
    shifted = [[0.145, 0.1, 0.345, 0.3]]
    assert box_iou(np.asarray(shifted), BOX)[0, 0] == pytest.approx(0.031 / 0.049, rel=1e-5)
    detections, truths = [det(shifted, [0.9])], [BOX]
    assert average_precision(detections, truths, 0.5) == pytest.approx(1.0)
    assert average_precision(detections, truths, 0.75) == 0.0
    # IoU 0.633 passes the thresholds 0.50, 0.55 and 0.60 of the ten: mAP@0.5:0.95 = 3/10.
    assert mean_average_precision(detections, truths) == pytest.approx(0.3)


def test_a_confident_false_positive_halves_precision() -> None:
    detections = [det([[0.6, 0.6, 0.8, 0.8], BOX[0].tolist()], [0.9, 0.8])]
    # Recall reaches 1 only at precision 1/2, and the envelope is 1/2 everywhere.
    assert average_precision(detections, [BOX]) == pytest.approx(0.5)
    # Ranked below the true positive, the same false positive costs nothing.
    detections = [det([[0.6, 0.6, 0.8, 0.8], BOX[0].tolist()], [0.1, 0.8])]
    assert average_precision(detections, [BOX]) == pytest.approx(1.0)


def test_a_missed_object_caps_recall() -> None:
    truths = [np.concatenate([BOX, [[0.6, 0.6, 0.8, 0.8]]]).astype(np.float32)]
    # Recall 0.5 at precision 1: the recall points 0, 0.01, ..., 0.50 (51 of 101) score 1.
    assert average_precision([det(BOX.tolist(), [0.9])], truths) == pytest.approx(51 / 101)


def test_a_duplicate_is_a_false_positive() -> None:
    hits = match_detections(np.concatenate([BOX, BOX]), np.array([0.9, 0.8]), BOX, 0.5)
    assert hits.tolist() == [True, False]
    # The better overlapping detection takes the truth even when listed second.
    hits = match_detections(np.array([[0.12, 0.1, 0.32, 0.3], BOX[0]]), np.array([0.5, 0.9]), BOX, 0.5)
    assert hits.tolist() == [False, True]


def test_padding_and_empty_images() -> None:
    padded = det([BOX[0].tolist(), [0, 0, 0, 0], [0, 0, 0, 0]], [0.9, 0.0, 0.0])
    assert average_precision([padded, det([], [])], [BOX, np.zeros((0, 4))]) == pytest.approx(1.0)
    # A detection on an image without objects is a false positive.
    fp_on_empty = det([[0.5, 0.5, 0.6, 0.6]], [0.95])
    assert average_precision([det(BOX.tolist(), [0.9]), fp_on_empty], [BOX, np.zeros((0, 4))]) == (
        pytest.approx(0.5)
    )
    assert math.isnan(average_precision([det([], [])], [np.zeros((0, 4))]))
    assert average_precision([det([], [])], [BOX]) == 0.0


def test_count_figures() -> None:
    assert count_accuracy([1, 2, 3, 0], [1, 2, 4, 2]) == pytest.approx(0.5)
    assert count_mae([1, 2, 3, 0], [1, 2, 4, 2]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        count_accuracy([1], [1, 2])
    result = evaluate_detections(
        [det(BOX.tolist(), [0.9]), det([], [])],
        [BOX, np.tile(BOX, (5, 1))],
        predicted_counts=[1, 3],
        max_count=3,
    )
    # The second image's five objects fall in the saturating bucket "3 or more".
    assert result.count_accuracy == 1.0 and result.count_mae == 0.0
    assert result.objects == 6 and result.images == 2
