"""The SDK's edge helpers (`ExperimentalApi.edge`): config, readiness, upstream.

Reading and changing the edge config is for the edge operator (it names cameras and their
credentials); camera passwords are redacted in every answer (edge.api.core.config_secrets). The
streams service reads the config with the passwords from the internal route.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from common.edge_config import EdgeConfigError
from common.wire.device_api import DetectorReadiness, EdgeInfo
from edge.api.core.config_secrets import RedactedSecretError, redacted_config, restore_secrets
from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import DEVICE, INTERNAL, OPERATOR, StateDep
from edge.api.errors import BadRequestError

router = APIRouter(tags=["edge"])


@router.get("/edge-config", operation_id="get_edge_config", dependencies=[OPERATOR])
async def get_edge_config(state: StateDep) -> dict[str, Any]:
    return redacted_config(state.config.config)


@router.get("/internal/edge-config", operation_id="get_edge_config_with_secrets", dependencies=[INTERNAL])
async def get_edge_config_with_secrets(state: StateDep) -> dict[str, Any]:
    """The streams service needs the cameras' credentials; nobody else gets them."""
    return state.config.config.model_dump(mode="json")


@router.put("/edge-config", operation_id="put_edge_config", dependencies=[OPERATOR])
async def put_edge_config(request: Request, state: StateDep) -> dict[str, Any]:
    """Validated in full, then applied without restart; 400 lists every bad field by its path."""
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise BadRequestError("body must be a JSON edge config") from None
    try:
        config = state.config.apply(restore_secrets(data, state.config.config))
    except RedactedSecretError as exc:
        raise BadRequestError(f"invalid edge config: {exc}") from None
    except EdgeConfigError as exc:
        raise BadRequestError("invalid edge config: " + "; ".join(exc.errors)) from None
    # Detectors without a model answer with their label prior: fetch those now, in the background.
    state.priors.prefetch_configured(config)
    return redacted_config(config)


@router.get("/edge-detector-readiness", operation_id="edge_detector_readiness", dependencies=[DEVICE])
async def readiness(state: StateDep) -> dict[str, DetectorReadiness]:
    """Ready: the edge answers it itself, with its model or, before it has one, with its label prior."""
    config = state.config.config
    out = {}
    for det in config.detectors:
        try:
            model = await state.directory.model(det.detector_id)
        except InferenceUnavailableError:
            model = None
        ready = model is not None
        if not ready and config.inference_config(det).enabled:
            ready = state.priors.known(det.detector_id) is not None
            if not ready:
                state.priors.refresh_soon(det.detector_id)  # e.g. the fetch after the config failed
        out[det.detector_id] = DetectorReadiness(ready=ready)
    return out


@router.get("/edge-info", response_model=EdgeInfo, operation_id="edge_info", dependencies=[DEVICE])
async def edge_info(state: StateDep) -> EdgeInfo:
    return EdgeInfo(upstream_endpoint=state.settings.cloud_url)
