"""Rows for the worker, hubs, admin and training-job tests, written straight into the test database,
and a private database per test module (these tests scan whole tables: the lease takes any queued
job, the worker looks at every detector)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.core.users import create_token, create_user
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import (
    Detector,
    ExportJob,
    ImageQuery,
    JobStatus,
    Label,
    LabelSource,
    ReviewItem,
    Role,
    TrainingJob,
)
from cloud.app.settings import CloudSettings, to_async_url
from cloud.worker.loop import TickReport, close_state, make_state
from cloud.worker.loop import purge_deleted_detectors as purge_step
from common.ids import new_detector_id, new_id, new_image_query_id
from tests.support.cloud import DEVICE_TOKEN, CloudServer, TestDatabase

T = TypeVar("T")


def private_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    """For a module-scoped `cloud_db` override: a database of the module's own."""
    db = TestDatabase(Path(tmp_path_factory.mktemp("cloud-db"))).create()
    yield db
    db.drop()


@asynccontextmanager
async def sessions_for(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(to_async_url(database_url), pool_size=2)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tokens:
    admin: str
    reviewer: str
    trainer: str
    device: str = DEVICE_TOKEN

    def of(self, role: Role) -> str:
        return {
            Role.ADMIN: self.admin,
            Role.REVIEWER: self.reviewer,
            Role.TRAINER: self.trainer,
            Role.DEVICE: self.device,
        }[role]


def seed_tokens(database_url: str) -> Tokens:
    """An admin, a reviewer and a trainer with API tokens (first start gives the admin only a password,
    and the trainer's token goes to a file only when the cloud is told where)."""

    async def seed() -> Tokens:
        async with sessions_for(database_url) as sessions, sessions() as session:
            tag = secrets.token_hex(4)
            admin = await create_user(session, f"admin-{tag}", Role.ADMIN, "admin-password-" + tag)
            reviewer = await create_user(
                session, f"reviewer-{tag}", Role.REVIEWER, "reviewer-password-" + tag
            )
            trainer = await create_user(session, f"trainer-{tag}", Role.TRAINER)
            tokens = Tokens(
                admin=await create_token(session, admin, "tests"),
                reviewer=await create_token(session, reviewer, "tests"),
                trainer=await create_token(session, trainer, "tests"),
            )
            await session.commit()
            return tokens

    return asyncio.run(seed())


def run_sync(database_url: str, work: Callable[[AsyncSession], Any]) -> Any:
    """Runs `await work(session)` from a synchronous test."""

    async def go() -> Any:
        async with sessions_for(database_url) as sessions, sessions() as session:
            return await work(session)

    return asyncio.run(go())


def eventually(
    probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """The first truthy result of `probe`, polled until `timeout`; fails the test after that, naming
    `what` it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


async def make_detector(
    session: AsyncSession,
    *,
    created_at: datetime | None = None,
    labels: list[str] | None = None,
    mode: str = "BINARY",
) -> Detector:
    detector = Detector(
        id=new_detector_id(),
        name="det-" + secrets.token_hex(6),
        query="Is the door closed?",
        mode=mode,
        labels=labels or ["YES", "NO"],
        created_at=created_at or now(),
    )
    session.add(detector)
    await session.commit()
    return detector


async def make_image_query(session: AsyncSession, detector: Detector) -> ImageQuery:
    query_id = new_image_query_id()
    row = ImageQuery(
        id=query_id,
        detector_id=detector.id,
        query=detector.query,
        result_type="binary_classification",
        patience_time=30.0,
        confidence_threshold=0.9,
        image_key=f"images/{detector.id}/{query_id}.jpg",
        image_content_type="image/jpeg",
    )
    session.add(row)
    await session.flush()
    return row


async def add_labels(
    session: AsyncSession, detector: Detector, count: int, *, undone: bool = False, answer: str = "YES"
) -> list[Label]:
    labels = []
    for _ in range(count):
        query = await make_image_query(session, detector)
        label = Label(
            image_query_id=query.id,
            detector_id=detector.id,
            label=answer,
            source=LabelSource.CUSTOMER,
            undone_at=now() if undone else None,
        )
        session.add(label)
        labels.append(label)
    await session.commit()
    return labels


async def make_review_item(
    session: AsyncSession,
    detector: Detector,
    *,
    lease_owner: str | None = None,
    lease_expires_at: datetime | None = None,
) -> ReviewItem:
    query = await make_image_query(session, detector)
    item = ReviewItem(
        image_query_id=query.id,
        detector_id=detector.id,
        deadline=now() + timedelta(seconds=30),
        lease_owner=lease_owner,
        lease_expires_at=lease_expires_at,
    )
    session.add(item)
    await session.commit()
    return item


async def make_training_job(
    session: AsyncSession,
    detector: Detector,
    *,
    status: JobStatus = JobStatus.QUEUED,
    labels_at_creation: int = 0,
    created_at: datetime | None = None,
    finished_at: datetime | None = None,
    lease_owner: str | None = None,
    lease_expires_at: datetime | None = None,
    cancel_requested: bool = False,
) -> TrainingJob:
    job = TrainingJob(
        id=new_id("trj"),
        detector_id=detector.id,
        status=status,
        trigger="manual",
        labels_at_creation=labels_at_creation,
        created_at=created_at or now(),
        finished_at=finished_at,
        lease_owner=lease_owner,
        lease_expires_at=lease_expires_at,
        cancel_requested=cancel_requested,
        started_at=now() if status != JobStatus.QUEUED else None,
    )
    session.add(job)
    await session.commit()
    return job


async def make_export_job(session: AsyncSession, detector: Detector) -> ExportJob:
    job = ExportJob(id=new_id("exp"), detector_id=detector.id, status=JobStatus.QUEUED)
    session.add(job)
    await session.commit()
    return job


def purge_deleted_detectors(database_url: str, data_dir: Path, now: datetime) -> list[str]:
    """One run of the worker's purge step against a cloud's database and local blob store, with its
    clock at `now` (the retention is the default one); the ids of the detectors it purged."""

    async def purge() -> list[str]:
        state = make_state(CloudSettings(DATABASE_URL=database_url, data_dir=data_dir))
        try:
            report = TickReport()
            await purge_step(state, report, now=now)
            return report.detectors_purged
        finally:
            await close_state(state)

    return asyncio.run(purge())


def role_clients(cloud: CloudServer, tokens: Tokens) -> Iterator[dict[Role, httpx.Client]]:
    """For a module fixture: one API client per role, each with that role's token, closed after."""
    made = {role: cloud.client(tokens.of(role)) for role in Role}
    try:
        yield made
    finally:
        for client in made.values():
            client.close()
