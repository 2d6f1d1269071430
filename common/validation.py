"""Rules for what clients send, applied alike by the edge and the cloud (docs/architecture.md §11): whatever the
edge accepts, the cloud accepts too, so nothing the edge queues for escalation can die in its outbox.

Every rule raises `InvalidInputError`, a `common.params.InvalidParameterError`, which each service
answers with its own 400. Messages never echo the offending text raw (it may not be encodable).

The limit table, the only place these numbers live:

| input                | rule                                                                        |
|----------------------|-----------------------------------------------------------------------------|
| text                 | valid Unicode (no lone surrogates, so it encodes as UTF-8), no NUL           |
| image-query metadata | a JSON object of such text, finite numbers only, nested at most 8 levels;   |
|                      | at most 1024 bytes both as sent and as compact UTF-8 JSON (docs/wire.md §4)  |
| other stored JSON    | the same text and number rules, nested at most 32 levels                     |
| detector name        | trimmed, then 1 to 200 characters of such text                               |
| ROIs (boxes)         | at most 100; label 1 to 100 characters of such text; score finite in [0, 1]  |
|                      | (1.0 when absent); left/top/right/bottom finite in [0, 1], right > left,     |
|                      | bottom > top; x, y optional and recomputed as the centre                     |
| X-Request-Id         | the idempotency key as sent when it is at most 128 of [A-Za-z0-9_.:-],      |
|                      | else `sha256=` and the hex digest of all of it: never cut, so never confused |
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common import params as submit_params
from common.params import InvalidParameterError, SubmitParams
from common.wire.device_api import Roi

MAX_METADATA_BYTES = 1024
MAX_METADATA_DEPTH = 8
MAX_JSON_DEPTH = 32
MAX_NAME_CHARS = 200
MAX_REQUEST_ID_CHARS = 128
MAX_ROIS = 100
MAX_ROI_LABEL_CHARS = 100

_PLAIN_REQUEST_ID_RE = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MAX_REQUEST_ID_CHARS}}}$")
_HASHED_KEY_PREFIX = "sha256="  # '=' is outside the plain alphabet: a hashed key never equals a plain one


class InvalidInputError(InvalidParameterError):
    """Client input that breaks one of the rules above: the client's fault, answered with 400."""


# --- text and JSON --------------------------------------------------------------------------------


def check_text(value: str, what: str = "text") -> str:
    if "\x00" in value:
        raise InvalidInputError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} must be valid Unicode (no lone surrogates)") from None
    return value


def _key_path(where: str, key: object) -> str:
    shown = ascii(key[:40]) if isinstance(key, str) else repr(key)
    return f"{where}[{shown}]"


def json_depth_checked(value: Any, max_depth: int, where: str, depth: int = 0) -> Any:
    """Every key and string is text (check_text), every number finite, containers nested at most
    `max_depth` deep (a scalar is depth 0, `{}` depth 1). Returns `value` unchanged."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where}: numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict | list):
        if depth + 1 > max_depth:
            raise InvalidInputError(f"{where}: nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                path = _key_path(where, key)
                if not isinstance(key, str):
                    raise InvalidInputError(f"{path}: object keys must be strings")
                check_text(key, f"{path} (key)")
                json_depth_checked(item, max_depth, path, depth + 1)
        else:
            for index, item in enumerate(value):
                json_depth_checked(item, max_depth, f"{where}[{index}]", depth + 1)
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidInputError(f"{where}: {type(value).__name__} is not a JSON value")
    return value


def check_json(value: Any, where: str = "value") -> Any:
    """Any other JSON a service stores (mode configuration, ROIs, results, diagnostics)."""
    return json_depth_checked(value, MAX_JSON_DEPTH, where)


def compact_json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: what both sides measure, whoever encoded it first."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


# --- metadata -------------------------------------------------------------------------------------


def check_metadata(value: Any, where: str = "metadata") -> dict[str, Any]:
    """Image-query (and detector) metadata as the cloud stores it; the edge checks the same before
    it answers, so an escalation never carries metadata the cloud refuses."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object")
    json_depth_checked(value, MAX_METADATA_DEPTH, where)
    size = compact_json_size(value)
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(f"{where} is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
    return value


def _refuse_constant(name: str) -> Any:
    raise InvalidInputError(f"metadata: numbers must be finite, got {name}")


def decode_metadata(raw: str | None) -> dict[str, Any] | None:
    """The SDK sends URL-safe base64 of a JSON object; plain JSON text is accepted too."""
    if raw is None or raw == "":
        return None
    if raw.lstrip().startswith("{"):
        text = raw.encode("utf-8", "surrogatepass")
    else:
        if len(raw) > 2 * MAX_METADATA_BYTES:  # base64 of 1024 bytes is 1368 characters
            raise InvalidInputError(f"metadata is over {MAX_METADATA_BYTES} bytes of JSON")
        try:
            text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise InvalidInputError("metadata must be URL-safe base64 of a JSON object") from None
    if len(text) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is {len(text)} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
    try:
        value = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except InvalidInputError:
        raise
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidInputError("metadata is not valid UTF-8 JSON") from None
    return check_metadata(value)


def parse_submit_params(query: Mapping[str, str]) -> SubmitParams:
    """`common.params.parse_submit_params` with `metadata` decoded and checked by the rules here;
    the edge and the cloud both parse `POST image-queries` through this."""
    parsed = submit_params.parse_submit_params(query)
    return dataclasses.replace(parsed, metadata=decode_metadata(query.get("metadata")))


# --- names ----------------------------------------------------------------------------------------


def check_name(value: str, what: str = "name") -> str:
    """A detector name as stored: trimmed, non-empty, at most MAX_NAME_CHARS."""
    name = value.strip()
    if not name:
        raise InvalidInputError(f"{what} must not be empty or only whitespace")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"{what} is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    return check_text(name, what)


# --- ROIs ---------------------------------------------------------------------------------------


def _is_finite_number(value: Any) -> bool:
    """An int or a finite float; bools are not numbers here, and no huge int is turned into a float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _unit_number(value: Any, where: str) -> float:
    """A finite number in [0, 1] (bools are not numbers here)."""
    if not _is_finite_number(value):
        raise InvalidInputError(f"{where} must be a finite number from 0 to 1 (no NaN or Infinity)")
    if not 0 <= value <= 1:
        shown = f"{value:g}" if isinstance(value, float) or abs(value) < 10**6 else "out of range"
        raise InvalidInputError(f"{where} is {shown}; it must lie in [0, 1] (normalised coordinates)")
    return float(value)


def _check_roi(raw: Any, where: str) -> Roi:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where} must be an object with label, score and geometry")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        raise InvalidInputError(f"{where}.label must be a non-empty string")
    if len(label) > MAX_ROI_LABEL_CHARS:
        raise InvalidInputError(
            f"{where}.label is {len(label)} characters; the limit is {MAX_ROI_LABEL_CHARS}"
        )
    check_text(label, f"{where}.label")
    score = raw.get("score")
    score = 1.0 if score is None else _unit_number(score, f"{where}.score")
    geometry = raw.get("geometry")
    if not isinstance(geometry, dict):
        raise InvalidInputError(f"{where}.geometry must be an object with left, top, right and bottom")
    left, top, right, bottom = (
        _unit_number(geometry.get(side), f"{where}.geometry.{side}")
        for side in ("left", "top", "right", "bottom")
    )
    for centre in ("x", "y"):  # the SDK sends them; they are recomputed, but must still be numbers
        value = geometry.get(centre)
        if value is not None and not _is_finite_number(value):
            raise InvalidInputError(f"{where}.geometry.{centre} must be a finite number when given")
    if right <= left:
        raise InvalidInputError(f"{where}.geometry: right ({right:g}) must be greater than left ({left:g})")
    if bottom <= top:
        raise InvalidInputError(f"{where}.geometry: bottom ({bottom:g}) must be greater than top ({top:g})")
    return Roi.from_box(label, score, left, top, right, bottom)


def check_rois(raw: Any, where: str = "rois") -> list[Roi] | None:
    """Boxes a person or a client sends (labels, review answers), checked before anything is stored:
    a box nobody can draw is refused with a message saying which one and why. None stays None."""
    if raw is None:
        return None
    if not isinstance(raw, list | tuple):
        raise InvalidInputError(f"{where} must be a list of boxes or null")
    if len(raw) > MAX_ROIS:
        raise InvalidInputError(f"{where} holds {len(raw)} boxes; the limit is {MAX_ROIS}")
    out: list[Roi] = []
    for index, item in enumerate(raw):
        if isinstance(item, Roi):
            item = item.model_dump(mode="python")
        out.append(_check_roi(item, f"{where}[{index}]"))
    return out


# --- idempotency ----------------------------------------------------------------------------------


def idempotency_key(request_id: str | None) -> str | None:
    """The key a request id is stored under: whole, or hashed whole when too long or unusual."""
    if not request_id:
        return None
    if _PLAIN_REQUEST_ID_RE.match(request_id):
        return request_id
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    return _HASHED_KEY_PREFIX + digest


def image_digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


@dataclass(frozen=True)
class EarlierQuery:
    """What a service recorded about a query, as far as a repeat has to match it."""

    image_query_id: str
    detector_id: str
    image_sha256: str | None  # None for records kept from before images were hashed


def repeat_conflict(
    earlier: EarlierQuery,
    *,
    detector_id: str,
    image_sha256: str,
    image_query_id: str | None,
) -> str | None:
    """Why a request that shares a key with `earlier` is not a repeat of it (the 409 detail), or None
    when it is one and may get the first answer. Never someone else's answer."""
    if image_query_id is not None and image_query_id == earlier.image_query_id:
        key = f"image_query_id {image_query_id}"
    else:
        key = "this X-Request-Id"
    fresh = "send a new query with a new id"
    if earlier.detector_id != detector_id:
        return f"{key} was already used for detector {earlier.detector_id}; {fresh}"
    if image_query_id is not None and image_query_id != earlier.image_query_id:
        return f"this X-Request-Id was already used for image query {earlier.image_query_id}; {fresh}"
    if earlier.image_sha256 is not None and earlier.image_sha256 != image_sha256:
        return f"{key} was already used with a different image; {fresh}"
    return None
