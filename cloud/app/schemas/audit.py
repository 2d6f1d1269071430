"""The audit log as the API shows it: newest first, paged."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.app.schemas.fields import UtcDatetime


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    actor_id: str | None = Field(description="the user; null for the worker")
    actor_name: str
    actor_role: str = Field(examples=["admin", "trainer", "worker"])
    action: str = Field(examples=["detector.delete", "model.promote", "token.revoke"])
    target_type: str = Field(examples=["detector", "model", "user", "token", "training_job"])
    target_id: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    count: int = Field(description="events that match, over all pages")
    limit: int
    offset: int
    results: list[AuditEventPublic]
