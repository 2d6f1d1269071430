"""Query parameters of `POST /device-api/v1/image-queries` on the edge: the shared parser (with the
shared metadata rules of `common.validation`), its errors raised as the edge's own 400."""

from __future__ import annotations

from collections.abc import Mapping

from common.params import InvalidParameterError, SubmitParams
from common.validation import parse_submit_params as _parse_submit_params
from edge.api.errors import BadRequestError

__all__ = ["SubmitParams", "parse_submit_params"]


def parse_submit_params(query: Mapping[str, str]) -> SubmitParams:
    try:
        return _parse_submit_params(query)
    except InvalidParameterError as exc:
        raise BadRequestError(str(exc)) from None
