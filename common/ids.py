"""Groundlight-style ids: a prefix plus 27 base62 characters (KSUID-like, time-sortable)."""

from __future__ import annotations

import re
import secrets
import time

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_BODY_LEN = 27
_KSUID_EPOCH = 1_400_000_000

DETECTOR_ID_RE = re.compile(r"^det_[A-Za-z0-9]{27}$")
# Clients may choose their own image-query ids (SDK `image_query_id=`); keep them URL- and path-safe.
IMAGE_QUERY_ID_RE = re.compile(r"^(iq|chk)_[A-Za-z0-9_-]{1,100}$")


def _base62(value: int, width: int) -> str:
    chars = []
    while value:
        value, rem = divmod(value, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars)).rjust(width, "0")


def new_id(prefix: str) -> str:
    """A 4-byte timestamp and 16 random bytes, so ids sort roughly by creation time."""
    stamp = max(0, int(time.time()) - _KSUID_EPOCH)
    raw = stamp.to_bytes(4, "big") + secrets.token_bytes(16)
    return f"{prefix}_{_base62(int.from_bytes(raw, 'big'), ID_BODY_LEN)}"


def new_image_query_id() -> str:
    return new_id("iq")


def new_detector_id() -> str:
    return new_id("det")


def is_detector_id(value: str) -> bool:
    return bool(DETECTOR_ID_RE.match(value))


def is_image_query_id(value: str) -> bool:
    return bool(IMAGE_QUERY_ID_RE.match(value))
