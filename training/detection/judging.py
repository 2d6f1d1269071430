"""Judging a detection candidate the way the classifier heads are judged: at the detector's threshold,
on the held-out items, against production on the same items (training.promotion.decide_at_threshold).

A detection bundle's answer is a count distribution over "0".."max_count" and an in-domain score,
so the classifier's operating point (confident share, confident accuracy at the threshold) applies
unchanged with the true count as the class. Both versions answer from image bytes through
common.runtime, exactly as the edge does; the reports (metrics.json and a picture of held-out
images with true and predicted boxes) are written beside the bundle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from common.backbone import BackboneStore
from common.bundle import BundleError, read_metadata
from common.imaging import ImageError, ImageLimits
from common.runtime import BackbonePool, ModelRuntime, Prediction
from training.dataset_export import DatasetExport, item_split
from training.detection.items import DetectionItem, items_from_export
from training.detection.train import DetectionOutcome
from training.evaluation import OperatingPoint, operating_point
from training.from_export import TrainingOptions
from training.promotion import PromotionDecision, decide_at_threshold
from training.reports import DETECTIONS, METRICS_JSON, NormBox, plot_detections, write_json

EXAMPLES = 8


@dataclass(frozen=True)
class DetectionJudgement:
    candidate: OperatingPoint
    production: OperatingPoint | None
    production_error: str | None
    production_labels: int | None
    promotion: PromotionDecision
    heldout: int


def heldout_items(export: DatasetExport, max_count: int, options: TrainingOptions) -> list[DetectionItem]:
    """The items training kept out of the fit (val and test), by the same stable split."""
    items, _ = items_from_export(export, max_count)
    return [i for i in items if item_split(i.id, options.val_fraction, options.test_fraction) != "train"]


def _answers(
    bundle_dir: Path, store: BackboneStore, items: list[DetectionItem]
) -> tuple[list[Prediction], list[str]]:
    pool = BackbonePool(["CPUExecutionProvider"])
    runtime = ModelRuntime(bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=pool)
    limits = ImageLimits()
    try:
        labels = list(runtime.metadata.labels)
        return [runtime.predict(item.image, limits) for item in items], labels
    finally:
        runtime.close()


def _point(
    predictions: list[Prediction], items: list[DetectionItem], max_count: int, threshold: float, version: str
) -> OperatingPoint:
    probs = np.asarray([p.probabilities for p in predictions], dtype=np.float64)
    q = np.asarray([p.in_domain for p in predictions], dtype=np.float64)
    y = np.asarray([min(i.count, max_count) for i in items], dtype=np.int64)
    return operating_point(probs, q, y, threshold, [i.id for i in items], version)


def judge_detection(
    outcome: DetectionOutcome,
    export: DatasetExport,
    candidate_store: BackboneStore,
    options: TrainingOptions,
    production_bundle: Path | None = None,
    production_store: BackboneStore | None = None,
) -> DetectionJudgement:
    meta = outcome.metadata
    max_count = meta.num_classes - 1
    threshold = options.confidence_threshold or meta.default_confidence_threshold
    items = heldout_items(export, max_count, options)
    if not items:
        raise ValueError("no held-out items to judge the candidate on")
    cand_preds, _ = _answers(outcome.bundle_dir, candidate_store, items)
    candidate = _point(cand_preds, items, max_count, threshold, meta.version)
    production: OperatingPoint | None = None
    production_error: str | None = None
    production_labels: int | None = None
    if production_bundle is not None:
        try:
            prod_meta = read_metadata(production_bundle)
            production_labels = (prod_meta.lineage.get("label_snapshot") or {}).get("count")
            if prod_meta.labels != meta.labels:
                production_error = f"production answers {len(prod_meta.labels)} count buckets, the candidate {len(meta.labels)}"
            else:
                prod_preds, _ = _answers(production_bundle, production_store or candidate_store, items)
                production = _point(prod_preds, items, max_count, threshold, prod_meta.version)
        except (BundleError, ImageError, OSError) as exc:
            production_error = str(exc).replace(str(production_bundle), "production")
        except Exception as exc:  # onnxruntime's own errors for a graph it cannot load
            production_error = f"production does not load ({type(exc).__name__})"
    decision = decide_at_threshold(
        candidate,
        production,
        options.operating_policy(),
        production_error=production_error,
        # Counted as production's are (the export's label snapshot): items left out of the fit (boxes
        # that do not cover a crowded image, say) still count, or a version on more labels would lose.
        candidate_labels=export.label_snapshot().count,
        production_labels=production_labels if production_bundle is not None else None,
    )
    _write_reports(outcome, items, cand_preds, candidate, production, decision, production_error)
    return DetectionJudgement(
        candidate, production, production_error, production_labels, decision, heldout=len(items)
    )


def reports_dir_of(outcome: DetectionOutcome) -> Path:
    return outcome.bundle_dir.parent / "reports"


def _write_reports(
    outcome: DetectionOutcome,
    items: list[DetectionItem],
    predictions: list[Prediction],
    candidate: OperatingPoint,
    production: OperatingPoint | None,
    decision: PromotionDecision,
    production_error: str | None,
) -> None:
    out = reports_dir_of(outcome)
    examples: list[tuple[NDArray[np.uint8], list[NormBox], list[NormBox], str]] = []
    for item, pred in list(zip(items, predictions, strict=True))[:EXAMPLES]:
        pixels = np.asarray(Image.open(io.BytesIO(item.image)).convert("RGB"))
        truth: list[NormBox] = [
            (float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in item.boxes.tolist()
        ]
        boxes: list[NormBox] = [(b.left, b.top, b.right, b.bottom) for b in pred.boxes or ()]
        title = f"true {item.count}, answered {pred.label} ({100 * pred.confidence:.0f} %)"
        examples.append((pixels, truth, boxes, title))
    if examples:
        plot_detections(examples, out / DETECTIONS)
    write_json(
        out / METRICS_JSON,
        {
            "engine": "detection",
            "version": outcome.version,
            "evaluation": outcome.evaluation.as_dict(),
            "operating_point": candidate.as_dict(),
            "production_operating_point": production.as_dict() if production else None,
            "production_error": production_error,
            "promotion": decision.as_dict(),
            "data": outcome.data,
            "timings_s": outcome.timings_s,
            "wall_s": round(outcome.wall_s, 2),
        },
    )
