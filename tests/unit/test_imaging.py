from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from common.imaging import (
    CorruptImageError,
    EmptyImageError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedImageFormatError,
    decode_image,
    inspect_image,
)

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header and compressed rows without allocating the image in memory."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_allowed_formats_are_recognised_from_bytes(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt)
    info = inspect_image(data, LIMITS)
    assert (info.format, info.width, info.height) == (fmt, 40, 30)
    assert decode_image(data, LIMITS).size == (40, 30)


def test_empty_body_is_400() -> None:
    with pytest.raises(EmptyImageError) as e:
        inspect_image(b"", LIMITS)
    assert e.value.status == 400


def test_gif_is_415() -> None:
    with pytest.raises(UnsupportedImageFormatError) as e:
        inspect_image(encode(Image.new("P", (8, 8)), "GIF"), LIMITS)
    assert e.value.status == 415


def test_json_text_is_415() -> None:
    with pytest.raises(UnsupportedImageFormatError):
        inspect_image(b'{"not": "an image"}', LIMITS)


def test_truncated_jpeg_fails_the_full_decode_with_400() -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(CorruptImageError) as e:
        decode_image(data[: len(data) // 2], LIMITS)
    assert e.value.status == 400


def test_pixel_limit_is_checked_from_the_header_alone() -> None:
    data = huge_png(10_000, 10_000)  # 100 megapixels in a few kilobytes
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError) as e:
        inspect_image(data, LIMITS)
    assert e.value.status == 413


def test_byte_limit_is_413() -> None:
    with pytest.raises(ImageTooLargeError):
        inspect_image(b"\xff\xd8\xff" + b"\0" * 1_000_001, LIMITS)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert decode_image(data, LIMITS).size == (20, 60)


def test_alpha_is_composited_not_dropped_arbitrarily() -> None:
    img = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    out = decode_image(encode(img, "PNG"), LIMITS, mode="L")
    assert out.getpixel((0, 0)) == 0
