"""Hubs are edge boxes. An edge registers itself with its first heartbeat and then reports, on every
heartbeat, the model version it serves per detector and the depth of its escalation outbox.

A hub is online while its last heartbeat is at most ONLINE_WINDOW_S old: three heartbeat intervals,
so that one or two lost heartbeats do not flap it offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import Hub
from cloud.app.errors import NotFoundError
from cloud.app.schemas.fields import as_utc

# Edges send a heartbeat once per `refresh_rate` of their edge config (60 s by default).
HEARTBEAT_INTERVAL_S = 60.0
ONLINE_WINDOW_S = 3 * HEARTBEAT_INTERVAL_S


async def record_heartbeat(
    session: AsyncSession,
    edge_id: str,
    *,
    deployed_versions: dict[str, str],
    outbox_depth: int,
    name: str | None = None,
    info: dict[str, Any] | None = None,
) -> Hub:
    """Insert or update in one statement, so concurrent first heartbeats of one edge make one hub.
    An absent name or info keeps what the hub reported before."""
    now = datetime.now(UTC)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(Hub).values(
        id=edge_id,
        name=name or "",
        registered_at=now,
        last_seen_at=now,
        deployed_versions=deployed_versions,
        outbox_depth=outbox_depth,
        info=info or {},
    )
    changes: dict[str, Any] = {
        "last_seen_at": stmt.excluded.last_seen_at,
        "deployed_versions": stmt.excluded.deployed_versions,
        "outbox_depth": stmt.excluded.outbox_depth,
    }
    if name is not None:
        changes["name"] = stmt.excluded.name
    if info is not None:
        changes["info"] = stmt.excluded.info
    await session.execute(stmt.on_conflict_do_update(index_elements=[Hub.id], set_=changes))
    await session.commit()
    return await get_hub(session, edge_id)


async def list_hubs(session: AsyncSession) -> Sequence[Hub]:
    return (await session.execute(select(Hub).order_by(Hub.registered_at, Hub.id))).scalars().all()


async def get_hub(session: AsyncSession, hub_id: str) -> Hub:
    hub = (
        await session.execute(select(Hub).where(Hub.id == hub_id).execution_options(populate_existing=True))
    ).scalar_one_or_none()
    if hub is None:
        raise NotFoundError(f"hub {hub_id} not found")
    return hub


def is_online(hub: Hub, now: datetime | None = None) -> bool:
    return (now or datetime.now(UTC)) - as_utc(hub.last_seen_at) <= timedelta(seconds=ONLINE_WINDOW_S)
