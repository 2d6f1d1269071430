"""A reproducible counting / box data set from real pixels: coins pasted on real photographs.

No detection data set ships inside an installed package, so one is composed: the 24 coins of
scikit-image's `coins` photograph are cut out (background flattened, thresholded, one convex mask
per coin) and pasted onto crops of scikit-image's other photographs and textures (brick, grass,
gravel, paper, a cat, a rocket, coffee, ...: surfaces and clutter a camera over a table might see),
which are bundled files and need no network. What a camera does to a scene is imitated on the way:

    objects      scale (28..60 px across at 224), any rotation, foreshortening, metal tints,
                 brightness / contrast / gamma per coin, a soft cast shadow, an occasional blur
    occlusion    coins overlap each other, cut-outs of other photographs (paper scraps, leaves of
                 texture) lie across them, the frame cuts them; never more than 30 % of a coin hidden
    camera       uneven lighting, global contrast and colour cast, defocus, sensor noise, JPEG

Each box is the extent of its coin's *visible* pixels, normalised (left, top, right, bottom). The
centres of two coins' boxes are at least `min_separation` (24 px at 224) apart, so no two coins
share a stride-16 cell and a stride-8 peak never hides another. Sample i depends only on (seed, i).
"""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from training.detection.items import DetectionItem

BACKGROUNDS = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coffee",
    "rocket",
    "chelsea",
    "astronaut",
    "cat",
    "page",
    "text",
)
# Photographs the occluding scraps are cut from (never the coins themselves).
SCRAP_SOURCES = ("page", "text", "camera", "chelsea", "brick", "grass", "coffee", "rocket")
BASE_SIDE = 224
MIN_VISIBLE = 0.7  # at most 30 % of a coin hidden (by other layers or the frame)
DIAMETER_RANGE = (28.0, 60.0)  # at 224 px; scaled with the side
MIN_SEPARATION = 24.0  # between visible-box centres, at 224 px
# Metal colours a grey coin may take (multipliers of its grey level).
TINTS = ((1.0, 1.0, 1.0), (1.08, 0.96, 0.72), (1.1, 0.82, 0.62), (0.95, 0.97, 1.05), (1.05, 1.0, 0.85))

FloatImage = NDArray[np.float32]


@dataclass(frozen=True)
class Cutout:
    """One real object: its grey pixels (h, w) in 0..1 and a soft alpha mask of the same shape."""

    grey: FloatImage
    alpha: FloatImage


@dataclass(frozen=True)
class Sample:
    """A composed image and its objects' boxes (m, 4), normalised ltrb of the visible pixels.

    `visible` (m, side, side) holds each object's visible pixels when asked for (tests).
    """

    image: Image.Image
    boxes: NDArray[np.float32]
    visible: NDArray[np.bool_] | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])

    def jpeg(self, quality: int = 90) -> bytes:
        return encode_jpeg(self.image, quality)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _load(name: str) -> NDArray[np.uint8]:
    data: Any = importlib.import_module("skimage.data")
    arr = np.asarray(getattr(data, name)())
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    out: NDArray[np.uint8] = arr
    return out


@lru_cache(maxsize=1)
def background_images() -> tuple[NDArray[np.uint8], ...]:
    """The bundled photographs used as scenes (grey ones stay 2-D; they are tinted when used)."""
    return tuple(_load(name) for name in BACKGROUNDS)


@lru_cache(maxsize=1)
def scrap_images() -> tuple[NDArray[np.uint8], ...]:
    return tuple(_load(name) for name in SCRAP_SOURCES)


@lru_cache(maxsize=1)
def coin_cutouts() -> tuple[Cutout, ...]:
    """The coins of skimage's `coins`, each with the convex hull of its thresholded region as mask.

    The photograph is lit unevenly (brighter at the top), so a single threshold merges coins with
    the background there; a grey opening wider than any coin estimates that background first.
    """
    from scipy import ndimage

    # scikit-image has no type information: its modules are used as Any.
    data: Any = importlib.import_module("skimage.data")
    filters: Any = importlib.import_module("skimage.filters")
    measure: Any = importlib.import_module("skimage.measure")
    morphology: Any = importlib.import_module("skimage.morphology")

    img = data.coins().astype(np.float64)
    background = ndimage.gaussian_filter(ndimage.grey_opening(img, footprint=morphology.disk(40)), 8)
    flat = img - background
    mask = flat > 0.8 * filters.threshold_otsu(flat)
    mask = ndimage.binary_fill_holes(
        ndimage.binary_opening(ndimage.binary_fill_holes(mask), morphology.disk(2))
    )
    out: list[Cutout] = []
    margin = 3
    for region in measure.regionprops(measure.label(mask)):
        r0, c0, r1, c1 = region.bbox
        if not 800 <= region.area <= 6000 or region.eccentricity > 0.7:
            continue
        if r0 < margin or c0 < margin or r1 > img.shape[0] - margin or c1 > img.shape[1] - margin:
            continue
        hull = np.zeros((r1 - r0 + 2 * margin, c1 - c0 + 2 * margin), dtype=np.float64)
        hull[margin:-margin, margin:-margin] = region.image_convex
        alpha = np.clip(ndimage.gaussian_filter(hull, 0.7), 0.0, 1.0)
        grey = img[r0 - margin : r1 + margin, c0 - margin : c1 + margin] / 255.0
        out.append(Cutout(grey=grey.astype(np.float32), alpha=alpha.astype(np.float32)))
    if len(out) < 20:
        raise RuntimeError(f"segmenting skimage's coins found {len(out)} coins, expected 24")
    return tuple(out)


@dataclass
class _Layer:
    """One pasted thing in frame coordinates: colour (side, side, 3), alpha (side, side)."""

    rgb: FloatImage
    alpha: FloatImage
    is_object: bool
    full_pixels: int = 0  # pixels of the whole (unclipped) object mask
    visible: NDArray[np.bool_] | None = None


def _background(rng: np.random.Generator, side: int) -> FloatImage:
    sources = background_images()
    src = sources[int(rng.integers(len(sources)))]
    h, w = src.shape[:2]
    crop = int(min(h, w) * rng.uniform(0.35, 1.0))
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = Image.fromarray(src[top : top + crop, left : left + crop])
    patch = patch.resize((side, side), Image.Resampling.BILINEAR)
    arr = np.asarray(patch, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        tint = rng.uniform(0.75, 1.15, size=3).astype(np.float32)
        arr = arr[:, :, None] * tint[None, None, :]
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    arr = np.rot90(arr, int(rng.integers(4)))
    out: FloatImage = np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)
    return out


def _transform(
    grey: FloatImage, alpha: FloatImage, scale: float, squash: float, angle: float
) -> tuple[FloatImage, FloatImage]:
    """Scale (squashed along x, a tilted view), then rotate; grey and alpha stay aligned."""
    h, w = grey.shape
    size = (max(2, round(w * scale * squash)), max(2, round(h * scale)))
    out = []
    for plane in (grey, alpha):
        img = Image.fromarray(plane, mode="F").resize(size, Image.Resampling.BILINEAR)
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        out.append(np.asarray(img, dtype=np.float32))
    return out[0], np.clip(out[1], 0.0, 1.0)


def _place(
    side: int, rgb: FloatImage, alpha: FloatImage, cx: float, cy: float
) -> tuple[FloatImage, FloatImage]:
    """A cut-out centred at (cx, cy) in a full frame (clipped by the frame's edges)."""
    h, w = alpha.shape
    top, left = round(cy - h / 2), round(cx - w / 2)
    frame_rgb = np.zeros((side, side, 3), dtype=np.float32)
    frame_a = np.zeros((side, side), dtype=np.float32)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(side, top + h), min(side, left + w)
    if y1 > y0 and x1 > x0:
        frame_rgb[y0:y1, x0:x1] = rgb[y0 - top : y1 - top, x0 - left : x1 - left]
        frame_a[y0:y1, x0:x1] = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
    return frame_rgb, frame_a


def _coin_layer(rng: np.random.Generator, side: int, k: float) -> tuple[FloatImage, FloatImage, int]:
    """A transformed, tinted coin (its own window) and its whole mask's pixel count."""
    coins = coin_cutouts()
    coin = coins[int(rng.integers(len(coins)))]
    diameter = rng.uniform(*DIAMETER_RANGE) * k
    scale = diameter / max(coin.alpha.shape)
    grey, alpha = _transform(
        coin.grey, coin.alpha, scale, rng.uniform(0.8, 1.0), float(rng.uniform(0.0, 360.0))
    )
    mean = float(grey[alpha > 0.5].mean()) if (alpha > 0.5).any() else 0.5
    contrast = rng.uniform(0.7, 1.4)
    gain = rng.uniform(0.65, 1.35)
    g = np.clip((mean + (grey - mean) * contrast) * gain, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    tint = np.asarray(TINTS[int(rng.integers(len(TINTS)))], dtype=np.float32)
    tint = tint * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    rgb = np.clip(g[:, :, None] * tint[None, None, :], 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.25:
        sigma = float(rng.uniform(0.5, 1.3))
        rgb = np.stack(
            [_blur(rgb[:, :, c], sigma) for c in range(3)],
            axis=2,
        )
    return rgb, alpha, int((alpha > 0.5).sum())


def _scrap_layer(rng: np.random.Generator, side: int, k: float) -> tuple[FloatImage, FloatImage]:
    """A piece of another photograph with straight edges (paper, a leaf of texture): not a coin."""
    sources = scrap_images()
    src = sources[int(rng.integers(len(sources)))]
    long_side = rng.uniform(30.0, 90.0) * k
    short_side = long_side * rng.uniform(0.2, 0.6)
    h, w = int(short_side) + 2, int(long_side) + 2
    top = int(rng.integers(0, src.shape[0] - h))
    left = int(rng.integers(0, src.shape[1] - w))
    patch = src[top : top + h, left : left + w].astype(np.float32) / 255.0
    if patch.ndim == 2:
        patch = np.repeat(patch[:, :, None], 3, axis=2)
    # A quadrilateral or pentagon inside the patch, its corners jittered.
    n = int(rng.integers(4, 6))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    xs = (0.5 + 0.5 * np.cos(angles) * rng.uniform(0.8, 1.0, size=n)) * (w - 1)
    ys = (0.5 + 0.5 * np.sin(angles) * rng.uniform(0.8, 1.0, size=n)) * (h - 1)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255.0
    angle = float(rng.uniform(0, 360))
    channels = []
    for c in range(3):
        img = Image.fromarray(np.ascontiguousarray(patch[:, :, c]), mode="F")
        channels.append(np.asarray(img.rotate(angle, Image.Resampling.BILINEAR, expand=True), np.float32))
    a = np.asarray(
        Image.fromarray(alpha, mode="F").rotate(angle, Image.Resampling.BILINEAR, expand=True), np.float32
    )
    rgb = np.clip(np.stack(channels, axis=2) * rng.uniform(0.7, 1.2), 0.0, 1.0).astype(np.float32)
    return rgb, np.clip(a, 0.0, 1.0)


def _blur(plane: FloatImage, sigma: float) -> FloatImage:
    if sigma <= 0:
        return plane
    from scipy import ndimage

    out: FloatImage = ndimage.gaussian_filter(np.asarray(plane, dtype=np.float32), sigma, mode="nearest")
    return out


def _shift(plane: FloatImage, dy: int, dx: int) -> FloatImage:
    """`plane` moved by (dy, dx) pixels, zeros coming in (no wrap-around)."""
    out = np.zeros_like(plane)
    h, w = plane.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = plane[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def _box(mask: NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _accept(
    layers: list[_Layer], new: _Layer, side: int, min_separation: float
) -> list[NDArray[np.bool_] | None] | None:
    """Everyone's visible pixels with `new` on top, or None when a coin would be hidden too much or
    two coin centres would come too close."""
    cover = new.alpha > 0.5
    visible: list[NDArray[np.bool_] | None] = []
    for layer in layers:
        if not layer.is_object or layer.visible is None:
            visible.append(None)
            continue
        vis = layer.visible & ~cover
        if vis.sum() < MIN_VISIBLE * layer.full_pixels:
            return None
        visible.append(vis)
    if new.is_object:
        own = new.alpha > 0.5
        if own.sum() < MIN_VISIBLE * new.full_pixels or own.sum() < 16:
            return None
        visible.append(own)
    else:
        visible.append(None)
    centres = [_centre(b) for b in (_box(v) for v in visible if v is not None) if b is not None]
    for i in range(len(centres)):
        for j in range(i):
            if math.dist(centres[i], centres[j]) < min_separation:
                return None
    return visible


def _compose(
    rng: np.random.Generator, count: int, side: int, min_separation: float, tries: int = 40
) -> tuple[FloatImage, list[_Layer]]:
    k = side / BASE_SIDE
    image = _background(rng, side)
    kinds = [True] * count + [False] * int(rng.integers(0, 3))
    rng.shuffle(kinds)
    layers: list[_Layer] = []
    for is_object in kinds:
        for _ in range(tries):
            if is_object:
                rgb, alpha, full = _coin_layer(rng, side, k)
            else:
                rgb, alpha = _scrap_layer(rng, side, k)
                full = 0
            h, w = alpha.shape
            # Centres may sit a little outside the frame: the frame then cuts the object.
            cx = rng.uniform(-0.15 * w, side + 0.15 * w)
            cy = rng.uniform(-0.15 * h, side + 0.15 * h)
            frame_rgb, frame_a = _place(side, rgb, alpha, cx, cy)
            layer = _Layer(frame_rgb, frame_a, is_object, full)
            visible = _accept(layers, layer, side, min_separation)
            if visible is None:
                continue
            layers.append(layer)
            for lay, vis in zip(layers, visible, strict=True):
                lay.visible = vis
            break
    for layer in layers:
        # A soft shadow, cast away from a light above and to one side.
        shadow = _blur(_shift(layer.alpha, int(rng.integers(1, 5)), int(rng.integers(-3, 5))), 2.0)
        image = image * (1.0 - rng.uniform(0.25, 0.6) * shadow[:, :, None])
        a = layer.alpha[:, :, None]
        image = image * (1.0 - a) + layer.rgb * a
    return image.astype(np.float32), layers


def _camera(rng: np.random.Generator, image: FloatImage) -> FloatImage:
    """Uneven light, contrast and colour cast, defocus, sensor noise."""
    side = image.shape[0]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = 1.0 + rng.uniform(0.0, 0.6) * (math.cos(theta) * xx + math.sin(theta) * yy)
    vignette = 1.0 - rng.uniform(0.0, 0.5) * (xx * xx + yy * yy)
    out = image * (ramp * vignette)[:, :, None]
    out = out * rng.uniform(0.9, 1.1, size=3).astype(np.float32)[None, None, :]
    mean = float(out.mean())
    out = mean + (out - mean) * rng.uniform(0.7, 1.2)
    out = np.clip(out * rng.uniform(0.75, 1.2), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.3, 1.2))
        out = np.stack([_blur(out[:, :, c], sigma) for c in range(3)], axis=2)
    noise = rng.normal(0.0, rng.uniform(0.0, 0.03), size=out.shape).astype(np.float32)
    result: FloatImage = np.clip(out + noise, 0.0, 1.0).astype(np.float32)
    return result


def generate_one(
    seed: int,
    index: int,
    max_count: int = 8,
    side: int = BASE_SIDE,
    with_masks: bool = False,
    count: int | None = None,
) -> Sample:
    """Sample `index` of the data set `seed`: the same pixels and boxes on every call."""
    rng = np.random.default_rng([seed, index])
    want = int(rng.integers(0, max_count + 1)) if count is None else count
    min_sep = MIN_SEPARATION * side / BASE_SIDE
    pixels, layers = _compose(rng, want, side, min_sep)
    pixels = _camera(rng, pixels)
    image = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    # What the camera's own encoder leaves behind: one JPEG pass at a middling quality.
    image = Image.open(io.BytesIO(encode_jpeg(image, int(rng.integers(35, 90))))).convert("RGB")
    masks = [layer.visible for layer in layers if layer.is_object and layer.visible is not None]
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        box = _box(mask)
        assert box is not None  # _accept kept only coins with visible pixels
        boxes[i] = np.asarray(box, dtype=np.float32) / side
    visible = np.stack(masks) if with_masks and masks else None
    if with_masks and not masks:
        visible = np.zeros((0, side, side), dtype=bool)
    return Sample(image=image, boxes=boxes, visible=visible)


def generate(
    n: int,
    seed: int,
    max_count: int = 8,
    side: int = BASE_SIDE,
    with_masks: bool = False,
    start: int = 0,
) -> list[Sample]:
    """Samples start..start+n-1 of data set `seed`, each with 0..max_count coins (uniformly)."""
    return [generate_one(seed, start + i, max_count, side, with_masks) for i in range(n)]


def as_items(samples: Sequence[Sample], prefix: str, quality: int = 90) -> list[DetectionItem]:
    """Samples as JPEG-encoded labelled items named `<prefix>-<index>`."""
    return [DetectionItem(f"{prefix}-{i:05d}", s.jpeg(quality), s.boxes) for i, s in enumerate(samples)]
