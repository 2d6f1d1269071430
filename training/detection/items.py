"""Labelled images for a detection job: from a dataset export's regions of interest, or in memory.

An export item's boxes are its `rois` (format 3; common.wire.device_api.Roi, normalised geometry).
What its label says about them depends on the mode:

    COUNT         "0".."max_count": the number of objects; the rois must cover them all (an item
                  labelled 3 with two boxes would teach that the third object is background)
    BOUNDING_BOX  NO_OBJECTS (no boxes), BOUNDING_BOX (the rois are the objects), GREATER_THAN_MAX
                  (more than max_num_bboxes objects: usable only when the rois hold all of them)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.bundle import DetectorMode
from training.dataset_export import DatasetExport, ExportItem

NO_OBJECTS = "NO_OBJECTS"
BOUNDING_BOX_LABEL = "BOUNDING_BOX"
GREATER_THAN_MAX = "GREATER_THAN_MAX"


@dataclass(frozen=True)
class DetectionItem:
    """One labelled image: a stable id (it decides the split), encoded bytes, normalised ltrb boxes (m, 4)."""

    id: str
    image: bytes
    boxes: NDArray[np.float32]

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])


def as_detection_items(
    items: Iterable[DetectionItem | tuple[str, bytes, Any]],
) -> list[DetectionItem]:
    """Plain (id, bytes, boxes) triples or DetectionItems, boxes checked and made (m, 4) float32."""
    out: list[DetectionItem] = []
    seen: set[str] = set()
    for item in items:
        ident, data, boxes = (item.id, item.image, item.boxes) if isinstance(item, DetectionItem) else item
        arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if not np.isfinite(arr).all():
            raise ValueError(f"item {ident!r} has non-finite boxes")
        arr = np.clip(arr, 0.0, 1.0)
        if (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
            raise ValueError(f"item {ident!r} has an empty box (right <= left or bottom <= top)")
        if str(ident) in seen:
            raise ValueError(f"item id {ident!r} appears twice")
        seen.add(str(ident))
        out.append(DetectionItem(str(ident), bytes(data), arr))
    return out


def _geometry(roi: Any) -> Any:
    return roi.get("geometry") if isinstance(roi, dict) else getattr(roi, "geometry", None)


def _value(geometry: Any, key: str) -> float:
    return float(geometry[key] if isinstance(geometry, dict) else getattr(geometry, key))


def boxes_from_rois(rois: Iterable[Any]) -> NDArray[np.float32]:
    """The ltrb boxes (m, 4) of an item's rois: Roi models or their JSON dicts
    ({"label", "score", "geometry": {left, top, right, bottom, x, y}}, normalised)."""
    rows = []
    for roi in rois:
        geometry = _geometry(roi)
        if geometry is None:
            raise ValueError("a roi without geometry")
        rows.append([_value(geometry, k) for k in ("left", "top", "right", "bottom")])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def item_rois(item: ExportItem) -> list[Any] | None:
    """The item's rois: the typed field, or (from a writer that predates it) an extra key."""
    rois = getattr(item, "rois", None)
    if rois is None:
        rois = (item.model_extra or {}).get("rois")
    return None if rois is None else list(rois)


def _usable(mode: DetectorMode, label: str, n_boxes: int | None, max_count: int) -> str | None:
    """None when the item's boxes are all its objects, else why it cannot train a detection head."""
    if mode is DetectorMode.BOUNDING_BOX:
        if label == NO_OBJECTS:
            return None if not n_boxes else "boxes_on_no_objects"
        if n_boxes is None:
            return "no_rois"
        if label == GREATER_THAN_MAX and n_boxes <= max_count:
            return "greater_than_max_without_all_boxes"
        return None if n_boxes > 0 else "no_rois"
    try:
        count = int(label)
    except ValueError:
        return "not_a_count"
    if count == 0:
        return None if not n_boxes else "boxes_on_zero_count"
    if n_boxes is None:
        return "no_rois"
    if n_boxes < count:
        return "fewer_rois_than_count"
    if n_boxes > count and count < max_count:
        return "more_rois_than_count"
    return None


def items_from_export(export: DatasetExport, max_count: int) -> tuple[list[DetectionItem], dict[str, int]]:
    """The export's labelled items whose boxes cover their objects, and how many were skipped and why."""
    mode = export.detector.mode
    skipped: Counter[str] = Counter()
    out: list[DetectionItem] = []
    for item in export.trainable_items():
        if not export.has_image(item):
            skipped["no_image"] += 1
            continue
        rois = item_rois(item)
        why = _usable(mode, item.label, None if rois is None else len(rois), max_count)
        if why is not None:
            skipped[why] += 1
            continue
        try:
            boxes = boxes_from_rois(rois or [])
            (checked,) = as_detection_items([(item.image_query_id, export.image_bytes(item), boxes)])
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped["bad_rois"] += 1
            continue
        out.append(checked)
    return out, dict(skipped)
