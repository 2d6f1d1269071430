"""Head jobs: a detector's export in, a split bundle (head + OODD on the shared backbone) out, in seconds.

train_head_from_export(export, out_dir, options, embedder, production_bundle=..., ...)

  embeddings   the export's stored embeddings by this backbone; images without one are embedded
               now (ONNX Runtime, exactly as the edge will) and handed to `on_new_embeddings`, so
               the cloud stores them and the next job reads no image twice
  split        the test split by the hash of each image_query_id (the same items for every version)
               when it has at least `min_test_items`; otherwise every item is used and judged by
               its out-of-fold answer (cross-validation)
  fit          training.heads (linear or MLP chosen by cross-validation, temperature on out-of-fold
               logits), a low-rank Mahalanobis OODD on the backbone's channel statistics, calibrated
               on out-of-fold distances and tightened where reviewers' UNCLEAR examples (what the
               camera also shows but the detector should not answer) would pass it
  judge        the operating point at the detector's threshold (final confidence as the edge
               computes it), for the candidate and for production on the same items
  write        head.onnx and oodd.onnx (parity-checked against numpy), the split bundle, loaded
               back through common.runtime with the backbone and checked again; reports
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from common.backbone import BackboneRef, BackboneStore
from common.bundle import OODD_FILE, BundleError, PredictorMetadata, read_metadata, write_split_bundle
from common.confidence import in_domain_probability, softmax
from common.imaging import ImageError, ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from training.builder import DetectorSpec, behaviour_key, utc_now_iso, version_id
from training.dataset_export import UNCLEAR, DatasetExport, ExportItem, item_split
from training.embeddings import Embedder
from training.evaluation import Evaluation, OperatingPoint, evaluate_probabilities, operating_point
from training.export import PARITY_TOLERANCE, ExportMismatchError, _export, _session
from training.finetune import FineTuned, FineTuneOptions, describe, fine_tune_head
from training.from_export import (
    BUNDLE_DIR,
    REPORTS_DIR,
    TrainingError,
    TrainingOptions,
    TrainingProgress,
    code_version,
    detector_spec,
    image_header,
)
from training.heads import FittedHead, HeadOptions, fit_head
from training.oodd import (
    LowRankOodd,
    NegativeCalibration,
    calibrate_with_negatives,
    fit_lowrank_oodd,
    in_domain_needed,
    out_of_fold_distances,
    quantile_for,
)
from training.promotion import PromotionDecision, decide_at_threshold
from training.reports import (
    CONFUSION_MATRIX,
    METRICS_JSON,
    RELIABILITY,
    plot_confusion_matrix,
    plot_reliability,
    write_json,
)

log = logging.getLogger(__name__)

CODE_REF = "training.head_trainer"
EMBED_CHUNK = 64
PARITY_ROWS = 64
NewEmbeddings = Callable[[list[str], NDArray[np.float16]], None]
Progress = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class HeadOutcome:
    bundle_dir: Path
    reports_dir: Path
    metadata: PredictorMetadata
    candidate: OperatingPoint
    production: OperatingPoint | None
    production_error: str | None
    promotion: PromotionDecision
    evaluation: Evaluation
    head: FittedHead = field(repr=False)
    data: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    # How many labels the production version (as this job found it) learnt from, when known.
    production_labels: int | None = None
    oodd: LowRankOodd | None = field(default=None, repr=False)
    engine: str = "head"

    @property
    def version(self) -> str:
        return self.metadata.version

    def summary(self) -> dict[str, Any]:
        return {
            "detector_id": self.metadata.detector_id,
            "version": self.metadata.version,
            "engine": self.engine,
            "backbone": self.metadata.backbone.id if self.metadata.backbone else None,
            "head": self.head.params,
            "temperature": self.metadata.temperature,
            "operating_point": self.candidate.as_dict(),
            "production_operating_point": self.production.as_dict() if self.production else None,
            "production_error": self.production_error,
            "accuracy": self.evaluation.accuracy,
            "balanced_accuracy": self.evaluation.balanced_accuracy,
            "ece": self.evaluation.ece,
            "promote": self.promotion.promote,
            "promotion_reasons": list(self.promotion.reasons),
            "data": self.data,
            "wall_s": round(self.wall_s, 2),
        }


class _Clock:
    def __init__(self, progress: Progress | None) -> None:
        self.t0 = time.perf_counter()
        self.progress = progress
        self.marks: dict[str, float] = {}
        self._last = self.t0

    def report(self, stage: Any, message: str) -> None:
        now = time.perf_counter()
        log.info("%s: %s", stage, message)
        if self.progress is not None:
            self.progress(TrainingProgress(stage=stage, message=message, elapsed_s=now - self.t0))

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round(now - self._last, 3)
        self._last = now


@dataclass
class _Data:
    ids: list[str]
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    new_ids: list[str]
    skipped: dict[str, int]
    sides: list[int]
    images: dict[str, bytes]


def _embed(
    export: DatasetExport,
    items: list[ExportItem],
    embedder: Embedder,
    label_index: dict[str, int],
    on_new: NewEmbeddings | None,
    clock: _Clock,
) -> _Data:
    sha = embedder.backbone.ref.sha256
    stored = export.embeddings_by(sha)
    dim = embedder.dim
    skipped: Counter[str] = Counter()
    sides: list[int] = []
    todo = [item for item in items if item.image_query_id not in stored]
    computed: dict[str, NDArray[np.float16]] = {}
    for start in range(0, len(todo), EMBED_CHUNK):
        chunk = [item for item in todo[start : start + EMBED_CHUNK] if export.has_image(item)]
        skipped["no_image"] += len(todo[start : start + EMBED_CHUNK]) - len(chunk)
        if not chunk:
            continue
        blobs = [export.image_bytes(item) for item in chunk]
        for blob in blobs:
            header = image_header(blob)
            if header is not None:
                sides.append(header[1])
        result = embedder.embeddings(blobs)
        ok = [i for i in range(len(chunk)) if i not in result.failed]
        skipped["undecodable"] += len(result.failed)
        rows = result.vectors[ok].astype(np.float16)
        if not np.isfinite(rows).all():
            raise TrainingError("the backbone produced non-finite embeddings")
        ids = [chunk[i].image_query_id for i in ok]
        computed.update(zip(ids, rows, strict=True))
        if on_new is not None and ids:
            on_new(ids, rows)
        clock.report("prepare", f"embedded {min(start + EMBED_CHUNK, len(todo))}/{len(todo)} new images")
    ids, rows_x, ys = [], [], []
    for item in items:
        vec = stored.get(item.image_query_id)
        if vec is None:
            vec = computed.get(item.image_query_id)
        if vec is None:
            continue
        if vec.shape != (dim,):
            raise TrainingError(
                f"stored embedding of {item.image_query_id} has shape {vec.shape}, not ({dim},)"
            )
        ids.append(item.image_query_id)
        rows_x.append(vec)
        ys.append(label_index[item.label])
    x = np.stack(rows_x).astype(np.float32) if rows_x else np.zeros((0, dim), np.float32)
    return _Data(
        ids=ids,
        x=x,
        y=np.asarray(ys, dtype=np.int64),
        new_ids=list(computed),
        skipped=dict(skipped),
        sides=sides,
        images={
            item.image_query_id: export.images[item.image_query_id]
            for item in items
            if export.has_image(item)
        },
    )


def _export_graphs(head: FittedHead, oodd: LowRankOodd, x_check: NDArray[np.float32]) -> tuple[bytes, bytes]:
    """head.onnx and oodd.onnx, each checked against its numpy twin on real rows."""
    module = head.to_module().eval()
    head_onnx = _export(module, torch.from_numpy(x_check[:1]), "embedding", ["logits", "features"])
    logits_o, feats_o = _session(head_onnx).run(["logits", "features"], {"embedding": x_check})
    diff = float(
        np.max(np.abs(softmax(logits_o, head.temperature) - softmax(head.logits(x_check), head.temperature)))
    )
    if not diff <= PARITY_TOLERANCE:
        raise ExportMismatchError(f"head.onnx and numpy probabilities differ by {diff:.3g}")
    feats = head.features(x_check)
    omod = oodd.to_module().eval()
    oodd_onnx = _export(omod, torch.from_numpy(feats[:1]), "features", ["in_domain"])
    (q_o,) = _session(oodd_onnx).run(["in_domain"], {"features": feats_o})
    qdiff = float(np.max(np.abs(q_o - oodd.in_domain(feats))))
    if not qdiff <= 1e-3:
        raise ExportMismatchError(f"oodd.onnx and numpy in-domain scores differ by {qdiff:.3g}")
    return head_onnx, oodd_onnx


def _production_point(
    production_bundle: Path,
    spec: DetectorSpec,
    embedder: Embedder,
    store: BackboneStore,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    ids: list[str],
    images: dict[str, bytes],
    threshold: float,
) -> tuple[OperatingPoint | None, str | None, int | None]:
    """Production on the same items: from the embeddings when it uses this backbone, else from images."""
    try:
        meta = read_metadata(production_bundle)
    except BundleError as exc:
        return None, str(exc), None
    labels_then = (meta.lineage.get("label_snapshot") or {}).get("count")
    if sorted(meta.labels) != sorted(spec.labels):
        return None, f"production answers {meta.labels}, the detector {list(spec.labels)}", labels_then
    columns = [meta.labels.index(name) for name in spec.labels]
    pool = BackbonePool(["CPUExecutionProvider"])
    try:
        runtime = ModelRuntime(
            production_bundle, ["CPUExecutionProvider"], backbone_store=store, backbones=pool
        )
    except (BundleError, OSError) as exc:
        return None, str(exc).replace(str(production_bundle), "production"), labels_then
    except Exception as exc:  # onnxruntime's own errors for a graph it cannot load
        return None, f"production does not load ({type(exc).__name__})", labels_then
    try:
        ref = meta.backbone
        if ref is not None and ref.sha256 == embedder.backbone.ref.sha256 and meta.head_input == "embedding":
            probs, q = runtime.run_head({ref.embedding_output: x})
        else:
            missing = [i for i in ids if i not in images]
            if missing:
                return None, f"production needs the images of {len(missing)} evaluation items", labels_then
            limits = ImageLimits()
            chunks_p, chunks_q = [], []
            for start in range(0, len(ids), 32):
                batch = np.concatenate(
                    [runtime.preprocessor.tensor(images[i], limits) for i in ids[start : start + 32]]
                )
                p, qq = runtime.run_tensor(batch)
                chunks_p.append(p)
                chunks_q.append(qq)
            probs, q = np.concatenate(chunks_p), np.concatenate(chunks_q)
    except (ImageError, BundleError) as exc:
        return None, str(exc), labels_then
    finally:
        runtime.close()
    point = operating_point(probs[:, columns], q, y, threshold, ids, meta.version)
    return point, None, labels_then


@dataclass(frozen=True)
class _FittedOodd:
    oodd: LowRankOodd
    oof_distances: NDArray[np.float64]
    quantile: float
    tightened: NegativeCalibration | None


@dataclass(frozen=True)
class _EvalSet:
    ids: list[str]
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    probs: NDArray[np.float64]
    q: NDArray[np.float64]
    method: str


def _train_device(options: TrainingOptions) -> str:
    """Where torch fits: CUDA when asked for, or when `auto` finds one."""
    return (
        "cuda"
        if options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )


def _fit_split(
    data: _Data, labels: list[str], options: TrainingOptions
) -> tuple[NDArray[np.bool_], bool, NDArray[np.bool_]]:
    """(test mask, holdout?, fit mask): a held-out test split only when it is big enough and the rest
    still has every class; otherwise every item is fitted and judged out of fold."""
    present = np.unique(data.y)
    if present.size < 2:
        raise TrainingError(
            f"a head needs labels of at least two classes; this export has {dict(Counter(labels[i] for i in data.y))}"
        )
    test_mask = np.array(
        [item_split(i, options.val_fraction, options.test_fraction) == "test" for i in data.ids]
    )
    holdout = test_mask.sum() >= options.min_test_items and np.unique(data.y[~test_mask]).size == present.size
    fit_mask = ~test_mask if holdout else np.ones(len(data.ids), dtype=bool)
    return test_mask, bool(holdout), fit_mask


def _fit_oodd(
    head: FittedHead,
    x_fit: NDArray[np.float32],
    y_fit: NDArray[np.int64],
    k: int,
    unclear: _Data,
    threshold: float,
    options: TrainingOptions,
) -> _FittedOodd:
    """The OODD, calibrated on out-of-fold distances (honest), then tightened below UNCLEAR examples."""
    feats_fit = head.features(x_fit)
    fit_present, compact = np.unique(y_fit, return_inverse=True)
    oof_distances = out_of_fold_distances(feats_fit, y_fit, head.folds, k, options.oodd_rank)
    quantile = quantile_for(len(y_fit))
    oodd = fit_lowrank_oodd(
        feats_fit, compact, oof_distances, fit_present.size, options.oodd_rank, quantile=quantile
    )
    need = in_domain_needed(threshold, k)
    tightened = (
        calibrate_with_negatives(
            oof_distances, oodd.distances(head.features(unclear.x)), need, quantile=quantile
        )
        if need is not None and len(unclear.ids) > 0
        else None
    )
    if tightened is not None:
        oodd = dataclasses.replace(oodd, threshold=tightened.threshold, scale=tightened.scale)
    return _FittedOodd(oodd, oof_distances, quantile, tightened)


def _eval_set(
    head: FittedHead, fitted: _FittedOodd, data: _Data, test_mask: NDArray[np.bool_], holdout: bool
) -> _EvalSet:
    """The items the candidate is judged on, with its answers: held-out ones, else out-of-fold ones."""
    oodd = fitted.oodd
    if holdout:
        eval_ids = [i for i, t in zip(data.ids, test_mask, strict=True) if t]
        x_eval, y_eval = data.x[test_mask], data.y[test_mask]
        probs = softmax(head.logits(x_eval), head.temperature)
        q = oodd.in_domain(head.features(x_eval))
        return _EvalSet(eval_ids, x_eval, y_eval, probs, q, "holdout")
    probs = softmax(head.oof_logits, head.temperature)
    q = in_domain_probability(fitted.oof_distances, oodd.threshold, oodd.scale)
    return _EvalSet(list(data.ids), data.x, data.y, probs, q, "cross_validation")


@dataclass(frozen=True)
class _ProductionInputs:
    """What evaluating production needs besides the evaluation items."""

    spec: DetectorSpec
    embedder: Embedder
    store: BackboneStore
    images: dict[str, bytes]
    threshold: float


def _judge_against_production(
    export: DatasetExport,
    options: TrainingOptions,
    candidate: OperatingPoint,
    ev: _EvalSet,
    holdout: bool,
    production_bundle: Path | None,
    production: _ProductionInputs,
    clock: _Clock,
) -> tuple[OperatingPoint | None, str | None, int | None, PromotionDecision]:
    """Production on the same items (when it can be judged fairly), then the promotion rule."""
    point, production_error, production_labels = None, None, None
    if production_bundle is not None:
        clock.report("evaluate", f"production on the same {len(ev.ids)} items")
        point, production_error, production_labels = _production_point(
            production_bundle,
            production.spec,
            production.embedder,
            production.store,
            ev.x,
            ev.y,
            ev.ids,
            production.images,
            production.threshold,
        )
        if not holdout:  # cross-validated: production cannot be judged on items it may have learnt
            point = None
            production_error = None if production_labels is not None else production_error
    decision = decide_at_threshold(
        candidate,
        point,
        options.operating_policy(),
        production_error=production_error,
        # Counted as production's were (the export's label snapshot), not as the usable items.
        candidate_labels=export.label_snapshot().count,
        production_labels=production_labels if production_bundle is not None else None,
    )
    clock.report("evaluate", f"promote={decision.promote}: {'; '.join(decision.reasons)}")
    return point, production_error, production_labels, decision


def _data_info(
    data: _Data, items: list[ExportItem], labels: list[str], ev: _EvalSet, n_fit: int
) -> dict[str, Any]:
    """What the job learnt from, for the bundle's lineage and the job's summary."""
    counts = Counter(labels[i] for i in data.y)
    median_side = int(np.median(data.sides)) if data.sides else None
    return {
        "items": len(items),
        "used": len(data.ids),
        "new_embeddings": len(data.new_ids),
        "stored_embeddings": len(data.ids) - len(data.new_ids),
        "skipped": data.skipped,
        "per_label": {label: counts.get(label, 0) for label in labels},
        "median_side": median_side,
        "evaluation": ev.method,
        "n_fit": n_fit,
        "n_eval": len(ev.ids),
    }


def _head_metrics(
    candidate: OperatingPoint,
    production: OperatingPoint | None,
    production_error: str | None,
    evaluation: Evaluation,
    decision: PromotionDecision,
    head: FittedHead,
    fitted: _FittedOodd,
    unclear: _Data,
    method: str,
    clock: _Clock,
) -> dict[str, Any]:
    """The bundle's metrics: what the promotion rule saw, so a person can check its decision."""
    oodd, tightened = fitted.oodd, fitted.tightened
    return {
        "engine": "head",
        "operating_point": candidate.as_dict(),
        "production_operating_point": production.as_dict() if production else None,
        "production_error": production_error,
        "evaluation": {"split": method, "candidate": evaluation.as_dict()},
        "test_accuracy": evaluation.accuracy,
        "test_balanced_accuracy": evaluation.balanced_accuracy,
        "test_ece_after_temperature": evaluation.ece,
        "promotion": decision.as_dict(),
        "head": {**head.params, "candidates": head.candidates, "fit_seconds": round(head.seconds, 3)},
        "oodd": {
            "rank": int(oodd.components.shape[0]),
            "shrinkage": oodd.shrinkage,
            "quantile": fitted.quantile,
            "unclear_examples": len(unclear.ids),
            "tightened_by_unclear": tightened.as_dict() if tightened is not None else None,
        },
        # The clock's own dict: laps still to come (write) land in it before the metrics are written.
        "timings_s": clock.marks,
    }


def _head_lineage(
    export: DatasetExport,
    options: TrainingOptions,
    embedder: Embedder,
    production: OperatingPoint | None,
    parent_version: str | None,
    data_info: dict[str, Any],
    device: str,
) -> dict[str, Any]:
    """Where the version came from: enough to reproduce it and to trace it back to its labels."""
    ref = embedder.backbone.ref
    snapshot = export.label_snapshot()
    return {
        "parent_version": production.model_version if production is not None else parent_version,
        "label_snapshot": snapshot.as_dict(),
        "code": CODE_REF,
        "code_version": code_version(),
        "training_config": options.model_dump(mode="json"),
        "backbone": {"id": ref.id, "sha256": ref.sha256, "weights_sha256": ref.weights_sha256},
        "data": data_info,
        "seed": options.seed,
        "torch": torch.__version__,
        "device": device,
    }


def _write_checked_bundle(
    bundle_dir: Path,
    head_onnx: bytes,
    oodd_onnx: bytes,
    embedder: Embedder,
    metadata: PredictorMetadata,
    store: BackboneStore,
    head: FittedHead,
    oodd: LowRankOodd,
    x_check: NDArray[np.float32],
) -> None:
    """Write the bundle and load it back as an edge would; a bundle that fails is never left behind."""
    try:
        write_split_bundle(bundle_dir, head_onnx, oodd_onnx, embedder.backbone.pipeline, metadata)
        _check_in_runtime(bundle_dir, store, head, oodd, x_check)
    except BaseException:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        raise


def _fit_head_on(
    x_fit: NDArray[np.float32],
    y_fit: NDArray[np.int64],
    k: int,
    ref: BackboneRef,
    device: str,
    holdout: bool,
    options: TrainingOptions,
    clock: _Clock,
) -> FittedHead:
    """The head, told which embedding columns are channel statistics (the OODD reads those)."""
    stats = ref.parts.get("stats")
    columns = (int(stats[0]), int(stats[1])) if stats else None
    head_opts = HeadOptions(folds=options.head_folds, seed=options.seed, device=device)
    if options.threads:
        torch.set_num_threads(options.threads)
    clock.report(
        "train",
        f"fitting a head on {len(y_fit)} embeddings ({'held-out test split' if holdout else 'cross-validated'})",
    )
    head = fit_head(x_fit, y_fit, k, head_opts, feature_columns=columns)
    clock.lap("fit_head")
    return head


def _head_version(
    export: DatasetExport,
    embedder: Embedder,
    spec: DetectorSpec,
    head: FittedHead,
    oodd: LowRankOodd,
    head_onnx: bytes,
    oodd_onnx: bytes,
) -> str:
    """The answers, the backbone, the labels and the moment: a retrain on the same labels is a new
    version with its own record (its metadata differs), never a clash with an earlier upload."""
    key = (
        behaviour_key(embedder.backbone.pipeline, spec, head.temperature, oodd.calibration())
        + embedder.backbone.ref.sha256.encode()
        + export.label_snapshot().sha256.encode()
        + str(time.time_ns()).encode()
    )
    return version_id(head_onnx, oodd_onnx, key)


def _plot_head_reports(evaluation: Evaluation, reports_dir: Path, method: str, temperature: float) -> None:
    """The confusion matrix and reliability diagram a reviewer looks at before trusting a version."""
    plot_confusion_matrix(evaluation, reports_dir / CONFUSION_MATRIX, title=f"Confusion matrix ({method})")
    plot_reliability(
        [(f"candidate, T={temperature:.2f}", evaluation.reliability, evaluation.ece)],
        reports_dir / RELIABILITY,
    )


def train_head_from_export(
    export: DatasetExport,
    out_dir: Path,
    options: TrainingOptions,
    embedder: Embedder,
    production_bundle: Path | None = None,
    production_backbones: BackboneStore | None = None,
    parent_version: str | None = None,
    progress: Progress | None = None,
    on_new_embeddings: NewEmbeddings | None = None,
) -> HeadOutcome:
    """See the module docstring. `out_dir/bundle` must not exist yet (or be empty).

    `production_backbones` holds the production bundle's backbone when it is not this one.
    """
    clock = _Clock(progress)
    bundle_dir = out_dir / BUNDLE_DIR
    if bundle_dir.exists() and any(bundle_dir.iterdir()):
        raise TrainingError(f"{bundle_dir} already holds files; choose another --out")
    spec = detector_spec(export)
    labels = list(spec.labels)
    label_index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    threshold = options.confidence_threshold or spec.default_confidence_threshold
    items = export.trainable_items()
    clock.report("prepare", f"{len(items)} labelled items; embedding the images without a stored embedding")
    data = _embed(export, items, embedder, label_index, on_new_embeddings, clock)
    unclear = _embed(export, export.unclear_items(), embedder, {UNCLEAR: -1}, on_new_embeddings, clock)
    clock.lap("embed")
    test_mask, holdout, fit_mask = _fit_split(data, labels, options)
    x_fit, y_fit = data.x[fit_mask], data.y[fit_mask]
    ref = embedder.backbone.ref
    device = _train_device(options)
    head = _fit_head_on(x_fit, y_fit, k, ref, device, holdout, options, clock)
    clock.report(
        "calibrate", f"{head.kind} head chosen ({head.params}); temperature {head.temperature:.3f}; OODD"
    )
    fitted = _fit_oodd(head, x_fit, y_fit, k, unclear, threshold, options)
    oodd = fitted.oodd
    clock.lap("fit_oodd")

    ev = _eval_set(head, fitted, data, test_mask, holdout)
    evaluation = evaluate_probabilities(ev.probs, ev.y, labels, ev.ids if holdout else ())
    head_onnx, oodd_onnx = _export_graphs(head, oodd, data.x[:PARITY_ROWS])
    created_at = utc_now_iso()
    version = _head_version(export, embedder, spec, head, oodd, head_onnx, oodd_onnx)
    candidate = operating_point(ev.probs, ev.q, ev.y, threshold, ev.ids, version, ev.method)
    clock.lap("export")

    store = BackboneStore(out_dir / "backbones")
    store.install_file(embedder.backbone.path, ref)
    prod_inputs = _ProductionInputs(spec, embedder, production_backbones or store, data.images, threshold)
    production, production_error, production_labels, decision = _judge_against_production(
        export, options, candidate, ev, holdout, production_bundle, prod_inputs, clock
    )
    clock.lap("judge")

    data_info = _data_info(data, items, labels, ev, len(y_fit))
    metrics = _head_metrics(
        candidate, production, production_error, evaluation, decision, head, fitted, unclear, ev.method, clock
    )
    lineage = _head_lineage(export, options, embedder, production, parent_version, data_info, device)
    metadata = PredictorMetadata(
        detector_id=spec.detector_id,
        version=version,
        detector_name=spec.detector_name,
        query=spec.query,
        mode=spec.mode,
        labels=labels,
        temperature=head.temperature,
        default_confidence_threshold=spec.default_confidence_threshold,
        oodd=oodd.calibration(),
        metrics=metrics,
        lineage=lineage,
        created_at=created_at,
        backbone=ref,
        head_input="embedding",
    )
    clock.report("write", f"bundle {version} into {bundle_dir}")
    _write_checked_bundle(
        bundle_dir, head_onnx, oodd_onnx, embedder, metadata, store, head, oodd, data.x[:PARITY_ROWS]
    )
    reports_dir = out_dir / REPORTS_DIR
    outcome = HeadOutcome(
        bundle_dir=bundle_dir,
        reports_dir=reports_dir,
        metadata=metadata,
        candidate=candidate,
        production=production,
        production_error=production_error,
        promotion=decision,
        evaluation=evaluation,
        head=head,
        data=data_info,
        wall_s=time.perf_counter() - clock.t0,
        production_labels=production_labels,
        oodd=oodd,
    )
    _plot_head_reports(evaluation, reports_dir, ev.method, head.temperature)
    clock.lap("write")
    outcome = dataclasses.replace(outcome, wall_s=time.perf_counter() - clock.t0)
    write_json(
        reports_dir / METRICS_JSON, {"summary": outcome.summary(), "metrics": metrics, "lineage": lineage}
    )
    clock.report("done", f"{version} in {outcome.wall_s:.1f}s")
    return outcome


def _check_in_runtime(
    bundle_dir: Path, store: BackboneStore, head: FittedHead, oodd: LowRankOodd, x: NDArray[np.float32]
) -> None:
    """Load the bundle as an edge does (verify, backbone by hash, warm up) and compare its answers."""
    pool = BackbonePool(["CPUExecutionProvider"])
    runtime = ModelRuntime(bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=pool)
    try:
        runtime.warmup()
        ref = runtime.metadata.backbone
        assert ref is not None
        probs, q = runtime.run_head({ref.embedding_output: x})
    finally:
        runtime.close()
    expected = softmax(head.logits(x), head.temperature)
    diff = float(np.max(np.abs(probs - expected)))
    qdiff = float(np.max(np.abs(q - oodd.in_domain(head.features(x)))))
    if not (diff <= PARITY_TOLERANCE and qdiff <= 1e-3):
        raise ExportMismatchError(
            f"{bundle_dir}: runtime differs from training by {diff:.3g} (p) / {qdiff:.3g} (q)"
        )


def _splits_with_images(
    export: DatasetExport, options: TrainingOptions
) -> tuple[list[ExportItem], dict[str, list[ExportItem]]]:
    """(items with an image, train/val/test by the hash of each id): the test items are the head's."""
    items = [item for item in export.trainable_items() if export.has_image(item)]
    splits = {
        s: [
            i for i in items if item_split(i.image_query_id, options.val_fraction, options.test_fraction) == s
        ]
        for s in ("train", "val", "test")
    }
    return items, splits


def _feature_maps_of(
    export: DatasetExport, embedder: Embedder, label_index: dict[str, int], part: list[ExportItem]
) -> tuple[NDArray[np.float32], NDArray[np.int64], list[str]]:
    """(maps, labels, ids) of the images that decode; an undecodable one is left out, not guessed."""
    result = embedder.feature_maps([export.image_bytes(i) for i in part])
    keep = [j for j in range(len(part)) if j not in result.failed]
    return (
        result.vectors[keep],
        np.asarray([label_index[part[j].label] for j in keep], np.int64),
        [part[j].image_query_id for j in keep],
    )


def _export_fine_tuned(tuned: FineTuned, x_te: NDArray[np.float32], probs: NDArray[np.float64]) -> bytes:
    """head.onnx of the fine-tuned head, refused when ONNX Runtime answers differently from torch."""
    module = tuned.module.eval()
    head_onnx = _export(module, torch.from_numpy(x_te[:1]), "feature_map", ["logits", "features"])
    logits_o, _ = _session(head_onnx).run(["logits", "features"], {"feature_map": x_te[:16]})
    diff = float(np.max(np.abs(softmax(logits_o, tuned.temperature) - probs[:16])))
    if not diff <= PARITY_TOLERANCE:
        raise ExportMismatchError(f"fine-tuned head.onnx and torch probabilities differ by {diff:.3g}")
    return head_onnx


def _fine_tuned_version(
    embedder: Embedder,
    spec: DetectorSpec,
    tuned: FineTuned,
    oodd: LowRankOodd,
    head_onnx: bytes,
    oodd_onnx: bytes,
) -> str:
    """Like the head's version, marked as reading the feature map, so the two never share an id."""
    key = (
        behaviour_key(embedder.backbone.pipeline, spec, tuned.temperature, oodd.calibration())
        + embedder.backbone.ref.sha256.encode()
        + b"feature_map"
        + str(time.time_ns()).encode()
    )
    return version_id(head_onnx, oodd_onnx, key)


def _fine_tuned_metrics(
    candidate: OperatingPoint,
    base: HeadOutcome,
    evaluation: Evaluation,
    decision: PromotionDecision,
    tuned: FineTuned,
    clock: _Clock,
) -> dict[str, Any]:
    """The bundle's metrics, with the head it must beat in production's place."""
    return {
        "engine": "fine_tuned",
        "operating_point": candidate.as_dict(),
        "production_operating_point": base.candidate.as_dict(),
        "evaluation": {"split": "holdout", "candidate": evaluation.as_dict()},
        "test_accuracy": evaluation.accuracy,
        "test_balanced_accuracy": evaluation.balanced_accuracy,
        "test_ece_after_temperature": evaluation.ece,
        "promotion": decision.as_dict(),
        "head": describe(tuned),
        "timings_s": clock.marks,
    }


def _write_fine_tuned_bundle(
    bundle_dir: Path,
    head_onnx: bytes,
    oodd_onnx: bytes,
    embedder: Embedder,
    metadata: PredictorMetadata,
    store: BackboneStore,
    x_te: NDArray[np.float32],
    probs: NDArray[np.float64],
) -> None:
    """Write the bundle and load it back as an edge would; a bundle that fails is never left behind."""
    ref = embedder.backbone.ref
    try:
        write_split_bundle(bundle_dir, head_onnx, oodd_onnx, embedder.backbone.pipeline, metadata)
        pool = BackbonePool(["CPUExecutionProvider"])
        runtime = ModelRuntime(bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=pool)
        try:
            got, _ = runtime.run_head({str(ref.feature_map_output): x_te[:16]})
        finally:
            runtime.close()
        if float(np.max(np.abs(got - probs[:16]))) > PARITY_TOLERANCE:
            raise ExportMismatchError(f"{bundle_dir}: the runtime's fine-tuned answers differ from torch's")
    except BaseException:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        raise


def _plot_fine_tuned_reports(evaluation: Evaluation, reports_dir: Path, temperature: float) -> None:
    """The same reports as a head's, so a reviewer compares the two candidates side by side."""
    plot_confusion_matrix(
        evaluation, reports_dir / CONFUSION_MATRIX, title="Confusion matrix (fine-tuned, test)"
    )
    plot_reliability(
        [(f"fine-tuned, T={temperature:.2f}", evaluation.reliability, evaluation.ece)],
        reports_dir / RELIABILITY,
    )


def fine_tune_from_export(
    export: DatasetExport,
    out_dir: Path,
    options: TrainingOptions,
    embedder: Embedder,
    base: HeadOutcome,
    progress: Progress | None = None,
    finetune: FineTuneOptions | None = None,
    check: Callable[[], None] | None = None,
) -> HeadOutcome:
    """The second candidate: fine-tune the backbone's last blocks from `base` (a linear head judged on
    the held-out test split), judged on the same test items against `base`."""
    clock = _Clock(progress)
    if base.oodd is None or base.candidate.method != "holdout":
        raise TrainingError("fine-tuning needs a linear head judged on a held-out test split")
    spec = detector_spec(export)
    labels = list(spec.labels)
    label_index = {label: i for i, label in enumerate(labels)}
    threshold = base.candidate.threshold
    items, splits = _splits_with_images(export, options)
    clock.report("prepare", f"feature maps of {len(items)} images")
    (x_tr, y_tr, _), (x_val, y_val, _), (x_te, y_te, te_ids) = (
        _feature_maps_of(export, embedder, label_index, splits[s]) for s in ("train", "val", "test")
    )
    clock.lap("feature_maps")
    device = _train_device(options)
    opts = finetune or FineTuneOptions(seed=options.seed, device=device)
    clock.report(
        "train", f"fine-tuning blocks 11-15 on {len(y_tr)} images for {opts.epochs} epochs on {device}"
    )
    # The classifier starts from a linear head fitted on the train split alone, so the validation split
    # (where the temperature is fitted) is unseen by every weight, as the test split is.
    start = fit_head(
        _embeddings_from_maps(x_tr),
        y_tr,
        len(labels),
        HeadOptions(folds=options.head_folds, seed=options.seed),
        feature_columns=base.head.feature_columns,
    )
    tuned = fine_tune_head(start, x_tr, y_tr, x_val, y_val, opts, check, features_from=base.head)
    clock.lap("fine_tune")
    logits = tuned.logits(x_te)
    probs = softmax(logits, tuned.temperature)
    feats = _features(tuned.module, x_te)
    q = base.oodd.in_domain(feats)
    evaluation = evaluate_probabilities(probs, y_te, labels, te_ids)
    head_onnx = _export_fine_tuned(tuned, x_te, probs)
    oodd_onnx = (base.bundle_dir / OODD_FILE).read_bytes()
    ref = embedder.backbone.ref
    version = _fine_tuned_version(embedder, spec, tuned, base.oodd, head_onnx, oodd_onnx)
    candidate = operating_point(probs, q, y_te, threshold, te_ids, version, "holdout")
    if candidate.items_sha256 != base.candidate.items_sha256:
        raise TrainingError(
            "the fine-tuning test items differ from the head's (images missing from the export)"
        )
    decision = decide_at_threshold(
        candidate,
        base.candidate,
        options.operating_policy(),
        candidate_labels=len(y_tr),
        production_labels=None,
        require_win=True,
    )
    clock.report("evaluate", f"promote={decision.promote}: {'; '.join(decision.reasons)}")
    metrics = _fine_tuned_metrics(candidate, base, evaluation, decision, tuned, clock)
    lineage = {
        **base.metadata.lineage,
        "parent_version": base.version,
        "code": CODE_REF + ".fine_tune_from_export",
    }
    metadata = base.metadata.model_copy(
        update={
            "version": version,
            "temperature": tuned.temperature,
            "metrics": metrics,
            "lineage": lineage,
            "created_at": utc_now_iso(),
            "head_input": "feature_map",
        }
    )
    bundle_dir = out_dir / BUNDLE_DIR
    store = BackboneStore(out_dir / "backbones")
    store.install_file(embedder.backbone.path, ref)
    _write_fine_tuned_bundle(bundle_dir, head_onnx, oodd_onnx, embedder, metadata, store, x_te, probs)
    reports_dir = out_dir / REPORTS_DIR
    _plot_fine_tuned_reports(evaluation, reports_dir, tuned.temperature)
    outcome = HeadOutcome(
        bundle_dir=bundle_dir,
        reports_dir=reports_dir,
        metadata=metadata,
        candidate=candidate,
        production=base.candidate,
        production_error=None,
        promotion=decision,
        evaluation=evaluation,
        head=base.head,
        data={**base.data, "fine_tune_train": len(y_tr), "fine_tune_val": len(y_val)},
        wall_s=time.perf_counter() - clock.t0,
        oodd=base.oodd,
        engine="fine_tuned",
    )
    write_json(
        reports_dir / METRICS_JSON, {"summary": outcome.summary(), "metrics": metrics, "lineage": lineage}
    )
    return outcome


def _embeddings_from_maps(maps: NDArray[np.float32]) -> NDArray[np.float32]:
    """The backbone's embedding recomputed from its feature maps (frozen blocks 11-15 and statistics)."""
    from training.backbones import Lite0Backbone, channel_stats

    suffix = Lite0Backbone().suffix.eval()
    out = []
    with torch.no_grad():
        for start in range(0, maps.shape[0], 128):
            fmap = torch.from_numpy(maps[start : start + 128])
            out.append(torch.cat([suffix(fmap), channel_stats(fmap)], dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def _features(module: torch.nn.Module, maps: NDArray[np.float32]) -> NDArray[np.float32]:
    out = []
    with torch.no_grad():
        for start in range(0, maps.shape[0], 128):
            out.append(module(torch.from_numpy(maps[start : start + 128]))[1].numpy())
    return np.concatenate(out).astype(np.float32)
