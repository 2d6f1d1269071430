"""Query parameters of `POST /device-api/v1/image-queries`, parsed and checked the same way on the edge
and in the cloud (docs/wire.md §4). Anything off raises `InvalidParameterError`, which
each service maps to its own 400."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from common.ids import is_detector_id, is_image_query_id
from common.wire.device_api import HumanReview

MAX_INSPECTION_ID_CHARS = 100
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class InvalidParameterError(ValueError):
    """A malformed or out-of-range parameter: the client's fault, answered with 400."""

    status = 400


@dataclass(frozen=True)
class SubmitParams:
    detector_id: str
    patience_time: float | None = None
    confidence_threshold: float | None = None
    human_review: HumanReview = HumanReview.DEFAULT
    want_async: bool = False
    inspection_id: str | None = None
    metadata: dict[str, Any] | None = None  # decoded and checked by common.validation
    image_query_id: str | None = None


def with_detector_policy(
    params: SubmitParams, policy: HumanReview, cloud_allowed: bool = True
) -> SubmitParams:
    """A query that leaves human review to the detector (DEFAULT) gets the detector's policy, which an
    admin sets in the cloud; a query's own ALWAYS or NEVER wins. Where nothing may reach the cloud (an
    edge-only detector) ALWAYS cannot hold, so the query keeps DEFAULT there."""
    if params.human_review is not HumanReview.DEFAULT or policy is HumanReview.DEFAULT:
        return params
    if policy is HumanReview.ALWAYS and not cloud_allowed:
        return params
    return replace(params, human_review=policy)


def parse_submit_params(query: Mapping[str, str]) -> SubmitParams:
    """Everything but `metadata`, which `common.validation.parse_submit_params` adds by its rules."""
    detector_id = query.get("detector_id")
    if not detector_id:
        raise InvalidParameterError("detector_id is required")
    if not is_detector_id(detector_id):
        raise InvalidParameterError("detector_id must be det_ followed by 27 base62 characters")
    image_query_id = query.get("image_query_id") or None
    if image_query_id is not None and not is_image_query_id(image_query_id):
        raise InvalidParameterError("image_query_id must be iq_ followed by up to 100 of [A-Za-z0-9_-]")
    inspection_id = query.get("inspection_id") or None
    if inspection_id is not None and len(inspection_id) > MAX_INSPECTION_ID_CHARS:
        raise InvalidParameterError(f"inspection_id is longer than {MAX_INSPECTION_ID_CHARS} characters")
    return SubmitParams(
        detector_id=detector_id,
        patience_time=parse_number(query, "patience_time", low=0.0, high=3600.0, low_open=True),
        confidence_threshold=parse_number(query, "confidence_threshold", low=0.0, high=1.0),
        human_review=parse_human_review(query.get("human_review")),
        want_async=parse_flag(query, "want_async"),
        inspection_id=inspection_id,
        image_query_id=image_query_id,
    )


def parse_number(
    query: Mapping[str, str], name: str, low: float, high: float, low_open: bool = False
) -> float | None:
    """A float in [low, high] (or (low, high]); absent or empty is None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameterError(f"{name} must be a number, got {raw[:40]!r}") from None
    if value != value or value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidParameterError(f"{name} must lie in {bracket}{low:g}, {high:g}], got {value:g}")
    return value


def parse_flag(query: Mapping[str, str], name: str) -> bool:
    """The SDK sends the literal `True`; accept the usual spellings of both values."""
    raw = query.get(name)
    if raw is None or raw == "":
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidParameterError(f"{name} must be true or false, got {raw[:40]!r}")


def parse_human_review(raw: str | None) -> HumanReview:
    if raw is None or raw == "":
        return HumanReview.DEFAULT
    try:
        return HumanReview(raw.upper())
    except ValueError:
        raise InvalidParameterError("human_review must be DEFAULT, ALWAYS or NEVER") from None
