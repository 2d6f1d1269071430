"""One leased training job, from the dataset export to a registered (maybe promoted) model version.

    backbone   the shared backbone (exported once per trainer), registered in the cloud if it is not
    download   the production bundle (verified like an edge would) to compare with, and its backbone
    export     ask the cloud for a dataset export of the detector with the stored embeddings by this
               backbone and only the images that have none; the cloud worker builds it
    train      training.head_trainer: a head on the shared backbone in seconds (new embeddings are
               stored in the cloud as they are computed); for tiny inputs with enough labels, the
               compact CNN (training.from_export) is tried next as a second candidate, judged on the same
               items against what is production by then
    register   the bundle as a candidate with lineage (job, export, trainer, parent version); its
               plots and metrics.json as reports of that version
    promote    only when the trainer's rule says the candidate is not worse than production on the
               same test items, and production has not changed while the job ran
    complete   the job points at the model version

How it can end: succeeded (complete); cancelled (an administrator asked: the trainer stops at the
next epoch boundary and reports with /fail, which the cloud records as cancelled); failed (/fail with
a short message, never a stack trace: that stays in the trainer's own log); released (the trainer
is stopping: the lease is handed back and another trainer takes the job); lost (the lease went to
another trainer, which finishes the job; nothing more is reported).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from common.backbone import BackboneError, BackboneRef, BackboneStore
from common.bundle import BOX_MODES, BundleError, read_metadata
from common.bundle_archive import pack_bundle, sha256_of, unpack_bundle
from common.error_detail import first_validation_error
from common.wire.dataset_export import ExportRequest
from common.wire.training_jobs import JobStatus, TrainingJobPublic
from training.backbones import BuiltBackbone, build_backbone
from training.dataset_export import ExportError, read_export
from training.detection.judging import judge_detection, reports_dir_of
from training.detection.train import train_detection_from_export
from training.embeddings import Embedder
from training.finetune import FineTuneOptions
from training.from_export import TrainingError, TrainingOptions, train_from_export
from training.head_trainer import HeadOutcome, fine_tune_from_export, train_head_from_export
from training.reports import CONFUSION_MATRIX, DETECTIONS, LEARNING_CURVES, METRICS_JSON, RELIABILITY
from training.service.client import CloudCallError, CloudClient, LeaseLost
from training.service.reporter import JobCancelled, JobReporter, TrainerStopping
from training.service.settings import TrainerSettings
from training.training_loop import resolve_device

log = logging.getLogger("training.service")

EXPORT_POLL_S = 0.5
MAX_ERROR_CHARS = 1000
REPORT_FILES = (
    (LEARNING_CURVES, "image/png"),
    (CONFUSION_MATRIX, "image/png"),
    (RELIABILITY, "image/png"),
    (DETECTIONS, "image/png"),
    (METRICS_JSON, "application/json"),
)
# Each job's scratch directory holds this file, locked while its trainer lives; a directory whose lock
# can be taken belongs to a trainer that died (killed mid-job) and is removed.
LOCK_FILE = ".lock"
# A directory without a lock file is left alone for this long (its trainer may be creating it).
UNLOCKED_GRACE_S = 3600.0
# Job options that only make sense on the command line (a path on the trainer's own disk).
LOCAL_ONLY_OPTIONS = ("pretrained_checkpoint",)

Ending = Literal["succeeded", "failed", "cancelled", "released", "lost"]


class JobError(Exception):
    """The job cannot be done; the message is what the job's page shows."""


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    ending: Ending
    model_id: str | None = None
    version: str | None = None
    promoted: bool = False
    error: str | None = None


def job_options(config: dict[str, Any], settings: TrainerSettings) -> TrainingOptions:
    """The job's config over this trainer's defaults (device, threads); JobError when it is invalid."""
    refused = [key for key in LOCAL_ONLY_OPTIONS if config.get(key)]
    if refused:
        raise JobError(f"invalid training config: {refused[0]} is only accepted by the command line")
    defaults: dict[str, Any] = {"device": settings.device}
    if settings.threads is not None:
        defaults["threads"] = settings.threads
    try:
        options = TrainingOptions.model_validate({**defaults, **config})
    except ValidationError as exc:
        raise JobError(f"invalid training config: {first_validation_error(exc, 'config')}") from None
    if options.device == "cuda" and not torch.cuda.is_available():
        raise JobError("the job asks for device cuda, and this trainer has no CUDA device")
    return options


def remove_stale_work_dirs(work_dir: Path) -> list[str]:
    """Scratch directories left by trainers that died mid-job on this machine; returns their names."""
    removed: list[str] = []
    if not work_dir.is_dir():
        return removed
    for path in sorted(work_dir.iterdir()):
        if not (path.is_dir() and path.name.startswith("trj_")):
            continue
        lock = path / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            if time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live trainer's job
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


@contextlib.contextmanager
def locked_work_dir(work_dir: Path, job_id: str) -> Iterator[Path]:
    """A private scratch directory for one job, locked while it is used and removed afterwards."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=work_dir))
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def public_error(exc: BaseException) -> str:
    """What the cloud may show about a failure: the message of an expected error, else only its kind."""
    if isinstance(exc, JobError | TrainingError | ExportError | BundleError | CloudCallError):
        text = str(exc).strip() or type(exc).__name__
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
    return f"internal error in the trainer ({type(exc).__name__}); see the trainer's log"


class JobRun:
    def __init__(
        self,
        client: CloudClient,
        settings: TrainerSettings,
        job: TrainingJobPublic,
        stopping: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.job = job
        self.job_id = job.id
        self.detector_id = job.detector_id
        self.stopping = stopping or threading.Event()
        self.reporter = JobReporter(
            client,
            self.job_id,
            settings.owner,
            settings.lease_s,
            settings.heartbeat_interval_s,
            self.stopping,
        )

    def run(self) -> JobOutcome:
        with locked_work_dir(self.settings.work_dir, self.job_id) as work:
            self.reporter.start()
            try:
                return self._finish(work)
            finally:
                self.reporter.stop()

    def _finish(self, work: Path) -> JobOutcome:
        reporter = self.reporter
        try:
            outcome = self._run(work)
        except LeaseLost:
            log.warning(
                "lease lost: another trainer has the job now", extra={"fields": {"job_id": self.job_id}}
            )
            return JobOutcome(self.job_id, "lost")
        except TrainerStopping:
            reporter.stop()
            reporter.release("this trainer is stopping")
            return JobOutcome(self.job_id, "released")
        except JobCancelled:
            message = self._cancel_message()
            return self._fail(message, "cancelled")
        except Exception as exc:
            if not isinstance(exc, JobError | TrainingError | ExportError | BundleError | CloudCallError):
                log.exception("training job failed", extra={"fields": {"job_id": self.job_id}})
            return self._fail(public_error(exc), "failed")
        reporter.stop()
        reporter.update(stage="done", message=f"model {outcome.version} registered")
        reporter.log(
            f"[done] {outcome.version} ({outcome.model_id})"
            + (" promoted to production" if outcome.promoted else " registered as a candidate")
        )
        reporter.beat()
        try:
            self.client.complete(self.job_id, self.settings.owner, outcome.model_id)
        except LeaseLost:
            return JobOutcome(self.job_id, "lost", outcome.model_id, outcome.version, outcome.promoted)
        return outcome

    def _cancel_message(self) -> str:
        progress = self.reporter.snapshot()
        if progress.get("stage") == "train" and progress.get("epochs"):
            return f"cancelled at epoch {progress.get('epoch', 0)} of {progress['epochs']}"
        return f"cancelled during {progress.get('stage', 'startup')}"

    def _fail(self, message: str, ending: Ending) -> JobOutcome:
        reporter = self.reporter
        reporter.stop()
        reporter.update(stage=ending, message=message)
        reporter.log(f"[{ending}] {message}")
        reporter.beat()
        try:
            self.client.fail(self.job_id, self.settings.owner, message)
        except CloudCallError as exc:
            log.warning("could not report the end of the job", extra={"fields": {"error": str(exc)}})
            return JobOutcome(self.job_id, "lost", error=message)
        return JobOutcome(self.job_id, ending, error=message)

    # --- the steps --------------------------------------------------------------------------------------

    def _run(self, work: Path) -> JobOutcome:
        reporter = self.reporter
        options = job_options(self.job.config, self.settings)
        device = resolve_device(options.device).type
        reporter.update(device=device)
        if options.engine == "cnn":
            return self._run_cnn(work, options, None)
        reporter.stage("backbone", f"backbone {options.backbone}")
        backbone = build_backbone(
            options.backbone, self.settings.backbone_cache or self.settings.work_dir / "backbones"
        )
        self._ensure_backbone_registered(backbone.ref, backbone.path)
        production_dir, parent_version, production_id = self._fetch_production(work)
        production_store = self._production_backbones(work, production_dir)
        reporter.stage("export", f"requesting a dataset export of {self.detector_id}")
        export_path = self._fetch_export(
            work, ExportRequest(backbone_sha256=backbone.ref.sha256, images="missing")
        )
        export = read_export(export_path)
        if export.detector.mode in BOX_MODES:
            return self._run_detection(
                work, options, backbone, export_path, production_dir, production_store, production_id
            )
        embedder = Embedder(backbone, threads=options.threads, device=device)
        uploads = _EmbeddingUploads(self.client, backbone.ref.sha256)
        try:
            outcome = train_head_from_export(
                export,
                work / "out-head",
                options,
                embedder,
                production_bundle=production_dir,
                production_backbones=production_store,
                parent_version=parent_version,
                progress=reporter.on_training_progress,
                on_new_embeddings=uploads.add,
            )
            uploads.flush()
        finally:
            embedder.close()
        export_path.unlink(missing_ok=True)
        reporter.log(
            f"[train] head {outcome.head.params} on {outcome.data['used']} items "
            f"({outcome.data['new_embeddings']} newly embedded) in {outcome.wall_s:.1f}s"
        )
        result = self._register_and_promote(
            work,
            outcome.bundle_dir,
            outcome.reports_dir,
            outcome.version,
            outcome.promotion.promote,
            outcome.promotion.reasons,
            production_id,
        )
        if options.engine == "auto" and _finetune_due(outcome, options, device):
            reporter.log("[train] fine-tuning the backbone's last blocks as a second candidate")
            tuned = self._run_finetune(
                work, options, backbone, outcome, production_id if not result.promoted else result.model_id
            )
            if tuned is not None and tuned.promoted:
                result = tuned
        if options.engine == "auto" and _cnn_due(outcome, options):
            reporter.log("[train] tiny inputs: trying the compact CNN as a second candidate")
            second = self._run_cnn(work, options, outcome if result.promoted else None)
            if second.promoted:
                return second
        return result

    def _run_detection(
        self,
        work: Path,
        options: TrainingOptions,
        backbone: BuiltBackbone,
        export_path: Path,
        production_dir: Path | None,
        production_store: BackboneStore | None,
        production_id: str | None,
    ) -> JobOutcome:
        """COUNT and BOUNDING_BOX: a detection head from every image with its boxes (augmentation
        needs the pixels, so an export that left images out is fetched again with all of them)."""
        export = read_export(export_path)
        if any(not export.has_image(item) for item in export.manifest.items):
            export_path.unlink(missing_ok=True)
            export_path = self._fetch_export(
                work / "detection", ExportRequest(backbone_sha256=backbone.ref.sha256, images="all")
            )
            export = read_export(export_path)
        embedder = Embedder(backbone, threads=options.threads, device=resolve_device(options.device).type)
        out = work / "out-detection"
        try:
            outcome = train_detection_from_export(
                export, out, options, embedder, progress=self.reporter.on_training_progress
            )
            self.reporter.stage("evaluate", f"{outcome.version} and production on the held-out images")
            judged = judge_detection(
                outcome,
                export,
                BackboneStore(out / "backbones"),
                options,
                production_bundle=production_dir,
                production_store=production_store,
            )
        finally:
            embedder.close()
        export_path.unlink(missing_ok=True)
        ev = outcome.evaluation.as_dict()
        self.reporter.log(
            f"[train] detection head on {outcome.data.get('used')} images in {outcome.wall_s:.1f}s: "
            + ", ".join(f"{k} {v}" for k, v in ev.items())
        )
        return self._register_and_promote(
            work,
            outcome.bundle_dir,
            reports_dir_of(outcome),
            outcome.version,
            judged.promotion.promote,
            judged.promotion.reasons,
            production_id,
        )

    def _run_finetune(
        self,
        work: Path,
        options: TrainingOptions,
        backbone: BuiltBackbone,
        base: HeadOutcome,
        production_id: str | None,
    ) -> JobOutcome | None:
        """Fine-tune from every image; registered (and promoted) only when it beats `base`."""
        export_path = self._fetch_export(
            work / "finetune", ExportRequest(backbone_sha256=backbone.ref.sha256, images="all")
        )
        embedder = Embedder(backbone, threads=options.threads, device=resolve_device(options.device).type)
        try:
            tuned = fine_tune_from_export(
                read_export(export_path),
                work / "out-finetune",
                options,
                embedder,
                base,
                progress=self.reporter.on_training_progress,
                finetune=FineTuneOptions(
                    epochs=options.finetune_epochs,
                    seed=options.seed,
                    device=resolve_device(options.device).type,
                ),
                check=self.reporter.check,
            )
        except TrainingError as exc:
            self.reporter.log(f"[train] fine-tuning skipped: {exc}")
            return None
        finally:
            embedder.close()
        if not tuned.promotion.promote:
            self.reporter.log(
                f"[promote] fine-tuned head not registered: {'; '.join(tuned.promotion.reasons)}"
            )
            return None
        return self._register_and_promote(
            work,
            tuned.bundle_dir,
            tuned.reports_dir,
            tuned.version,
            True,
            tuned.promotion.reasons,
            production_id,
        )

    def _register_and_promote(
        self,
        work: Path,
        bundle_dir: Path,
        reports_dir: Path,
        version: str,
        promote: bool,
        reasons: tuple[str, ...],
        production_id: str | None,
    ) -> JobOutcome:
        reporter = self.reporter
        reporter.stage("register", f"uploading {version}")
        model_id = self._register(work, bundle_dir, reports_dir, version, production_id)
        promoted = False
        if promote:
            promoted = self._promote(model_id, version, reasons, production_id)
        else:
            reporter.log(f"[promote] not promoted: {'; '.join(reasons)}")
        reporter.update(model_id=model_id, version=version, promoted=promoted)
        return JobOutcome(self.job_id, "succeeded", model_id, version, promoted)

    def _run_cnn(self, work: Path, options: TrainingOptions, head: HeadOutcome | None) -> JobOutcome:
        """The compact CNN from every image; judged against production (the head just promoted, if any)."""
        reporter = self.reporter
        out = work / "out-cnn"
        production_dir, parent_version, production_id = self._fetch_production(work / "cnn")
        production_store = self._production_backbones(work / "cnn", production_dir)
        reporter.stage("export", f"requesting a dataset export of {self.detector_id} with every image")
        export_path = self._fetch_export(work / "cnn", ExportRequest(images="all"))
        cnn = train_from_export(
            read_export(export_path),
            out,
            options,
            production_bundle=production_dir,
            parent_version=parent_version,
            progress=reporter.on_training_progress,
            production_backbones=production_store,
            judge_at_threshold=True,
        )
        return self._register_and_promote(
            work,
            cnn.bundle_dir,
            cnn.reports_dir,
            cnn.version,
            cnn.promotion.promote,
            cnn.promotion.reasons,
            production_id,
        )

    def _ensure_backbone_registered(self, ref: BackboneRef, path: Path) -> None:
        if self.client.backbone(ref.sha256) is None:
            self.reporter.log(f"[backbone] registering {ref.sha256[:12]} in the cloud")
            self.client.upload_backbone(ref, path)

    def _production_backbones(self, work: Path, production_dir: Path | None) -> BackboneStore | None:
        """A store holding the production bundle's backbone (downloaded and verified), when it has one."""
        if production_dir is None:
            return None
        try:
            meta = read_metadata(production_dir)
        except BundleError:
            return None
        if meta.backbone is None:
            return None
        store = BackboneStore(work / "production-backbones")
        cached = BackboneStore(
            (self.settings.backbone_cache or self.settings.work_dir / "backbones") / "registry"
        )
        if not cached.has(meta.backbone.sha256):
            tmp = work / "backbone.download"
            self.client.download_backbone(meta.backbone.sha256, tmp)
            try:
                cached.install_file(tmp, meta.backbone)
            except BackboneError as exc:
                self.reporter.log(f"[download] production's backbone is unusable ({exc})")
                return None
            finally:
                tmp.unlink(missing_ok=True)
        store.install_file(cached.verify(meta.backbone.sha256), meta.backbone)
        return store

    def _fetch_export(self, work: Path, request: ExportRequest | None = None) -> Path:
        reporter = self.reporter
        export = self.client.create_export(self.detector_id, request)
        export_id = export.id
        reporter.update(export_id=export_id)
        deadline = time.monotonic() + self.settings.export_timeout_s
        while export.status is not JobStatus.SUCCEEDED:
            if export.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise JobError(
                    f"dataset export {export_id} {export.status}: {export.error or 'no reason given'}"
                )
            if time.monotonic() > deadline:
                raise JobError(
                    f"dataset export {export_id} was not built within {self.settings.export_timeout_s:.0f} s "
                    "(is the cloud worker running?)"
                )
            reporter.check()
            self.stopping.wait(EXPORT_POLL_S)
            reporter.check()
            export = self.client.get_export(export_id)
        work.mkdir(parents=True, exist_ok=True)
        path = work / "export.tar.gz"
        reporter.stage("download", f"dataset export {export_id}: {export.item_count} labelled images")
        self.client.download_export(export_id, path)
        return path

    def _fetch_production(self, work: Path) -> tuple[Path | None, str | None, str | None]:
        """The production bundle, unpacked and verified; (None, None, None) when there is none.

        A production version that cannot be fetched or verified is still passed on (as an empty
        directory): the trainer then records why it could not compare, and promotes nothing.
        """
        reporter = self.reporter
        info = self.client.production(self.detector_id)
        if info is None:
            reporter.log("[download] no production version yet: this will be the first")
            return None, None, None
        version, model_id = info.version, info.model_version_id
        reporter.stage("download", f"production version {version} to compare against")
        work.mkdir(parents=True, exist_ok=True)
        bundle_dir = work / "production"
        archive = work / "production.tar.gz"
        try:
            self.client.download_model(model_id, archive)
            actual = sha256_of(archive)
            if actual != info.sha256:
                raise BundleError(f"downloaded sha256 {actual} is not the registry's {info.sha256}")
            unpack_bundle(archive, bundle_dir)
        except (CloudCallError, BundleError, OSError) as exc:
            reporter.log(
                f"[download] production version {version} is unusable here ({exc}); no automatic promotion"
            )
            shutil.rmtree(bundle_dir, ignore_errors=True)
            bundle_dir.mkdir(parents=True)
        finally:
            archive.unlink(missing_ok=True)
        return bundle_dir, version, model_id

    def _register(
        self, work: Path, bundle_dir: Path, reports_dir: Path, version: str, production_id: str | None
    ) -> str:
        reporter = self.reporter
        archive = work / f"bundle-{version}.tar.gz"
        pack_bundle(bundle_dir, archive)
        lineage = {
            "training_job_id": self.job_id,
            "export_id": reporter.snapshot().get("export_id"),
            "trainer": self.settings.owner,
            "production_model_id": production_id,
        }
        model, created = self.client.upload_model(self.detector_id, archive, lineage)
        model_id = model.id
        reporter.log(
            f"[register] {version} is {model_id}"
            + ("" if created else " (this exact version was registered before)")
        )
        uploaded = []
        for name, content_type in REPORT_FILES:
            path = reports_dir / name
            if name == METRICS_JSON:
                path = self._public_metrics(path, work / METRICS_JSON)
            if path.is_file():
                self.client.upload_report(model_id, name, path, content_type)
                uploaded.append(name)
        reporter.log("[register] reports uploaded: " + ", ".join(uploaded))
        return model_id

    def _public_metrics(self, path: Path, out: Path) -> Path:
        """metrics.json without the trainer's local paths, with the job it came from."""
        if not path.is_file():
            return path
        payload = json.loads(path.read_text())
        summary = payload.get("summary")
        if isinstance(summary, dict):
            summary.pop("bundle", None)
            summary.pop("reports", None)
        payload["training_job_id"] = self.job_id
        out.write_text(json.dumps(payload, indent=1))
        return out

    def _promote(
        self, model_id: str, version: str, reasons: tuple[str, ...], production_id: str | None
    ) -> bool:
        reporter = self.reporter
        current = self.client.production(self.detector_id)
        current_id = current.model_version_id if current is not None else None
        if current_id not in (production_id, model_id):
            reporter.log(f"[promote] production changed to {current_id} while this job ran; a person decides")
            return False
        reporter.stage("promote", f"{version}: {'; '.join(reasons)}", check=False)
        self.client.promote(model_id)
        return True


# Embeddings go to the cloud in batches of this many rows.
UPLOAD_BATCH = 256


class _EmbeddingUploads:
    """Collects newly computed embeddings and stores them in the cloud in batches (best effort: a
    failed upload only means the next job embeds those images again)."""

    def __init__(self, client: CloudClient, sha256: str) -> None:
        self.client = client
        self.sha256 = sha256
        self.ids: list[str] = []
        self.rows: list[np.ndarray[Any, np.dtype[np.float16]]] = []
        self.failed = False

    def add(self, ids: list[str], vectors: np.ndarray[Any, np.dtype[np.float16]]) -> None:
        self.ids += ids
        self.rows.append(vectors)
        if len(self.ids) >= UPLOAD_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.ids or self.failed:
            return
        buffer = io.BytesIO()
        np.save(buffer, np.concatenate(self.rows).astype(np.float16), allow_pickle=False)
        try:
            self.client.upload_embeddings(self.sha256, self.ids, buffer.getvalue())
        except CloudCallError as exc:
            self.failed = True
            log.warning("embeddings not stored in the cloud", extra={"fields": {"error": str(exc)}})
        self.ids, self.rows = [], []


def _milestone(n: int, base: int) -> int:
    """0 from `base` labels, 1 from 2x, 2 from 4x ...; -1 below `base`."""
    return int(math.log2(n / base)) if n >= base else -1


def _finetune_due(head: HeadOutcome, options: TrainingOptions, device: str) -> bool:
    if options.finetune == "never" or head.candidate.method != "holdout" or head.head.kind != "linear":
        return False
    if options.finetune == "always":
        return True
    side = head.data.get("median_side")
    if side is not None and side <= options.cnn_max_side:
        return False  # tiny inputs: the compact CNN is their second candidate
    if device == "cuda":
        return True
    labels = int(head.data.get("used", 0))
    return _milestone(labels, options.finetune_min_labels) > _milestone(
        head.production_labels or 0, options.finetune_min_labels
    )


def _cnn_due(head: HeadOutcome, options: TrainingOptions) -> bool:
    """Tiny inputs with enough labels, at 1x, 2x, 4x ... `cnn_min_labels` labels (milestones since
    production's own label count), so the slow candidate runs a few times in a detector's life."""
    side = head.data.get("median_side")
    labels = int(head.data.get("used", 0))
    if side is None or side > options.cnn_max_side or labels < options.cnn_min_labels:
        return False
    before = head.production_labels or 0
    return _milestone(labels, options.cnn_min_labels) > _milestone(before, options.cnn_min_labels)
