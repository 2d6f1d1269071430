"""`GET /api/v1/audit`: the audit log of administrative changes, newest first (admins only). Served
through cloud.app.routes.admin's router. The logic is in cloud.app.core.audit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.app.core import audit
from cloud.app.deps import AdminDep, SessionDep
from cloud.app.schemas.audit import AuditEventPublic, AuditPage
from cloud.app.schemas.fields import ID_PATTERN

router = APIRouter(prefix="/api/v1/audit", tags=["admin"])


@router.get("", operation_id="list_audit_events")
async def list_audit_events(
    session: SessionDep,
    admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    action: Annotated[str | None, Query(max_length=60, pattern=r"^[a-z_.]+$")] = None,
    target_id: Annotated[str | None, Query(max_length=120, pattern=ID_PATTERN)] = None,
) -> AuditPage:
    """`action` (e.g. `detector.delete`) and `target_id` narrow it down; `count` is over all pages."""
    rows, count = await audit.list_events(
        session, limit=limit, offset=offset, action=action, target_id=target_id
    )
    return AuditPage(
        count=count,
        limit=limit,
        offset=offset,
        results=[AuditEventPublic.model_validate(row) for row in rows],
    )
