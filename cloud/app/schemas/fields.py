"""Field types shared by the cloud's request and response models.

Inbound values must be storable by both databases: text without NUL characters (PostgreSQL rejects them) or
lone surrogates (they cannot be encoded as UTF-8), and JSON without NaN or infinities (not JSON).
Request bodies decode `\\u0000`, `\\ud800` and `NaN` into such values, so they are refused at the
boundary with a 400 instead of failing in the database driver."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


MAX_JSON_DEPTH = 32


def check_json(value: Any, depth: int = 0) -> Any:
    """The same rule for every key and string inside a JSON value, nested at most MAX_JSON_DEPTH deep."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key))
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)
    return value


StorableStr = Annotated[str, AfterValidator(check_text)]
StorableJson = Annotated[dict[str, Any], AfterValidator(check_json)]


def json_size(value: Any) -> int:
    return len(json.dumps(value))


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# Outbound times: always timezone-aware, whichever database they came from.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


# Our ids (`usr_…`, `tok_…`, `trj_…`, `det_…`): prefix and base62 body. Path and query parameters that
# name a row use it, so that nothing unstorable reaches a lookup.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
