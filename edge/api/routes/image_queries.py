"""`/device-api/v1/image-queries` on the edge.

`POST` is what every camera frame hits, so the app serves it through `submit_endpoint`, a plain ASGI
endpoint ahead of FastAPI's stack (common.http.FastPathApp); the FastAPI route below declares it for
the OpenAPI document and answers the same way if ever reached.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from common.http import Receive, Scope, query_dict, read_body
from common.wire.device_api import ImageQuery
from edge.api.core.params import parse_submit_params
from edge.api.deps import DEVICE, EdgeState, StateDep

SUBMIT_PATH = "/device-api/v1/image-queries"

router = APIRouter(prefix=SUBMIT_PATH, tags=["image-queries"])

_JSON = "application/json"


def client_request_id(scope: Scope) -> str | None:
    """X-Request-Id exactly as the client sent it (the logged copy is cut at 128 characters), so two
    long ids that share a beginning stay two idempotency keys."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return bytes(value).decode("latin-1") or None
    return None


async def _submit(state: EdgeState, scope: Scope, receive: Receive) -> Response:
    """The image is the raw body; its format is read from the bytes, whatever Content-Type says."""
    params = parse_submit_params(query_dict(scope))
    body = await read_body(receive)
    answer = await state.image_queries.submit(params, body, client_request_id(scope))
    headers = {"Server-Timing": answer.server_timing} if answer.server_timing else None
    return Response(answer.body, media_type=_JSON, headers=headers)


async def submit_endpoint(scope: Scope, receive: Receive) -> Response:
    """The fast path skips FastAPI's dependencies, so it asks the authenticator itself."""
    state: EdgeState = scope["app"].state.edge
    await state.auth.authenticate_scope(scope)
    return await _submit(state, scope, receive)


@router.post(
    "",
    response_model=ImageQuery,
    operation_id="submit_image_query",
    dependencies=[DEVICE],
    openapi_extra={
        "requestBody": {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def submit_image_query(request: Request, state: StateDep) -> Response:
    """The image is the raw body; its format is read from the bytes, whatever Content-Type says."""
    return await _submit(state, request.scope, request.receive)


@router.get(
    "/{image_query_id}", response_model=ImageQuery, operation_id="get_image_query", dependencies=[DEVICE]
)
async def get_image_query(image_query_id: str, state: StateDep) -> Response:
    return Response(await state.image_queries.get(image_query_id), media_type=_JSON)
