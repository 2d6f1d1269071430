"""Augmentation for detection: the boxes move with the pixels.

    flips       horizontal (and, for views from above, vertical) mirror images and quarter turns
    crop        a zoom into a window of 60..100 % of the side (aspect jittered), only where no object
                loses more than 30 % of its box to the window's edge, the rule the labels follow
    colour      brightness, contrast, saturation, a colour cast, an occasional blur

Applied to the decoded image before the runtime's own preprocessing (resize, normalise), so the
backbone sees augmented copies exactly as it would see camera images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageFilter

# A cropped object keeps at least this share of its box, or the window is drawn again.
MIN_KEPT = 0.7


@dataclass(frozen=True)
class AugmentOptions:
    hflip: bool = True
    # For views from above (a table, a conveyor), where up and down mean nothing:
    vflip: bool = False
    rot90: bool = False
    crop_probability: float = 0.6
    min_crop: float = 0.6
    max_aspect_change: float = 0.15
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    colour_cast: float = 0.08
    blur_probability: float = 0.15


def _crop_window(
    rng: np.random.Generator, boxes: NDArray[np.float32], opts: AugmentOptions, tries: int = 12
) -> tuple[float, float, float, float] | None:
    """A normalised window (l, t, r, b) that cuts no box by more than 1 - MIN_KEPT, or None."""
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    for _ in range(tries):
        scale = rng.uniform(opts.min_crop, 1.0)
        aspect = np.exp(rng.uniform(-opts.max_aspect_change, opts.max_aspect_change))
        w, h = min(1.0, scale * aspect), min(1.0, scale / aspect)
        left, top = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        window = (left, top, left + w, top + h)
        if boxes.shape[0] == 0:
            return window
        iw = np.clip(np.minimum(boxes[:, 2], window[2]) - np.maximum(boxes[:, 0], window[0]), 0, None)
        ih = np.clip(np.minimum(boxes[:, 3], window[3]) - np.maximum(boxes[:, 1], window[1]), 0, None)
        kept = iw * ih / np.maximum(areas, 1e-12)
        if np.all((kept >= MIN_KEPT) | (kept <= 0.0)):
            return window
    return None


def crop_boxes(boxes: NDArray[np.float32], window: tuple[float, float, float, float]) -> NDArray[np.float32]:
    """Boxes in the window's coordinates, clipped to it; boxes left outside are dropped."""
    left, top, right, bottom = window
    w, h = right - left, bottom - top
    moved = (boxes - np.asarray([left, top, left, top], dtype=np.float32)) / np.asarray(
        [w, h, w, h], np.float32
    )
    moved = np.clip(moved, 0.0, 1.0)
    keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    out: NDArray[np.float32] = moved[keep].astype(np.float32)
    return out


def augment(
    image: Image.Image, boxes: NDArray[np.float32], rng: np.random.Generator, opts: AugmentOptions
) -> tuple[Image.Image, NDArray[np.float32]]:
    """One random variant of (image, boxes); boxes stay normalised ltrb."""
    out = image.convert("RGB")
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    if rng.random() < opts.crop_probability:
        window = _crop_window(rng, b, opts)
        if window is not None:
            w, h = out.size
            px = (window[0] * w, window[1] * h, window[2] * w, window[3] * h)
            # Crop then resize back to the original size: the runtime resizes to its input anyway.
            out = out.resize((w, h), Image.Resampling.BILINEAR, box=px)
            b = crop_boxes(b, window)
    if opts.hflip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        b = np.stack([1.0 - b[:, 2], b[:, 1], 1.0 - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
    if opts.vflip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        b = np.stack([b[:, 0], 1.0 - b[:, 3], b[:, 2], 1.0 - b[:, 1]], axis=1).astype(np.float32)
    if opts.rot90:
        for _ in range(int(rng.integers(4))):
            # A quarter turn counter-clockwise: (x, y) -> (y, 1 - x).
            out = out.transpose(Image.Transpose.ROTATE_90)
            b = np.stack([b[:, 1], 1.0 - b[:, 2], b[:, 3], 1.0 - b[:, 0]], axis=1).astype(np.float32)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - opts.brightness, 1 + opts.brightness))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(1 - opts.contrast, 1 + opts.contrast))
    out = ImageEnhance.Color(out).enhance(rng.uniform(1 - opts.saturation, 1 + opts.saturation))
    if opts.colour_cast > 0:
        gains = rng.uniform(1 - opts.colour_cast, 1 + opts.colour_cast, size=3)
        arr = np.asarray(out, dtype=np.float32) * gains[None, None, :]
        out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < opts.blur_probability:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.2))))
    return out, b.reshape(-1, 4)
