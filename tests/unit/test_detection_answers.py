"""A detection head's answer: the boxes that go with the count, and the wire Result of each box mode."""

from __future__ import annotations

import numpy as np

from common.bundle import DetectorMode
from common.runtime import answer_boxes_for
from common.wire.device_api import (
    BOUNDING_BOX_LABEL,
    GREATER_THAN_MAX,
    NO_OBJECTS,
    ImageQuery,
    ResultType,
    Roi,
    make_result,
)


def _boxes(scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    k = len(scores)
    boxes = np.array([[0.1 * i / k, 0.1, 0.1 * i / k + 0.05, 0.2] for i in range(k)], dtype=np.float32)
    return boxes, np.asarray(scores, dtype=np.float32)


def test_the_count_picks_that_many_best_boxes() -> None:
    boxes, scores = _boxes([0.2, 0.95, 0.7, 0.01])
    picked, more = answer_boxes_for(boxes, scores, count=2, max_count=5, threshold=0.5)
    assert not more
    assert [round(b.score, 2) for b in picked] == [0.95, 0.7]
    assert picked[0].left == float(boxes[1, 0])


def test_zero_count_has_no_boxes() -> None:
    boxes, scores = _boxes([0.4, 0.3])
    picked, more = answer_boxes_for(boxes, scores, count=0, max_count=3, threshold=0.5)
    assert picked == () and not more


def test_more_than_max_count_returns_every_passing_box() -> None:
    boxes, scores = _boxes([0.9, 0.8, 0.85, 0.7, 0.2])
    picked, more = answer_boxes_for(boxes, scores, count=3, max_count=3, threshold=0.5)
    assert more
    assert len(picked) == 4


def test_boxes_are_clipped_into_the_image() -> None:
    boxes = np.array([[-0.1, 0.2, 1.3, 0.5]], dtype=np.float32)
    picked, _ = answer_boxes_for(boxes, np.array([0.9], dtype=np.float32), 1, 5, 0.5)
    assert (picked[0].left, picked[0].right) == (0.0, 1.0)


def test_count_result_carries_count_and_greater_than_max() -> None:
    result = make_result(DetectorMode.COUNT, "3", 0.91234567, "ALGORITHM", True, greater_than_max=False)
    body = result.model_dump()
    assert body["result_type"] == ResultType.COUNTING
    assert body["count"] == 3 and body["greater_than_max"] is False
    assert body["confidence"] == 0.912346


def test_bounding_box_result_maps_the_count_to_its_label() -> None:
    assert make_result(DetectorMode.BOUNDING_BOX, "0", 0.9, "ALGORITHM", True).label == NO_OBJECTS
    assert make_result(DetectorMode.BOUNDING_BOX, "2", 0.9, "ALGORITHM", True).label == BOUNDING_BOX_LABEL
    more = make_result(DetectorMode.BOUNDING_BOX, "5", 0.9, "ALGORITHM", True, greater_than_max=True)
    assert more.label == GREATER_THAN_MAX
    assert "count" not in more.model_dump() and "greater_than_max" not in more.model_dump()
    # A person's label passes unchanged.
    assert make_result(DetectorMode.BOUNDING_BOX, NO_OBJECTS, 1.0, "HUMAN", False).label == NO_OBJECTS


def test_binary_result_has_no_count() -> None:
    body = make_result(DetectorMode.BINARY, "YES", 0.8, "ALGORITHM", True).model_dump()
    assert "count" not in body and body["label"] == "YES"


def test_an_answer_with_rois_parses_in_the_sdk() -> None:
    """The SDK's own ImageQuery model parses what we send: every required geometry key, the count."""
    from model import ImageQuery as SdkImageQuery

    roi = Roi.from_box("coin", 0.87, 0.1, 0.2, 0.3, 0.6)
    assert roi.geometry.x == 0.2 and abs(roi.geometry.y - 0.4) < 1e-12
    iq = ImageQuery(
        id="iq_2VQ8rQ0XyUjz3Dh0Y5s4wYp9aBc",
        created_at="2026-01-01T00:00:00Z",
        query="how many coins?",
        detector_id="det_2VQ8rQ0XyUjz3Dh0Y5s4wYp9aBc",
        result_type=ResultType.COUNTING,
        result=make_result(DetectorMode.COUNT, "1", 0.93, "ALGORITHM", True, greater_than_max=False),
        patience_time=30.0,
        confidence_threshold=0.9,
        rois=[roi],
    )
    parsed = SdkImageQuery.model_validate_json(iq.model_dump_json())
    assert parsed.rois is not None and parsed.rois[0].geometry.right == 0.3
    assert parsed.rois[0].label == "coin"
    assert parsed.result.count == 1  # type: ignore[union-attr]
