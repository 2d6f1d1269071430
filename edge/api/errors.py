"""Domain errors of the edge API and the one table that maps them to HTTP.

EdgeError
├── BadRequestError           400  malformed parameter (never forwarded to the cloud)
├── UnauthorizedError         401  no token, or one nobody vouches for (the SDK raises ApiTokenError)
├── ForbiddenError            403  a known caller without the rights for this route
├── NotServedHereError        404  a route/object the edge does not own → gateway asks the cloud
├── EdgeCannotAnswerError     503  detector not configured, disabled or without a model → cloud
│   └── OfflineOnlyError      503 + X-No-Fallback  same, for a no_cloud detector
└── ConflictError             409
ImageError (common.imaging)   400/413/415  bad image bytes
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from common.http import json_error
from common.imaging import ImageError

NO_FALLBACK_HEADER = "X-No-Fallback"


class EdgeError(Exception):
    status = 500
    headers: dict[str, str] = {}


class BadRequestError(EdgeError):
    status = 400


class UnauthorizedError(EdgeError):
    status = 401


class ForbiddenError(EdgeError):
    status = 403


class NotServedHereError(EdgeError):
    status = 404


class EdgeCannotAnswerError(EdgeError):
    status = 503


class OfflineOnlyError(EdgeCannotAnswerError):
    headers = {NO_FALLBACK_HEADER: "1"}


class ConflictError(EdgeError):
    status = 409


def _edge_error(exc: Exception) -> Response:
    assert isinstance(exc, EdgeError)
    return json_error(exc.status, str(exc), exc.headers or None)


def _image_error(exc: Exception) -> Response:
    assert isinstance(exc, ImageError)
    return json_error(exc.status, str(exc))


ERROR_RESPONSES: dict[type[Exception], Callable[[Exception], Response]] = {
    EdgeError: _edge_error,
    ImageError: _image_error,
}
