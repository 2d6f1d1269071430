"""Motion (change) gating: submit a frame only when the scene changed since the last submitted frame.

Frames are compared as small grey thumbnails (64 pixels wide, area-averaged, which also removes most
sensor noise); the difference is the mean absolute pixel difference scaled to 0..1. A threshold around
0.01-0.03 ignores noise and compression flicker and reacts to an object entering the view.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.streams.sources import Frame

THUMB_WIDTH = 64


def thumbnail(frame: Frame) -> NDArray[np.float32]:
    height, width = frame.shape[:2]
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / max(width, 1))))
    return np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), dtype=np.float32)


def difference(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Mean absolute difference of two thumbnails, 0 (same) .. 1 (black vs white)."""
    if a.shape != b.shape:
        return 1.0
    return float(np.mean(np.abs(a - b))) / 255.0


class MotionGate:
    """Remembers the last submitted frame; `changed` says whether a new one differs enough."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._reference: NDArray[np.float32] | None = None
        self.last_difference: float | None = None

    def changed(self, thumb: NDArray[np.float32]) -> bool:
        if self._reference is None:
            self.last_difference = None
            return True
        self.last_difference = difference(thumb, self._reference)
        return self.last_difference >= self.threshold

    def submitted(self, thumb: NDArray[np.float32]) -> None:
        self._reference = thumb
