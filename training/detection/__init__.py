"""Object detection for COUNT and BOUNDING_BOX detectors, on the shared backbone's feature map.

synthetic   a reproducible data set of real coins on real photographs (no detection data set
            ships inside a package)
items       labelled images: from a dataset export's rois, or (id, bytes, boxes) in memory
augment     flips, crops and colour changes that move the boxes with the pixels
model       the centre-point head and its in-graph decoding (boxes, scores, count logits)
train       the job: feature maps once, the head fit, calibration, OODD, the split bundle
metrics     mAP@0.5, mAP@0.5:0.95 (COCO 101-point AP), count accuracy and MAE
"""

from training.detection.items import DetectionItem
from training.detection.metrics import DetectionMetrics, evaluate_detections
from training.detection.train import (
    DetectionOptions,
    DetectionOutcome,
    train_detection,
    train_detection_from_export,
)

__all__ = [
    "DetectionItem",
    "DetectionMetrics",
    "DetectionOptions",
    "DetectionOutcome",
    "evaluate_detections",
    "train_detection",
    "train_detection_from_export",
]
