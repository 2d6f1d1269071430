"""What the training pages of the review UI show: a detector's jobs (the running one live), its model
versions with their reports, and two versions side by side.

A version's figures come from its metrics as registered (the bundle's predictor_metadata.json). A
detection head's (COUNT and BOUNDING_BOX, "engine": "detection") are its held-out mAP@0.5,
mAP@0.5:0.95, count accuracy and count MAE (training.detection.metrics.DetectionMetrics), shown with
the detections.png picture instead of a classifier's accuracy and calibration; its promotion verdict,
which only the version's metrics.json report holds, is read from there.

Read-only views over the training jobs, the registry and the report blobs; nothing here changes state.
"""

from __future__ import annotations

import asyncio
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
from cloud.app.schemas.training_jobs import training_job_public
from common.clock import as_utc
from common.wire.training_jobs import TrainingJobPublic

# (metric key in predictor_metadata.json, label, how to show it)
HEADLINE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("test_accuracy", "accuracy", "{:.3f}"),
    ("test_balanced_accuracy", "balanced accuracy", "{:.3f}"),
    ("test_ece_after_temperature", "ECE", "{:.3f}"),
    ("n_test", "test images", "{:d}"),
    ("n_train", "train images", "{:d}"),
)
# A detection head's held-out figures: (metric key, label, how to show it).
DETECTION_ENGINE = "detection"
DETECTION_METRICS: tuple[tuple[str, str, str], ...] = (
    ("map50", "mAP@0.5", "{:.3f}"),
    ("map50_95", "mAP@0.5:0.95", "{:.3f}"),
    ("count_accuracy", "count accuracy", "{:.3f}"),
    ("count_mae", "count MAE", "{:.3f}"),
    ("images", "held-out images", "{:d}"),
)
# What the compare view calls a detection head's other figures.
DETECTION_LABELS = {key: label for key, label, _ in DETECTION_METRICS} | {"objects": "held-out objects"}
# Metrics where a smaller value is the better one (the compare view marks the better side).
LOWER_IS_BETTER = ("ece", "nll", "loss")
# Detection figures with a direction their names do not tell.
HIGHER_IS_BETTER_KEYS = frozenset({"map50", "map50_95"})
LOWER_IS_BETTER_KEYS = frozenset({"count_mae"})
# The classifier's plots, each a section of the compare view.
CLASSIFIER_PLOTS = (ReportName.LEARNING_CURVES, ReportName.CONFUSION_MATRIX, ReportName.RELIABILITY)
LOG_TAIL_LINES = 80
VERSIONS_SHOWN = 20
JOBS_SHOWN = 20


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The top-level numbers of a version's metrics (nested evaluation details are left out)."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _number(value: Any) -> float | int | None:
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def _shown(value: float | int, fmt: str) -> str:
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(float(value))


def _headline(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    shown = []
    for key, label, fmt in HEADLINE_METRICS:
        value = _number(metrics.get(key))
        if value is not None:
            shown.append((label, _shown(value, fmt)))
    return shown


def is_detection(metrics: dict[str, Any]) -> bool:
    return metrics.get("engine") == DETECTION_ENGINE


def detection_evaluation(metrics: dict[str, Any]) -> dict[str, float | int]:
    """A detection version's held-out figures: at the top of its registered metrics, or under
    "evaluation" as its metrics.json report has them; empty for any other engine."""
    if not is_detection(metrics):
        return {}
    nested = metrics.get("evaluation")
    return scalar_metrics(nested if isinstance(nested, dict) else metrics)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    text: str


def _detection_figures(evaluation: dict[str, float | int]) -> list[Figure]:
    return [
        Figure(key, label, _shown(evaluation[key], fmt))
        for key, label, fmt in DETECTION_METRICS
        if key in evaluation
    ]


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
    # A detection head's held-out figures (DETECTION_METRICS order); None for a classifier.
    detection: list[Figure] | None = None

    @property
    def is_production(self) -> bool:
        return self.status == ModelStatus.PRODUCTION

    @property
    def plots(self) -> list[ReportName]:
        """The plots shown as a grid of thumbnails (the detections picture is shown on its own)."""
        return [
            name for name in model_reports.PLOTS if name in self.reports and name != ReportName.DETECTIONS
        ]

    @property
    def has_detections(self) -> bool:
        return ReportName.DETECTIONS in self.reports

    @property
    def detections_url(self) -> str:
        return self.report_url(ReportName.DETECTIONS)

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


def version_view(
    row: ModelVersion, reports: list[ReportName], report_metrics: dict[str, Any] | None = None
) -> VersionView:
    """`report_metrics`: the version's metrics.json, where it has a promotion verdict its registered
    metrics lack (a detection head's)."""
    metrics = row.metrics or {}
    promotion = metrics.get("promotion")
    if not isinstance(promotion, dict) and report_metrics is not None:
        promotion = report_metrics.get("promotion")
    detection = detection_evaluation(metrics)
    if detection:
        # The held-out figures first, then the other numbers (count ECE, escalation rate, ...).
        first = {key: detection[key] for key, _, _ in DETECTION_METRICS if key in detection}
        compared = {**first, **detection, **scalar_metrics(metrics)}
    else:
        compared = scalar_metrics(metrics)
    return VersionView(
        id=row.id,
        version=row.version,
        status=row.status,
        created_at=_aware(row.created_at) or datetime.now(UTC),
        promoted_at=_aware(row.promoted_at),
        headline=_headline(metrics),
        metrics=compared,
        lineage=_lineage_summary(row.lineage or {}),
        promotion=promotion if isinstance(promotion, dict) else None,
        reports=reports,
        detection=_detection_figures(detection) if is_detection(metrics) else None,
    )


def _needs_report_metrics(row: ModelVersion, reports: list[ReportName]) -> bool:
    metrics = row.metrics or {}
    return (
        is_detection(metrics)
        and not isinstance(metrics.get("promotion"), dict)
        and ReportName.METRICS in reports
    )


async def version_views(
    blobs: BlobStore, rows: list[ModelVersion], present: dict[str, list[ReportName]]
) -> list[VersionView]:
    """Views of `rows`, reading metrics.json only for the detection versions that need it."""
    wanted = [row for row in rows if _needs_report_metrics(row, present[row.id])]
    found = await asyncio.gather(*(model_reports.read_metrics_report(blobs, row) for row in wanted))
    extra = {row.id: value for row, value in zip(wanted, found, strict=True)}
    return [version_view(row, present[row.id], extra.get(row.id)) for row in rows]


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
    public = [training_job_public(job) for job in jobs]
    active = next((job for job in public if job.status in ACTIVE_JOB_STATUSES), None)
    return TrainingOverview(
        detector=detector,
        active=active,
        jobs=public,
        versions=await version_views(blobs, shown, present),
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
    public = training_job_public(job)
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
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.key


@dataclass(frozen=True)
class Comparison:
    detector: Detector
    a: VersionView
    b: VersionView
    rows: list[MetricRow]
    choices: list[VersionView]

    @property
    def detection(self) -> bool:
        """Either side is a detection head: the compare view shows the detections pictures."""
        return self.a.detection is not None or self.b.detection is not None

    @property
    def plots(self) -> list[ReportName]:
        """The classifier plots to show side by side (all three unless both sides are detection heads
        without them)."""
        both_detection = self.a.detection is not None and self.b.detection is not None
        return [
            name
            for name in CLASSIFIER_PLOTS
            if not both_detection or name in self.a.reports or name in self.b.reports
        ]

    @property
    def show_detections(self) -> bool:
        return self.detection or self.a.has_detections or self.b.has_detections


def _better(key: str, a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None or a == b or key.startswith("n_"):
        return ""
    lower = key in LOWER_IS_BETTER_KEYS or any(word in key for word in LOWER_IS_BETTER)
    if "accuracy" not in key and not lower and key not in HIGHER_IS_BETTER_KEYS:
        return ""
    a_wins = a < b if lower else a > b
    return "a" if a_wins else "b"


def metric_rows(
    a: dict[str, float | int], b: dict[str, float | int], labels: dict[str, str] | None = None
) -> list[MetricRow]:
    keys = list(a) + [key for key in b if key not in a]
    names = labels or {}
    return [
        MetricRow(key, a.get(key), b.get(key), _better(key, a.get(key), b.get(key)), names.get(key, ""))
        for key in keys
    ]


async def _version_of(session: AsyncSession, detector_id: str, model_id: str) -> ModelVersion:
    row = await session.get(ModelVersion, model_id)
    if row is None or row.detector_id != detector_id:
        raise NotFoundError(f"model version {model_id} is not a version of detector {detector_id}")
    return row


class NothingToCompare(Exception):
    """Fewer than two versions: not an error, a page saying so."""


async def compare_versions(
    session: AsyncSession, blobs: BlobStore, detector_id: str, a_id: str | None, b_id: str | None
) -> Comparison:
    """Two versions side by side; without a choice, production (or the newest) against the newest other."""
    detector = await _detector(session, detector_id)
    _, rows = await registry.list_models(session, detector_id)
    if len(rows) < 2 and not (a_id and b_id):
        await session.commit()
        have = "no model version yet" if not rows else "one model version so far"
        raise NothingToCompare(
            f"{detector.name} has {have}; a comparison needs two. Train it to get another."
        )
    production = next((row for row in rows if row.id == detector.production_version_id), rows[0])
    row_a = await _version_of(session, detector_id, a_id) if a_id else production
    if b_id:
        row_b = await _version_of(session, detector_id, b_id)
    else:
        row_b = next((row for row in rows if row.id != row_a.id), row_a)
    await session.commit()
    present = await model_reports.reports_by_model(blobs, [row_a, row_b])
    view_a, view_b = await version_views(blobs, [row_a, row_b], present)
    labels = DETECTION_LABELS if view_a.detection is not None or view_b.detection is not None else None
    return Comparison(
        detector=detector,
        a=view_a,
        b=view_b,
        rows=metric_rows(view_a.metrics, view_b.metrics, labels),
        choices=[version_view(row, []) for row in rows[:VERSIONS_SHOWN]],
    )
