"""Rows for cloud tests, written straight into the test database (and images into the cloud's local
blob store), so a test can set up exactly the queue it needs without going through other routes.

Each call opens its own short-lived engine (no pool), so the factory works from any thread and from
plain synchronous tests.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageDraw
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from cloud.app.core.users import create_token, create_user
from cloud.app.db.models import (
    AlertRuleRow,
    DeliveryStatus,
    Detector,
    Hub,
    ImageQuery,
    Label,
    ModelVersion,
    NotificationEvent,
    ReviewItem,
    ReviewSkip,
    ReviewStatus,
    Role,
    User,
    Webhook,
    WebhookDelivery,
)
from cloud.app.settings import to_async_url
from common.ids import new_detector_id, new_image_query_id

T = TypeVar("T")

RESULT_TYPES = {"BINARY": "binary_classification", "MULTI_CLASS": "multi_classification", "COUNT": "counting"}
DEFAULT_LABELS = {"BINARY": ["YES", "NO"], "COUNT": [str(i) for i in range(11)]}


@dataclass(frozen=True)
class Reviewer:
    user_id: str
    username: str
    token: str
    password: str


@dataclass(frozen=True)
class ItemRef:
    item_id: int
    image_query_id: str
    detector_id: str


def png(seed: int, size: int = 96) -> bytes:
    """A small, distinct picture per seed (a tinted square with the number on it)."""
    hue = (seed * 47) % 200 + 30
    img = Image.new("RGB", (size, size), (hue, 255 - hue, (hue * 3) % 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, size - 9, size - 9), outline=(20, 20, 20), width=3)
    draw.text((size // 3, size // 3), str(seed), fill=(0, 0, 0))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class CloudFactory:
    def __init__(self, database_url: str, blob_root: Path) -> None:
        self.url = to_async_url(database_url)
        self.blob_root = blob_root

    def _run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_async_engine(self.url, poolclass=NullPool)
            try:
                async with engine.begin() as conn:
                    return await work(conn)
            finally:
                await engine.dispose()

        return asyncio.run(main())

    # -- accounts ---------------------------------------------------------------------------------------

    def reviewer(self, role: Role = Role.REVIEWER, password: str | None = None) -> Reviewer:
        """A new user with an API token (and a password, for the pages)."""
        username = f"{role.value}-{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(10)

        async def work(conn: AsyncConnection) -> Reviewer:
            async with AsyncSession(bind=conn) as session:
                user = await create_user(session, username, role, password)
                token = await create_token(session, user, f"{username} token")
                await session.flush()
                return Reviewer(user.id, username, token, password)

        return self._run(work)

    # -- detectors and queued image queries -------------------------------------------------------------

    def detector(
        self,
        mode: str = "BINARY",
        labels: Sequence[str] | None = None,
        query: str = "Is the door closed?",
        name: str | None = None,
    ) -> str:
        detector_id = new_detector_id()
        labels = list(labels if labels is not None else DEFAULT_LABELS[mode])

        async def work(conn: AsyncConnection) -> str:
            await conn.execute(
                insert(Detector).values(
                    id=detector_id,
                    name=name or f"detector-{detector_id[-8:]}",
                    query=query,
                    mode=mode,
                    labels=labels,
                    confidence_threshold=0.9,
                    patience_time=30.0,
                    created_at=datetime.now(UTC),
                )
            )
            return detector_id

        return self._run(work)

    def review_items(
        self,
        detector_id: str,
        count: int,
        *,
        deadlines: Sequence[datetime] | None = None,
        uncertainties: Sequence[float] | None = None,
        created: Sequence[datetime] | None = None,
        result: dict[str, Any] | None = None,
        diagnostics: dict[str, Any] | None = None,
        done_processing: bool = False,
        with_images: bool = False,
        query: str = "Is the door closed?",
        mode: str = "BINARY",
    ) -> list[ItemRef]:
        """`count` image queries of a detector, each queued for review; returned in insertion order."""
        now = datetime.now(UTC)
        refs: list[ItemRef] = []
        queries: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        for i in range(count):
            iq_id = new_image_query_id()
            made = created[i] if created else now - timedelta(seconds=count - i)
            key = f"images/{detector_id}/{iq_id}.png"
            queries.append(
                {
                    "id": iq_id,
                    "detector_id": detector_id,
                    "created_at": made,
                    "query": query,
                    "result_type": RESULT_TYPES[mode],
                    "result": result,
                    "patience_time": 30.0,
                    "confidence_threshold": 0.9,
                    "done_processing": done_processing,
                    "human_review": "DEFAULT",
                    "diagnostics": diagnostics,
                    "image_key": key,
                    "image_content_type": "image/png",
                    "origin": "cloud",
                }
            )
            items.append(
                {
                    "image_query_id": iq_id,
                    "detector_id": detector_id,
                    "status": ReviewStatus.PENDING.value,
                    "deadline": deadlines[i] if deadlines else made + timedelta(seconds=30),
                    "uncertainty": uncertainties[i] if uncertainties else 0.5,
                    "created_at": made,
                    "reason": "low_confidence",
                }
            )
            if with_images:
                path = self.blob_root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png(i))

        async def work(conn: AsyncConnection) -> list[ItemRef]:
            await conn.execute(insert(ImageQuery), queries)
            await conn.execute(insert(ReviewItem), items)
            rows = await conn.execute(
                select(ReviewItem.id, ReviewItem.image_query_id).where(
                    ReviewItem.image_query_id.in_([q["id"] for q in queries])
                )
            )
            ids = {iq: item for item, iq in rows}
            return [ItemRef(ids[q["id"]], q["id"], detector_id) for q in queries]

        refs = self._run(work)
        return refs

    def hub(
        self, edge_id: str, deployed_versions: dict[str, str], outbox_depth: int = 0, name: str = ""
    ) -> None:
        """An edge as its last heartbeat left it (now)."""
        now = datetime.now(UTC)

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(Hub).values(
                    id=edge_id,
                    name=name,
                    registered_at=now,
                    last_seen_at=now,
                    deployed_versions=deployed_versions,
                    outbox_depth=outbox_depth,
                    info={},
                )
            )

        self._run(work)

    def model_version(
        self,
        detector_id: str,
        version: str,
        status: str = "candidate",
        metrics: dict[str, Any] | None = None,
        *,
        current: bool = False,
    ) -> str:
        """A registry row (its blob is not written); `current`: the detector's production version too."""
        version_id = f"mv_{secrets.token_hex(8)}"

        async def work(conn: AsyncConnection) -> str:
            await conn.execute(
                insert(ModelVersion).values(
                    id=version_id,
                    detector_id=detector_id,
                    version=version,
                    status=status,
                    blob_key=f"models/{detector_id}/{version}.tar.gz",
                    sha256="0" * 64,
                    size_bytes=1234,
                    manifest={},
                    metrics=metrics or {},
                    lineage={},
                    created_at=datetime.now(UTC),
                )
            )
            if current:
                await conn.execute(
                    update(Detector)
                    .where(Detector.id == detector_id)
                    .values(production_version_id=version_id)
                )
            return version_id

        return self._run(work)

    def alerting(self, detector_id: str, detector_name: str, edge_name: str) -> None:
        """A webhook, an alert rule on the detector and a few notifications in each delivery state,
        as a week of use leaves them (for the alerts page)."""
        now = datetime.now(UTC)
        stamp = secrets.token_hex(3)
        hook_id, rule_id = f"whk_{stamp}", f"alr_{stamp}"
        events = [
            (
                "alert",
                f"door left open: answer is YES 3 times in a row on {detector_name} ({edge_name})",
                5,
                DeliveryStatus.DELIVERED,
                1,
                200,
                None,
            ),
            (
                "edge_offline",
                f"edge {edge_name} offline: no heartbeat for 12 min",
                40,
                DeliveryStatus.PENDING,
                2,
                503,
                "receiver answered 503: upstream unavailable",
            ),
            (
                "model_promoted",
                f"{detector_name}: version v2 promoted by admin",
                180,
                DeliveryStatus.DEAD,
                12,
                None,
                "ConnectError: [Errno 111] Connection refused",
            ),
        ]

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(Webhook).values(
                    id=hook_id,
                    name=f"ops channel {stamp}",
                    url="https://hooks.example.com/intellioptics",
                    secret="whsec_" + secrets.token_urlsafe(24),
                    events=["alert", "edge_offline", "model_promoted"],
                    enabled=True,
                    created_at=now,
                )
            )
            await conn.execute(
                insert(AlertRuleRow).values(
                    id=rule_id,
                    detector_id=detector_id,
                    name="door left open",
                    condition={"kind": "answer_is", "label": "YES", "count": None},
                    consecutive=3,
                    cooldown_s=600.0,
                    enabled=True,
                    webhook_ids=[hook_id],
                    streak=0,
                    created_at=now,
                )
            )
            for i, (kind, title, minutes, state, attempts, last_status, error) in enumerate(events):
                at = now - timedelta(minutes=minutes)
                event_id = f"evt_{stamp}{i}"
                await conn.execute(
                    insert(NotificationEvent).values(
                        id=event_id,
                        kind=kind,
                        dedupe_key=f"seed:{event_id}",
                        title=title,
                        detector_id=detector_id,
                        rule_id=rule_id if kind == "alert" else None,
                        data={},
                        created_at=at,
                    )
                )
                await conn.execute(
                    insert(WebhookDelivery).values(
                        id=f"dlv_{stamp}{i}",
                        event_id=event_id,
                        webhook_id=hook_id,
                        status=state,
                        attempts=attempts,
                        next_attempt_at=now + timedelta(minutes=4),
                        last_attempt_at=at,
                        last_status=last_status,
                        last_error=error,
                        delivered_at=at if state == DeliveryStatus.DELIVERED else None,
                        created_at=at,
                    )
                )

        self._run(work)

    # -- reading back -----------------------------------------------------------------------------------

    def labels(self, detector_id: str) -> list[dict[str, Any]]:
        async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
            rows = await conn.execute(
                select(Label.__table__).where(Label.detector_id == detector_id).order_by(Label.id)
            )
            return [dict(r._mapping) for r in rows]

        return self._run(work)

    def items(self, detector_id: str) -> dict[int, dict[str, Any]]:
        async def work(conn: AsyncConnection) -> dict[int, dict[str, Any]]:
            rows = await conn.execute(
                select(ReviewItem.__table__).where(ReviewItem.detector_id == detector_id)
            )
            return {r.id: dict(r._mapping) for r in rows}

        return self._run(work)

    def image_query(self, image_query_id: str) -> dict[str, Any]:
        async def work(conn: AsyncConnection) -> dict[str, Any]:
            row = (
                await conn.execute(select(ImageQuery.__table__).where(ImageQuery.id == image_query_id))
            ).one()
            return dict(row._mapping)

        return self._run(work)

    def skips(self, user_id: str) -> set[int]:
        async def work(conn: AsyncConnection) -> set[int]:
            rows = await conn.execute(select(ReviewSkip.review_item_id).where(ReviewSkip.user_id == user_id))
            return {r[0] for r in rows}

        return self._run(work)

    def user_id(self, username: str) -> str:
        async def work(conn: AsyncConnection) -> str:
            uid: str = (await conn.execute(select(User.id).where(User.username == username))).scalar_one()
            return uid

        return self._run(work)
