"""What edge-api tells the other services of its box about itself (`GET /internal/facts`).

The updater's heartbeat needs the edge's id and its outbox depth. It asks this route, which answers
from edge-api's own state and calls nobody, rather than edge-api's /status, which asks the updater in
turn (the aggregator must stay the only caller of the others).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class OutboxDepth(BaseModel):
    pending: int = Field(ge=0, description="escalations waiting to reach the cloud")
    dead: int = Field(ge=0, description="escalations the cloud refused for good (redrive to retry)")
    oldest_pending_age_s: float | None = Field(default=None, description="age of the oldest waiting one")


class EdgeFacts(BaseModel):
    edge_id: str = Field(min_length=1, description="the edge's id at the cloud")
    outbox: OutboxDepth
