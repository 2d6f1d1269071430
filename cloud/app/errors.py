"""Domain errors of the cloud and the one table that maps them to HTTP.

CloudError
├── BadRequestError     400  malformed input
├── NotFoundError       404
├── ConflictError       409  e.g. deleting the production model version
├── PayloadTooLargeError 413 an upload over its limit (bundle, backbone, embeddings, report)
└── UnprocessableError  422  well-formed but unusable (a bundle that fails verification)
AuthError (auth)        401  no or unknown token / session
ForbiddenError (auth)   403  known caller, wrong role
BlobNotFoundError       404
ImageError (common)     400/413/415
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from cloud.app.auth import AuthError, ForbiddenError
from cloud.app.blobstore import BlobNotFoundError
from common.http import json_error
from common.imaging import ImageError


class CloudError(Exception):
    status = 500


class BadRequestError(CloudError):
    status = 400


class NotFoundError(CloudError):
    status = 404


class ConflictError(CloudError):
    status = 409


class PayloadTooLargeError(CloudError):
    status = 413


class UnprocessableError(CloudError):
    status = 422


def _cloud_error(exc: Exception) -> Response:
    assert isinstance(exc, CloudError)
    return json_error(exc.status, str(exc))


def _auth_error(exc: Exception) -> Response:
    return json_error(401, str(exc) or "missing or invalid credentials")


def _forbidden(exc: Exception) -> Response:
    return json_error(403, str(exc) or "forbidden")


def _blob_missing(exc: Exception) -> Response:
    return json_error(404, "blob not found")


def _image_error(exc: Exception) -> Response:
    assert isinstance(exc, ImageError)
    return json_error(exc.status, str(exc))


ERROR_RESPONSES: dict[type[Exception], Callable[[Exception], Response]] = {
    CloudError: _cloud_error,
    AuthError: _auth_error,
    ForbiddenError: _forbidden,
    BlobNotFoundError: _blob_missing,
    ImageError: _image_error,
}
