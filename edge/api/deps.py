"""Annotated dependencies: routes ask for what they need, the composition root provides it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from edge.api.core.config_store import ConfigStore
from edge.api.core.detectors import DetectorDirectory
from edge.api.core.image_queries import ImageQueryService
from edge.api.core.inference_client import InferenceClient
from edge.api.core.priors import PriorBook
from edge.api.core.store import EdgeStore
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.sender import OutboxSender
from edge.api.metrics import EdgeMetrics
from edge.api.settings import EdgeSettings


@dataclass
class EdgeState:
    settings: EdgeSettings
    store: EdgeStore
    config: ConfigStore
    inference: InferenceClient
    directory: DetectorDirectory
    image_queries: ImageQueryService
    priors: PriorBook
    metrics: EdgeMetrics
    cloud: CloudLink
    outbox: OutboxSender
    started_at: float


async def get_state(request: Request) -> EdgeState:
    state: EdgeState = request.app.state.edge
    return state


StateDep = Annotated[EdgeState, Depends(get_state)]
