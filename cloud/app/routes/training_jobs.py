"""Training jobs: administrators queue and cancel them; the trainer (its `trainer`-role token) leases
them, reports progress with heartbeats, and finishes them. Devices (scripts, benchmarks) may follow
a job, not run one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi import status as http
from starlette.responses import PlainTextResponse, Response

from cloud.app.core import training_jobs as jobs
from cloud.app.deps import AdminDep, DeviceOrTrainerDep, SessionDep, TrainerDep
from cloud.app.schemas.fields import ID_PATTERN
from cloud.app.schemas.training_jobs import training_job_public
from common.wire.training_jobs import (
    HeartbeatAck,
    JobComplete,
    JobFail,
    JobHeartbeat,
    JobStatus,
    LeaseRequest,
    TrainingJobCreate,
    TrainingJobPublic,
)

router = APIRouter(prefix="/api/v1/training-jobs", tags=["training"])

JobId = Annotated[str, Path(max_length=60, pattern=ID_PATTERN)]


@router.post("", status_code=http.HTTP_201_CREATED, responses={409: {"description": "one is already active"}})
async def create_training_job(
    body: TrainingJobCreate, session: SessionDep, admin: AdminDep
) -> TrainingJobPublic:
    job = await jobs.create_training_job(
        session, body.detector_id, trigger="manual", config=body.config, audited_by=admin
    )
    return training_job_public(job)


@router.get("")
async def list_training_jobs(
    session: SessionDep,
    caller: DeviceOrTrainerDep,
    detector_id: Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[TrainingJobPublic]:
    """Newest first."""
    found = await jobs.list_training_jobs(
        session, detector_id=detector_id, status=status, limit=limit, offset=offset
    )
    return [training_job_public(job) for job in found]


@router.post(
    "/lease",
    response_model=TrainingJobPublic,
    responses={204: {"description": "no job is waiting"}},
)
async def lease_training_job(
    body: LeaseRequest, session: SessionDep, caller: TrainerDep
) -> Response | TrainingJobPublic:
    """The oldest queued job (or a running one whose lease expired), now leased to `owner`."""
    job = await jobs.lease_training_job(session, body.owner, body.lease_s)
    if job is None:
        return Response(status_code=http.HTTP_204_NO_CONTENT)
    return training_job_public(job)


@router.get("/{job_id}")
async def get_training_job(
    job_id: JobId, session: SessionDep, caller: DeviceOrTrainerDep
) -> TrainingJobPublic:
    return training_job_public(await jobs.get_training_job(session, job_id))


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
async def get_training_job_logs(
    job_id: JobId, session: SessionDep, caller: DeviceOrTrainerDep
) -> PlainTextResponse:
    return PlainTextResponse((await jobs.get_training_job(session, job_id)).logs)


@router.post("/{job_id}/cancel")
async def cancel_training_job(job_id: JobId, session: SessionDep, admin: AdminDep) -> TrainingJobPublic:
    """Queued: cancelled now. Running: `cancel_requested` is set and the trainer stops."""
    return training_job_public(await jobs.cancel_training_job(session, job_id, audited_by=admin))


@router.post("/{job_id}/heartbeat", responses={409: {"description": "the lease is not yours"}})
async def heartbeat_training_job(
    job_id: JobId, body: JobHeartbeat, session: SessionDep, caller: TrainerDep
) -> HeartbeatAck:
    job = await jobs.heartbeat_training_job(
        session, job_id, body.owner, progress=body.progress, log_lines=body.log_lines, lease_s=body.lease_s
    )
    return HeartbeatAck(cancel_requested=job.cancel_requested, lease_expires_at=job.lease_expires_at)


@router.post("/{job_id}/complete", responses={409: {"description": "the lease is not yours"}})
async def complete_training_job(
    job_id: JobId, body: JobComplete, session: SessionDep, caller: TrainerDep
) -> TrainingJobPublic:
    job = await jobs.complete_training_job(session, job_id, body.owner, body.result_version_id)
    return training_job_public(job)


@router.post("/{job_id}/fail", responses={409: {"description": "the lease is not yours"}})
async def fail_training_job(
    job_id: JobId, body: JobFail, session: SessionDep, caller: TrainerDep
) -> TrainingJobPublic:
    return training_job_public(await jobs.fail_training_job(session, job_id, body.owner, body.error))
