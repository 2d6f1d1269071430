"""The cloud worker: its tick against the test database (lease expiry, retrain triggers, replicas side
by side), and the real `python -m cloud.worker` process."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.core import exports as core_exports
from cloud.app.db.models import Detector, ExportJob, JobStatus, ReviewItem, TrainingJob
from cloud.app.settings import CloudSettings
from cloud.worker.jobs import exports as worker_exports
from cloud.worker.jobs.retrain import first_job_ready, labels_needed
from cloud.worker.loop import WorkerState, close_state, make_state, tick
from launcher.processes import ManagedProcess
from tests.support import cloud as support
from tests.support.cloud import ROOT, CloudServer
from tests.support.cloud_factories_worker import (
    add_labels,
    eventually,
    make_detector,
    make_export_job,
    make_review_item,
    make_training_job,
    now,
    private_database,
    run_sync,
    sessions_for,
)

MIN_LABELS = 5
GROWTH = 0.10
FIRST_MIN_PER_CLASS = 3
INTERVAL_S = 3600.0


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture
async def sessions(
    cloud: CloudServer, cloud_db: support.TestDatabase
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The test's own connection to the database the cloud process migrated."""
    async with sessions_for(cloud_db.url) as factory:
        yield factory


def worker_settings(cloud_db: support.TestDatabase, data_dir: Path) -> CloudSettings:
    return CloudSettings(
        DATABASE_URL=cloud_db.url,
        data_dir=data_dir,
        retrain_first_min_per_class=FIRST_MIN_PER_CLASS,
        retrain_min_labels=MIN_LABELS,
        retrain_growth=GROWTH,
        retrain_interval_s=INTERVAL_S,
        worker_poll_s=0.2,
    )


@pytest.fixture
async def worker(
    cloud_db: support.TestDatabase, tmp_path: Path, cloud: CloudServer
) -> AsyncIterator[WorkerState]:
    state = make_state(worker_settings(cloud_db, tmp_path))
    yield state
    await close_state(state)


@pytest.fixture
async def second_worker(
    cloud_db: support.TestDatabase, tmp_path: Path, cloud: CloudServer
) -> AsyncIterator[WorkerState]:
    state = make_state(worker_settings(cloud_db, tmp_path))
    yield state
    await close_state(state)


async def jobs_of(session: AsyncSession, detector: Detector) -> list[TrainingJob]:
    query = select(TrainingJob).where(TrainingJob.detector_id == detector.id).order_by(TrainingJob.created_at)
    return list((await session.execute(query.execution_options(populate_existing=True))).scalars().all())


async def test_an_expired_review_lease_returns_the_item_to_the_queue(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    async with sessions() as session:
        detector = await make_detector(session)
        expired = await make_review_item(
            session, detector, lease_owner="usr_gone", lease_expires_at=now() - timedelta(seconds=5)
        )
        held = await make_review_item(
            session, detector, lease_owner="usr_here", lease_expires_at=now() + timedelta(minutes=5)
        )

    report = await tick(worker)

    assert report.review_leases_released >= 1 and not report.failed_steps
    async with sessions() as session:
        rows = {
            item.id: item
            for item in (
                await session.execute(select(ReviewItem).where(ReviewItem.id.in_([expired.id, held.id])))
            ).scalars()
        }
    assert rows[expired.id].lease_owner is None and rows[expired.id].lease_expires_at is None
    assert rows[held.id].lease_owner == "usr_here"


async def test_an_expired_training_lease_is_requeued_and_a_cancelled_one_ends(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    async with sessions() as session:
        abandoned = await make_training_job(
            session,
            await make_detector(session),
            status=JobStatus.RUNNING,
            lease_owner="trainer-dead",
            lease_expires_at=now() - timedelta(seconds=5),
        )
        cancelled = await make_training_job(
            session,
            await make_detector(session),
            status=JobStatus.RUNNING,
            lease_owner="trainer-dead",
            lease_expires_at=now() - timedelta(seconds=5),
            cancel_requested=True,
        )
        alive = await make_training_job(
            session,
            await make_detector(session),
            status=JobStatus.RUNNING,
            lease_owner="trainer-busy",
            lease_expires_at=now() + timedelta(minutes=5),
        )

    await tick(worker)

    async with sessions() as session:
        rows = {
            job.id: job
            for job in (
                await session.execute(
                    select(TrainingJob).where(TrainingJob.id.in_([abandoned.id, cancelled.id, alive.id]))
                )
            ).scalars()
        }
    assert rows[abandoned.id].status == JobStatus.QUEUED and rows[abandoned.id].lease_owner is None
    assert rows[cancelled.id].status == JobStatus.CANCELLED and rows[cancelled.id].finished_at is not None
    assert rows[alive.id].status == JobStatus.RUNNING and rows[alive.id].lease_owner == "trainer-busy"


def test_the_cadence_rules() -> None:
    """The first job needs every class (COUNT: two) at the minimum; later ones a tenth more labels."""
    assert first_job_ready("BINARY", ["YES", "NO"], {"YES": 3, "NO": 3}, 3)
    assert not first_job_ready("BINARY", ["YES", "NO"], {"YES": 30, "NO": 2}, 3)
    assert not first_job_ready("MULTI_CLASS", ["a", "b", "c"], {"a": 3, "b": 3}, 3)
    assert first_job_ready("MULTI_CLASS", ["a", "b", "c"], {"a": 3, "b": 3, "c": 4}, 3)
    assert not first_job_ready("COUNT", ["0", "1", "2"], {"1": 9}, 3)
    assert first_job_ready("COUNT", ["0", "1", "2"], {"1": 3, "2": 3}, 3)
    assert [labels_needed(n, 5, 0.1) for n in (0, 6, 30, 50, 51, 60, 100, 101)] == [5, 5, 5, 5, 6, 6, 10, 11]
    assert labels_needed(1000, 5, 0.0) == 5


async def test_the_first_job_comes_once_every_class_has_three_labels_with_two_workers_ticking(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState, second_worker: WorkerState
) -> None:
    async with sessions() as session:
        # Several detectors at once, so that the two workers overlap on some of them.
        binary = [await make_detector(session) for _ in range(4)]
        for detector in binary:
            await add_labels(session, detector, FIRST_MIN_PER_CLASS + 5, answer="YES")
            await add_labels(session, detector, FIRST_MIN_PER_CLASS - 1, answer="NO")
            await add_labels(session, detector, 3, undone=True, answer="NO")  # undone labels do not count
            await add_labels(session, detector, 3, answer="UNCLEAR")  # UNCLEAR is not a class
        multi = await make_detector(session, mode="MULTI_CLASS", labels=["red", "green", "blue"])
        for colour, n in (("red", 3), ("green", 3), ("blue", 2)):
            await add_labels(session, multi, n, answer=colour)
        count = await make_detector(session, mode="COUNT", labels=["0", "1", "2", "3"])
        await add_labels(session, count, 5, answer="1")
        await add_labels(session, count, 2, answer="2")
        detectors = [*binary, multi, count]

    await asyncio.gather(tick(worker), tick(second_worker))
    async with sessions() as session:
        for detector in detectors:
            assert await jobs_of(session, detector) == []
        for detector in binary:
            await add_labels(session, detector, 1, answer="NO")
        await add_labels(session, multi, 1, answer="blue")
        await add_labels(session, count, 1, answer="2")

    for _ in range(3):
        reports = await asyncio.gather(tick(worker), tick(second_worker))
        assert not any(report.failed_steps for report in reports)
    async with sessions() as session:
        for detector in binary:
            jobs = await jobs_of(session, detector)
            assert len(jobs) == 1
            assert jobs[0].trigger == "labels" and jobs[0].status == JobStatus.QUEUED
            # Every label that was not undone, UNCLEAR included (as manual jobs count them).
            assert jobs[0].labels_at_creation == (FIRST_MIN_PER_CLASS + 5) + FIRST_MIN_PER_CLASS + 3
        assert [job.labels_at_creation for job in await jobs_of(session, multi)] == [9]
        assert [job.labels_at_creation for job in await jobs_of(session, count)] == [8]


async def test_later_jobs_wait_for_a_tenth_more_labels(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    async with sessions() as session:
        detector = await make_detector(session)
        await add_labels(session, detector, 50, answer="YES")
        await add_labels(session, detector, 50, answer="NO")
        await make_training_job(
            session, detector, status=JobStatus.SUCCEEDED, labels_at_creation=100, finished_at=now()
        )
        await add_labels(session, detector, 9, answer="NO")

    await tick(worker)
    async with sessions() as session:
        assert [job.trigger for job in await jobs_of(session, detector)] == ["manual"]
        await add_labels(session, detector, 1, answer="YES")

    await tick(worker)
    async with sessions() as session:
        jobs = await jobs_of(session, detector)
    assert [job.trigger for job in jobs] == ["manual", "labels"]
    assert jobs[1].labels_at_creation == 110


async def test_labels_counted_by_the_last_job_do_not_trigger_again(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    async with sessions() as session:
        detector = await make_detector(session)
        await add_labels(session, detector, MIN_LABELS + 2)
        await make_training_job(
            session,
            detector,
            status=JobStatus.SUCCEEDED,
            labels_at_creation=MIN_LABELS + 2,
            finished_at=now(),
        )
        await add_labels(session, detector, MIN_LABELS - 1)

    await tick(worker)
    async with sessions() as session:
        assert [job.status for job in await jobs_of(session, detector)] == [JobStatus.SUCCEEDED]
        await add_labels(session, detector, 1)

    await tick(worker)
    async with sessions() as session:
        jobs = await jobs_of(session, detector)
    assert [job.trigger for job in jobs] == ["manual", "labels"]
    assert jobs[1].labels_at_creation == 2 * MIN_LABELS + 2


async def test_a_few_labels_trigger_on_the_timer_only_after_the_interval(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    long_ago = now() - timedelta(seconds=INTERVAL_S + 60)
    async with sessions() as session:
        recent = await make_detector(session)
        await add_labels(session, recent, 2)
        await make_training_job(
            session, recent, status=JobStatus.SUCCEEDED, labels_at_creation=2, finished_at=now()
        )
        await add_labels(session, recent, 1)

        waited = await make_detector(session)
        await add_labels(session, waited, 2)
        await make_training_job(
            session,
            waited,
            status=JobStatus.FAILED,
            labels_at_creation=2,
            created_at=long_ago,
            finished_at=long_ago,
        )
        await add_labels(session, waited, 1)

        # Never trained, and not every class labelled yet: the timer does not start a first job.
        never_trained = await make_detector(session, created_at=long_ago)
        await add_labels(session, never_trained, 1)

        no_new_labels = await make_detector(session, created_at=long_ago)
        await add_labels(session, no_new_labels, 2)
        await make_training_job(
            session, no_new_labels, status=JobStatus.SUCCEEDED, labels_at_creation=2, finished_at=long_ago
        )

    await tick(worker)

    async with sessions() as session:
        assert [job.trigger for job in await jobs_of(session, recent)] == ["manual"]
        waited_jobs = await jobs_of(session, waited)
        assert [job.trigger for job in waited_jobs] == ["manual", "timer"]
        assert waited_jobs[1].labels_at_creation == 3
        assert await jobs_of(session, never_trained) == []
        assert [job.trigger for job in await jobs_of(session, no_new_labels)] == ["manual"]


async def test_a_detector_with_an_active_job_gets_no_second_one(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState
) -> None:
    async with sessions() as session:
        detector = await make_detector(session)
        running = await make_training_job(
            session, detector, status=JobStatus.RUNNING, lease_expires_at=now() + timedelta(minutes=5)
        )
        await add_labels(session, detector, MIN_LABELS * 2, answer="YES")
        await add_labels(session, detector, MIN_LABELS * 2, answer="NO")

    for _ in range(2):  # however often it is asked, the request coalesces with the running job
        report = await tick(worker)
        assert not report.failed_steps
    async with sessions() as session:
        assert [job.status for job in await jobs_of(session, detector)] == [JobStatus.RUNNING]
        job = await session.get(TrainingJob, running.id)
        assert job is not None
        job.status = JobStatus.SUCCEEDED
        job.finished_at = now()
        await session.commit()

    # Once it is done, the labels that arrived meanwhile (all of them: it was made with none) count.
    await tick(worker)
    async with sessions() as session:
        jobs = await jobs_of(session, detector)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED, JobStatus.QUEUED]
    assert jobs[1].labels_at_creation == MIN_LABELS * 4


async def waiting_export(sessions: async_sessionmaker[AsyncSession]) -> ExportJob:
    """An export job waiting for a worker, of a new detector with two labels."""
    async with sessions() as session:
        detector = await make_detector(session)
        await add_labels(session, detector, 2)
        return await make_export_job(session, detector)


async def test_a_waiting_export_is_built_by_one_of_two_workers(
    sessions: async_sessionmaker[AsyncSession], worker: WorkerState, second_worker: WorkerState
) -> None:
    export = await waiting_export(sessions)

    reports = await asyncio.gather(tick(worker), tick(second_worker))

    assert not any(report.failed_steps for report in reports)
    assert sorted(job for report in reports for job in report.exports_built) == [export.id]
    async with sessions() as session:
        done = await session.get(ExportJob, export.id)
    assert done is not None and done.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert done.finished_at is not None


async def slow_build(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[str]:
    """Builds that take `seconds` (the real builder runs afterwards); the ids they were started for."""
    real = core_exports.run_export
    started: list[str] = []

    async def slow(
        sessions: async_sessionmaker[AsyncSession],
        blobs: Any,
        job_id: str,
        workdir: Path,
        owner: str | None = None,
    ) -> bool:
        started.append(job_id)
        await asyncio.sleep(seconds)
        return await real(sessions, blobs, job_id, workdir, owner=owner)

    monkeypatch.setattr(core_exports, "run_export", slow)
    return started


async def lease_of(sessions: async_sessionmaker[AsyncSession], job_id: str) -> tuple[str | None, Any]:
    async with sessions() as session:
        job = await session.get(ExportJob, job_id, populate_existing=True)
        assert job is not None
        return job.lease_owner, job.lease_expires_at


async def test_a_long_export_keeps_its_lease_and_no_other_worker_takes_it(
    sessions: async_sessionmaker[AsyncSession],
    worker: WorkerState,
    second_worker: WorkerState,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    export = await waiting_export(sessions)
    await slow_build(monkeypatch, 2.0)
    # A lease of 1 s, renewed every 0.2 s, on a build of over 2 s.
    job_id = await worker_exports.claim_export(worker.sessions, worker.owner, lease_s=1.0)
    assert job_id == export.id
    build = asyncio.create_task(
        worker_exports.build_export(
            worker.sessions, worker.blobs, job_id, worker.owner, tmp_path, lease_s=1.0, renew_every_s=0.2
        )
    )
    await asyncio.sleep(1.5)  # past the first lease's end
    owner, _ = await lease_of(sessions, job_id)
    assert owner == worker.owner
    assert await worker_exports.claim_export(second_worker.sessions, second_worker.owner) is None
    assert await build is True
    async with sessions() as session:
        done = await session.get(ExportJob, job_id, populate_existing=True)
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.lease_owner is None


async def test_a_worker_that_lost_its_export_lease_abandons_the_build(
    sessions: async_sessionmaker[AsyncSession],
    worker: WorkerState,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    export = await waiting_export(sessions)
    started = await slow_build(monkeypatch, 30.0)
    job_id = await worker_exports.claim_export(worker.sessions, worker.owner, lease_s=60.0)
    assert job_id == export.id
    build = asyncio.create_task(
        worker_exports.build_export(
            worker.sessions,
            worker.blobs,
            job_id,
            worker.owner,
            tmp_path / "scratch",
            lease_s=60.0,
            renew_every_s=0.2,
        )
    )
    await asyncio.sleep(0.3)
    # Another worker holds it now (as after this one stalled past its lease).
    async with sessions() as session:
        await session.execute(
            update(ExportJob).where(ExportJob.id == job_id).values(lease_owner="worker-other")
        )
        await session.commit()
    assert await asyncio.wait_for(build, timeout=20) is False
    assert started == [job_id]
    owner, _ = await lease_of(sessions, job_id)
    assert owner == "worker-other"
    # Its scratch directory went with it.
    assert await asyncio.to_thread(lambda: list((tmp_path / "scratch").iterdir())) == []


def test_the_worker_process_ticks_and_stops_cleanly_on_sigterm(
    cloud: CloudServer, cloud_db: support.TestDatabase, tmp_path: Path
) -> None:
    async def expired_item(session: AsyncSession) -> int:
        detector = await make_detector(session)
        item = await make_review_item(
            session, detector, lease_owner="usr_gone", lease_expires_at=now() - timedelta(seconds=5)
        )
        return item.id

    item_id = run_sync(cloud_db.url, expired_item)
    process = ManagedProcess(
        "cloud-worker",
        [sys.executable, "-m", "cloud.worker"],
        env={
            "DATABASE_URL": cloud_db.url,
            "CLOUD_DATA_DIR": str(tmp_path / "worker-data"),
            "CLOUD_WORKER_POLL_S": "0.2",
            "CLOUD_LOG_LEVEL": "info",
        },
        cwd=ROOT,
    ).start()
    try:

        async def released(session: AsyncSession) -> bool:
            item = await session.get(ReviewItem, item_id)
            return item is not None and item.lease_owner is None

        eventually(lambda: run_sync(cloud_db.url, released), timeout=60)
        assert process.is_running(), process.output_tail()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.output_tail()
    finally:
        process.stop()
    output = process.output_tail(400)
    assert '"msg": "worker started"' in output
    assert '"msg": "review leases expired: items back in the queue"' in output
    assert '"msg": "worker stopped"' in output
    assert "Traceback" not in output
