"""Hubs are edge boxes. An edge registers itself with its first heartbeat and then reports, on every
heartbeat, the model version it serves per detector and the depth of its escalation outbox.

A hub is online while its last heartbeat is at most `CLOUD_EDGE_ONLINE_WINDOW_S` old (by default
ONLINE_WINDOW_S: three heartbeat intervals, so that one or two lost heartbeats do not flap it offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import Detector, Hub, ModelVersion
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


def is_online(hub: Hub, window_s: float = ONLINE_WINDOW_S, now: datetime | None = None) -> bool:
    return (now or datetime.now(UTC)) - as_utc(hub.last_seen_at) <= timedelta(seconds=window_s)


@dataclass(frozen=True)
class DeployedModel:
    detector_id: str
    detector_name: str | None  # None: a detector this cloud does not know (deleted, or another cloud's)
    production: str | None
    serving: str

    @property
    def current(self) -> bool:
        return self.production is not None and self.serving == self.production


@dataclass(frozen=True)
class EdgeRow:
    """One edge as the dashboard shows it."""

    id: str
    name: str
    online: bool
    last_seen_at: datetime
    silent_s: float
    registered_at: datetime
    outbox_depth: int
    models: list[DeployedModel]
    # From the heartbeat's free-form info (an older edge reports neither: None and []).
    outbox_dead: int | None = None
    problems: list[str] = field(default_factory=list)


def reported_problems(info: dict[str, Any] | None) -> tuple[int | None, list[str]]:
    """Dead escalations and what went wrong, as the edge's updater last reported them
    (common.wire.hub_heartbeat `UpdaterInfo`): its config and edge-api errors, and per detector the
    last poll error or a rejected version. Read key by key rather than parsed into that model: the info
    is stored as an edge sent it, an older or another edge may send less or something else, and a
    heartbeat is the edge's word, so anything unexpected in it is skipped rather than trusted."""
    updater = (info or {}).get("updater")
    if not isinstance(updater, dict):
        return None, []
    dead = updater.get("outbox_dead")
    problems = [
        f"{what}: {updater[key]}"
        for key, what in (("config_error", "edge config"), ("edge_api_error", "edge-api"))
        if isinstance(updater.get(key), str) and updater[key]
    ]
    detectors = updater.get("detectors")
    for detector_id, state in detectors.items() if isinstance(detectors, dict) else []:
        if not isinstance(state, dict):
            continue
        rejected = state.get("rejected")
        if isinstance(rejected, dict) and rejected.get("version"):
            problems.append(
                f"{detector_id}: version {rejected['version']} rejected ({rejected.get('reason', '')})"
            )
        if isinstance(state.get("last_error"), str) and state["last_error"]:
            problems.append(f"{detector_id}: {state['last_error']}")
    return (dead if isinstance(dead, int) and not isinstance(dead, bool) else None), problems[:10]


async def edge_rows(
    session: AsyncSession, window_s: float = ONLINE_WINDOW_S, now: datetime | None = None
) -> list[EdgeRow]:
    """Every edge, offline ones first, with the version it serves per detector beside production's."""
    moment = now or datetime.now(UTC)
    found = await list_hubs(session)
    wanted = {d for hub in found for d in (hub.deployed_versions or {})}
    production: dict[str, tuple[str, str | None]] = {}
    if wanted:
        rows = await session.execute(
            select(Detector.id, Detector.name, ModelVersion.version)
            .outerjoin(ModelVersion, ModelVersion.id == Detector.production_version_id)
            .where(Detector.id.in_(wanted), Detector.deleted_at.is_(None))
        )
        production = {det: (name, version) for det, name, version in rows}
    await session.commit()
    out = []
    for hub in found:
        models = []
        for det, version in sorted((hub.deployed_versions or {}).items()):
            name, in_production = production.get(det, (None, None))
            models.append(DeployedModel(det, name, in_production, str(version)))
        seen = as_utc(hub.last_seen_at)
        dead, problems = reported_problems(hub.info)
        out.append(
            EdgeRow(
                id=hub.id,
                name=hub.name or "",
                online=is_online(hub, window_s, moment),
                last_seen_at=seen,
                silent_s=max(0.0, (moment - seen).total_seconds()),
                registered_at=as_utc(hub.registered_at),
                outbox_depth=hub.outbox_depth,
                models=models,
                outbox_dead=dead,
                problems=problems,
            )
        )
    return sorted(out, key=lambda e: (e.online, e.name or e.id, e.id))
