"""Image intake: detect the format from the bytes, enforce limits, decode with EXIF orientation.

Clients label every body `image/jpeg` (the SDK does so for PNG too), so the declared content type
is never trusted. Checks are split in two so a gateway can reject cheaply (`inspect_image`, header
only) and the model runtime pays for the full decode once (`decode_image`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ImageFile import ImageFile

# PIL's own bomb guard would raise before our limit is applied; we enforce ours from the header.
Image.MAX_IMAGE_PIXELS = None


class ImageFormat(StrEnum):
    JPEG = "JPEG"
    PNG = "PNG"
    BMP = "BMP"
    WEBP = "WEBP"


ALLOWED_FORMATS = frozenset(ImageFormat)


class ImageError(Exception):
    """Base for client-caused image problems; `status` is the HTTP status a server should answer."""

    status = 400


class EmptyImageError(ImageError):
    status = 400


class UnsupportedImageFormatError(ImageError):
    status = 415


class ImageTooLargeError(ImageError):
    status = 413


class CorruptImageError(ImageError):
    status = 400


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class ImageInfo:
    format: ImageFormat
    width: int
    height: int
    content_type: str


_CONTENT_TYPES = {
    ImageFormat.JPEG: "image/jpeg",
    ImageFormat.PNG: "image/png",
    ImageFormat.BMP: "image/bmp",
    ImageFormat.WEBP: "image/webp",
}


def sniff_format(data: bytes) -> str | None:
    """Name the format from magic bytes; None when nothing we know matches."""
    if data.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if data.startswith(b"BM") and len(data) >= 26:
        return ImageFormat.BMP
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def check_image_bytes(data: bytes, limits: ImageLimits) -> ImageFormat:
    """Size and format from the magic bytes alone: the cheap gate before bytes are passed on."""
    if not data:
        raise EmptyImageError("request body is empty; send the image bytes (JPEG, PNG, BMP or WebP)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    sniffed = sniff_format(data)
    if sniffed is None:
        raise UnsupportedImageFormatError("body is not a recognised image; send JPEG, PNG, BMP or WebP bytes")
    if sniffed not in ALLOWED_FORMATS:
        raise UnsupportedImageFormatError(f"{sniffed} images are not supported; send JPEG, PNG, BMP or WebP")
    return ImageFormat(sniffed)


def content_type_of(fmt: ImageFormat) -> str:
    return _CONTENT_TYPES[fmt]


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Validate size, format and pixel count from the header alone (no pixel decode)."""
    fmt = check_image_bytes(data, limits)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt.value]) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{fmt} header could not be read: {exc}") from None
    if width <= 0 or height <= 0:
        raise CorruptImageError("image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} pixels"
        )
    return ImageInfo(fmt, width, height, _CONTENT_TYPES[fmt])


def decode_image(
    data: bytes,
    limits: ImageLimits,
    mode: str = "RGB",
    draft_size: tuple[int, int] | None = None,
    info: ImageInfo | None = None,
) -> Image.Image:
    """Fully decode (truncated data is an error), apply EXIF orientation, convert to `mode`.

    `info` is the result of an earlier `inspect_image` of the same bytes, to skip a second header parse.
    `draft_size` lets JPEG decoding scale down by a power of two in the DCT, which is much cheaper
    than decoding a camera frame at full size and resizing it afterwards.
    """
    if info is None:
        info = inspect_image(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=[info.format.value])
            if draft_size is not None and info.format is ImageFormat.JPEG and isinstance(img, ImageFile):
                img.draft("RGB" if mode != "L" else "L", draft_size)
            img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode != mode:
            img = _convert(img, mode)
        return img
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise CorruptImageError(f"{info.format} image could not be decoded: {exc}") from None


def _convert(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than letting convert() drop alpha arbitrarily.
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(base, rgba)
    return img.convert(mode)
