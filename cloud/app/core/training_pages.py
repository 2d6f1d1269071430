"""What the training pages of the review UI show: a detector's jobs (the running one live), its model
versions with their reports, and two versions side by side.

Read-only views over the training jobs, the registry and the report blobs; nothing here changes state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobStore
from cloud.app.core import model_reports, registry, training_jobs
from cloud.app.db.models import ACTIVE_JOB_STATUSES, Detector, ModelStatus, ModelVersion, TrainingJob
from cloud.app.errors import NotFoundError
from cloud.app.schemas.model_reports import ReportName
from cloud.app.schemas.training_jobs import TrainingJobPublic

# (metric key in predictor_metadata.json, label, how to show it)
HEADLINE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("test_accuracy", "accuracy", "{:.3f}"),
    ("test_balanced_accuracy", "balanced accuracy", "{:.3f}"),
    ("test_ece_after_temperature", "ECE", "{:.3f}"),
    ("n_test", "test images", "{:d}"),
    ("n_train", "train images", "{:d}"),
)
# Metrics where a smaller value is the better one (the compare view marks the better side).
LOWER_IS_BETTER = ("ece", "nll", "loss")
LOG_TAIL_LINES = 80
VERSIONS_SHOWN = 20
JOBS_SHOWN = 20


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The top-level numbers of a version's metrics (nested evaluation details are left out)."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _headline(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    shown = []
    for key, label, fmt in HEADLINE_METRICS:
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        shown.append((label, fmt.format(int(value)) if fmt == "{:d}" else fmt.format(float(value))))
    return shown


@dataclass(frozen=True)
class VersionView:
    id: str
    version: str
    status: str
    created_at: datetime
    promoted_at: datetime | None
    headline: list[tuple[str, str]]
    metrics: dict[str, float | int]
    lineage: dict[str, Any]
    promotion: dict[str, Any] | None
    reports: list[ReportName] = field(default_factory=list)

    @property
    def is_production(self) -> bool:
        return self.status == ModelStatus.PRODUCTION

    @property
    def plots(self) -> list[ReportName]:
        return [name for name in model_reports.PLOTS if name in self.reports]

    def report_url(self, name: ReportName) -> str:
        return model_reports.report_path(self.id, name)


def _lineage_summary(lineage: dict[str, Any]) -> dict[str, Any]:
    snapshot = lineage.get("label_snapshot")
    labels = snapshot.get("count") if isinstance(snapshot, dict) else None
    summary = {
        "parent version": lineage.get("parent_version"),
        "training job": lineage.get("training_job_id"),
        "labels": labels,
        "code": lineage.get("code_version"),
        "trainer": lineage.get("trainer"),
        "device": lineage.get("device"),
    }
    return {key: value for key, value in summary.items() if value not in (None, "")}


def version_view(row: ModelVersion, reports: list[ReportName]) -> VersionView:
    metrics = row.metrics or {}
    promotion = metrics.get("promotion")
    return VersionView(
        id=row.id,
        version=row.version,
        status=row.status,
        created_at=_aware(row.created_at) or datetime.now(UTC),
        promoted_at=_aware(row.promoted_at),
        headline=_headline(metrics),
        metrics=scalar_metrics(metrics),
        lineage=_lineage_summary(row.lineage or {}),
        promotion=promotion if isinstance(promotion, dict) else None,
        reports=reports,
    )


@dataclass(frozen=True)
class TrainingOverview:
    detector: Detector
    active: TrainingJobPublic | None
    jobs: list[TrainingJobPublic]
    versions: list[VersionView]
    version_names: dict[str, str]  # model id -> version, for the jobs table


async def _detector(session: AsyncSession, detector_id: str) -> Detector:
    detector = await session.get(Detector, detector_id)
    if detector is None or detector.deleted_at is not None:
        raise NotFoundError(f"detector {detector_id} not found")
    return detector


async def training_overview(session: AsyncSession, blobs: BlobStore, detector_id: str) -> TrainingOverview:
    detector = await _detector(session, detector_id)
    jobs = await training_jobs.list_training_jobs(session, detector_id=detector_id, limit=JOBS_SHOWN)
    _, rows = await registry.list_models(session, detector_id)
    await session.commit()
    shown = rows[:VERSIONS_SHOWN]
    present = await model_reports.reports_by_model(blobs, shown)
    public = [TrainingJobPublic.of(job) for job in jobs]
    active = next((job for job in public if job.status in ACTIVE_JOB_STATUSES), None)
    return TrainingOverview(
        detector=detector,
        active=active,
        jobs=public,
        versions=[version_view(row, present[row.id]) for row in shown],
        version_names={row.id: row.version for row in rows},
    )


def _tail(logs: str, lines: int) -> list[str]:
    return logs.splitlines()[-lines:]


async def training_status(session: AsyncSession, detector_id: str) -> dict[str, Any]:
    """What the training page polls: the detector's newest job (running or not) and its log tail."""
    await _detector(session, detector_id)
    job = (
        await session.execute(
            select(TrainingJob)
            .where(TrainingJob.detector_id == detector_id)
            .order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc())
            .limit(1)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    await session.commit()
    if job is None:
        return {"job": None, "active": False, "log_tail": []}
    public = TrainingJobPublic.of(job)
    return {
        "job": public.model_dump(mode="json"),
        "active": public.status in ACTIVE_JOB_STATUSES,
        "log_tail": _tail(job.logs or "", LOG_TAIL_LINES),
    }


@dataclass(frozen=True)
class MetricRow:
    key: str
    a: float | int | None
    b: float | int | None
    better: str  # "a", "b" or "" (equal, missing, or no direction)


@dataclass(frozen=True)
class Comparison:
    detector: Detector
    a: VersionView
    b: VersionView
    rows: list[MetricRow]
    choices: list[VersionView]


def _better(key: str, a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None or a == b or key.startswith("n_"):
        return ""
    lower = any(word in key for word in LOWER_IS_BETTER)
    if "accuracy" not in key and not lower:
        return ""
    a_wins = a < b if lower else a > b
    return "a" if a_wins else "b"


def metric_rows(a: dict[str, float | int], b: dict[str, float | int]) -> list[MetricRow]:
    keys = list(a) + [key for key in b if key not in a]
    return [MetricRow(key, a.get(key), b.get(key), _better(key, a.get(key), b.get(key))) for key in keys]


async def _version_of(session: AsyncSession, detector_id: str, model_id: str) -> ModelVersion:
    row = await session.get(ModelVersion, model_id)
    if row is None or row.detector_id != detector_id:
        raise NotFoundError(f"model version {model_id} is not a version of detector {detector_id}")
    return row


async def compare_versions(
    session: AsyncSession, blobs: BlobStore, detector_id: str, a_id: str | None, b_id: str | None
) -> Comparison:
    """Two versions side by side; without a choice, production (or the newest) against the newest other."""
    detector = await _detector(session, detector_id)
    _, rows = await registry.list_models(session, detector_id)
    if len(rows) == 0:
        raise NotFoundError(f"detector {detector_id} has no model versions to compare")
    production = next((row for row in rows if row.id == detector.production_version_id), rows[0])
    row_a = await _version_of(session, detector_id, a_id) if a_id else production
    if b_id:
        row_b = await _version_of(session, detector_id, b_id)
    else:
        row_b = next((row for row in rows if row.id != row_a.id), row_a)
    await session.commit()
    present = await model_reports.reports_by_model(blobs, [row_a, row_b])
    view_a, view_b = version_view(row_a, present[row_a.id]), version_view(row_b, present[row_b.id])
    return Comparison(
        detector=detector,
        a=view_a,
        b=view_b,
        rows=metric_rows(view_a.metrics, view_b.metrics),
        choices=[version_view(row, []) for row in rows[:VERSIONS_SHOWN]],
    )
