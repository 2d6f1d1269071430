"""The training service's core: one detector's dataset export in, a candidate bundle out.

    train_from_export(export, out_dir, options, production_bundle=..., progress=...)

      prepare_data        read the export, skip UNCLEAR, decode images exactly as the runtime
                          does, split train/val/test by a hash of each image_query_id, resolve
                          the input pipeline (size, channels, mean/std measured on train)
      train_model         SmallCnn-style compact CNN (optionally warm-started from a local
                          checkpoint), augmentation, class balancing, early stopping, LR
                          schedule, CUDA + mixed precision when present, fixed seeds
      calibrate_and_export (training.builder) temperature, Mahalanobis OODD, ONNX + parity
      evaluate_candidate  test-split metrics with 95 % intervals; the production bundle, when
                          given, is run through the edge runtime on the very same items
      decide_promotion    (training.promotion) the documented rule
      write outputs       out_dir/bundle (verified, runtime-checked), out_dir/reports (PNG plots
                          and metrics.json) and out_dir/checkpoint.pt (weights for a warm start)

A job's `config` dict validates into `TrainingOptions`; `progress` receives `TrainingProgress`
after every stage and epoch (an exception raised there cancels the run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.backbone import BackboneStore
from common.bundle import BundleError, PredictorMetadata, read_metadata
from common.confidence import softmax
from common.ids import is_detector_id
from common.imaging import ImageError, ImageLimits, decode_image
from training.builder import (
    CalibratedModel,
    DetectorSpec,
    TensorSplits,
    bundle_metadata,
    calibrate_and_export,
    candidate_version,
    write_bundle_dir,
)
from training.dataset_export import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    DatasetExport,
    ExportItem,
    LabelSnapshot,
    item_split,
    read_export,
)
from training.datasets import SplitName
from training.evaluation import (
    Evaluation,
    IncomparableModelError,
    OperatingPoint,
    bundle_answers,
    evaluate_bundle,
    evaluate_probabilities,
    operating_point,
    reliability_bins,
)
from training.models import SmallCnn, count_parameters
from training.preprocess import InputPipeline, Normalizer, bundle_pipeline, image_to_uint8, to_nchw_uint8
from training.promotion import (
    OperatingPolicy,
    PromotionDecision,
    PromotionPolicy,
    decide_at_threshold,
    decide_promotion,
)
from training.reports import (
    CONFUSION_MATRIX,
    LEARNING_CURVES,
    METRICS_JSON,
    RELIABILITY,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
    write_json,
)
from training.training_loop import (
    EpochStats,
    TrainConfig,
    TrainResult,
    available_cores,
    remove_class_weight_prior,
    resolve_device,
    train_classifier,
)

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
REPORTS_DIR = "reports"
CHECKPOINT_FILE = "checkpoint.pt"
CODE_REF = "training.from_export"
# Channel widths of successive conv stages; the input size decides how many stages are used.
STAGE_WIDTHS = (16, 32, 64, 96, 128)
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 16, 224
# Classes whose sizes differ by more than this factor are balanced when `balance` is "auto".
AUTO_BALANCE_RATIO = 1.5


class TrainingError(ValueError):
    """The job cannot produce a bundle from this data and configuration (the message says why)."""


Channels = Literal["L", "RGB", "RGBA"]


class TrainingOptions(BaseModel):
    """Everything a training job may set; every field has a default that works for small detectors."""

    model_config = ConfigDict(extra="forbid")

    # Input pipeline. None = decided from the data: the typical image side (clamped to 16..224 and
    # rounded so the conv stages divide it), grayscale when every image is, mean/std of train.
    input_size: int | None = Field(default=None, ge=MIN_INPUT_SIDE, le=MAX_INPUT_SIDE)
    channels: Channels | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: Literal["bilinear", "nearest"] = "bilinear"
    # Model.
    widths: list[int] | None = None
    embedding_dim: int = Field(default=128, ge=8, le=2048)
    pretrained_checkpoint: str | None = None
    # Optimisation.
    epochs: int = Field(default=30, ge=1, le=1000)
    patience: int | None = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=4e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    # Plateau pairs with early stopping (one-cycle assumes every epoch runs; it suits fixed budgets).
    lr_schedule: Literal["onecycle", "plateau"] = "plateau"
    balance: Literal["auto", "loss", "sampler", "none"] = "auto"
    # Augmentation: shift as a fraction of the side, rotation in degrees, zoom and brightness gain.
    max_shift_fraction: float = Field(default=0.07, ge=0, le=0.5)
    max_rotation: float = Field(default=8.0, ge=0, le=45)
    max_zoom: float = Field(default=0.08, ge=0, le=0.5)
    max_brightness: float = Field(default=0.2, ge=0, le=0.9)
    # Splits (by hash of image_query_id; changing them moves items between splits).
    val_fraction: float = Field(default=DEFAULT_VAL_FRACTION, gt=0, lt=0.5)
    test_fraction: float = Field(default=DEFAULT_TEST_FRACTION, gt=0, lt=0.5)
    # Execution.
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    threads: int | None = Field(default=None, ge=1)
    # Promotion rule tolerances (see training.promotion).
    max_balanced_accuracy_drop: float = Field(default=0.01, ge=0, le=1)
    max_ece_increase: float = Field(default=0.02, ge=0, le=1)
    min_test_items: int = Field(default=20, ge=1)
    # What a job trains (training.service.job): "auto" fits a head on the shared backbone first and,
    # for tiny inputs with enough labels, tries the compact CNN as a second candidate; "head" and
    # "cnn" train only that one.
    engine: Literal["auto", "head", "cnn"] = "auto"
    backbone: str = "efficientnet-lite0/imagenet"
    head_folds: int = Field(default=5, ge=2, le=10)
    oodd_rank: int = Field(default=64, ge=1, le=1024)
    cnn_max_side: int = Field(default=64, ge=0, le=MAX_INPUT_SIDE)
    cnn_min_labels: int = Field(default=200, ge=1)
    # Fine-tuning the backbone's last blocks (a second candidate that must beat the head): "auto" with a
    # GPU, or on the CPU from `finetune_min_labels` labels (then at 2x, 4x ... that many).
    finetune: Literal["auto", "never", "always"] = "auto"
    finetune_min_labels: int = Field(default=500, ge=1)
    finetune_epochs: int = Field(default=5, ge=1, le=100)
    # The threshold versions are judged at (default: the detector's own), and its tolerances.
    confidence_threshold: float | None = Field(default=None, gt=0, le=1)
    promise_tolerance: float = Field(default=0.02, ge=0, le=0.5)
    max_escalation_increase: float = Field(default=0.02, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingOptions:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together, or neither")
        if self.mean is not None and self.channels is None:
            raise ValueError("mean and std need channels")
        if self.widths is not None and not 1 <= len(self.widths) <= 6:
            raise ValueError("widths needs 1 to 6 stages")
        return self

    def promotion_policy(self) -> PromotionPolicy:
        return PromotionPolicy(self.max_balanced_accuracy_drop, self.max_ece_increase, self.min_test_items)

    def operating_policy(self) -> OperatingPolicy:
        return OperatingPolicy(self.promise_tolerance, self.max_escalation_increase, self.min_test_items)


Stage = Literal["prepare", "train", "calibrate", "evaluate", "write", "done"]


@dataclass(frozen=True)
class TrainingProgress:
    """What a running job reports: the stage, and per epoch the curves so far and an ETA."""

    stage: Stage
    message: str
    elapsed_s: float
    epoch: int | None = None  # epochs completed (1-based)
    epochs: int | None = None  # the most that will run (early stopping may end sooner)
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    learning_rate: float | None = None
    eta_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class PreparedData:
    """Decoded, split, uint8 tensors plus everything needed to describe where they came from."""

    spec: DetectorSpec
    pipeline: InputPipeline
    splits: TensorSplits
    item_ids: dict[SplitName, list[str]]
    test_images: list[bytes] = field(repr=False)
    snapshot: LabelSnapshot
    skipped_undecodable: list[str]
    export_info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.spec.labels)


@dataclass(frozen=True)
class TrainedModel:
    model: SmallCnn
    result: TrainResult
    info: dict[str, Any]


@dataclass(frozen=True)
class TrainingOutcome:
    bundle_dir: Path
    reports_dir: Path
    checkpoint: Path
    metadata: PredictorMetadata
    candidate: Evaluation
    production: Evaluation | None
    production_error: str | None
    promotion: PromotionDecision
    history: list[EpochStats]
    wall_s: float

    @property
    def version(self) -> str:
        return self.metadata.version

    def summary(self) -> dict[str, Any]:
        m = self.metadata.metrics
        return {
            "detector_id": self.metadata.detector_id,
            "version": self.metadata.version,
            "bundle": str(self.bundle_dir),
            "reports": str(self.reports_dir),
            "test_items": self.candidate.n,
            "accuracy": self.candidate.accuracy,
            "accuracy_ci95": list(self.candidate.accuracy_ci95),
            "balanced_accuracy": self.candidate.balanced_accuracy,
            "balanced_accuracy_ci95": list(self.candidate.balanced_accuracy_ci95),
            "ece_before_temperature": m["test_ece_before_temperature"],
            "ece": self.candidate.ece,
            "temperature": self.metadata.temperature,
            "production_version": self.production.model_version if self.production else None,
            "production_balanced_accuracy": self.production.balanced_accuracy if self.production else None,
            "production_error": self.production_error,
            "promote": self.promotion.promote,
            "promotion_reasons": list(self.promotion.reasons),
            "epochs_run": len(self.history),
            "wall_s": round(self.wall_s, 2),
        }


class _Clock:
    def __init__(self, progress: ProgressCallback | None) -> None:
        self.t0 = time.perf_counter()
        self.progress = progress

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def report(self, stage: Stage, message: str, **fields: Any) -> None:
        log.info("%s: %s", stage, message)
        if self.progress is not None:
            self.progress(TrainingProgress(stage=stage, message=message, elapsed_s=self.elapsed, **fields))


# --- data -------------------------------------------------------------------------------------


def stages_for(side: int) -> int:
    """Conv stages (each halves the side) so the last feature map is about 7 to 14 pixels."""
    return 2 if side <= 32 else 3 if side <= 64 else 4 if side <= 128 else 5


def choose_input_size(sides: list[int]) -> int:
    """The median image side, clamped to 16..224 and rounded to a multiple of 2**stages."""
    side = int(np.median(sides)) if sides else 64
    side = min(MAX_INPUT_SIDE, max(MIN_INPUT_SIDE, side))
    step: int = 2 ** stages_for(side)
    return max(step, round(side / step) * step)


def image_header(data: bytes) -> tuple[str, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.mode, max(img.size)
    except (OSError, ValueError, SyntaxError):
        return None


def _channels_from_modes(modes: Counter[str]) -> Channels:
    return "L" if modes and all(m in ("L", "LA", "1", "I;16", "I", "F") for m in modes) else "RGB"


def detector_spec(export: DatasetExport) -> DetectorSpec:
    det = export.detector
    if not is_detector_id(det.id):
        raise TrainingError(f"detector id {det.id!r} is not det_ + 27 base62 characters")
    threshold = (det.model_extra or {}).get("confidence_threshold", 0.9)
    return DetectorSpec(
        detector_id=det.id,
        detector_name=det.name,
        query=det.query,
        mode=det.mode,
        labels=tuple(det.labels),
        default_confidence_threshold=float(threshold) if isinstance(threshold, int | float) else 0.9,
    )


def _mean_std(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1], rounded for the YAML."""
    arr = x.to(torch.float64) / 255.0
    mean = arr.mean(dim=(0, 2, 3))
    std = arr.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def prepare_data(export: DatasetExport, options: TrainingOptions | None = None) -> PreparedData:
    """Decode trainable items as the runtime would and split them by the hash of their ids."""
    opts = options or TrainingOptions()
    spec = detector_spec(export)
    items = export.trainable_items()
    headers = {item.image_query_id: image_header(export.image_bytes(item)) for item in items}
    channels: Channels = opts.channels or _channels_from_modes(Counter(h[0] for h in headers.values() if h))
    side = opts.input_size or choose_input_size([h[1] for h in headers.values() if h])
    planes = len(channels)
    # Mean and std are only needed to normalise; decoding and resizing need the rest.
    draft = InputPipeline(
        input_height=side,
        input_width=side,
        channels=channels,
        mean=opts.mean or [0.5] * planes,
        std=opts.std or [0.25] * planes,
        resize=opts.resize,
    )
    limits = ImageLimits()
    by_split: dict[SplitName, list[tuple[ExportItem, NDArray[np.uint8]]]] = {
        "train": [],
        "val": [],
        "test": [],
    }
    undecodable: list[str] = []
    for item in items:
        split = item_split(item.image_query_id, opts.val_fraction, opts.test_fraction)
        try:
            img = decode_image(export.image_bytes(item), limits, mode=channels, draft_size=(side, side))
        except ImageError as exc:
            log.warning("skipping %s: %s", item.image_query_id, exc)
            undecodable.append(item.image_query_id)
            continue
        by_split[split].append((item, image_to_uint8(img, draft)))
    label_index = {label: i for i, label in enumerate(spec.labels)}

    def tensors(split: SplitName) -> tuple[torch.Tensor, torch.Tensor]:
        rows = by_split[split]
        if not rows:
            return torch.zeros((0, planes, side, side), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        x = to_nchw_uint8(np.stack([arr for _, arr in rows]))
        y = torch.tensor([label_index[item.label] for item, _ in rows], dtype=torch.int64)
        return x, y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (tensors(s) for s in ("train", "val", "test"))
    sizes = {"train": len(y_train), "val": len(y_val), "test": len(y_test)}
    if sizes["val"] == 0 or sizes["test"] == 0 or len(torch.unique(y_train)) < 2:
        raise TrainingError(
            f"not enough labelled images: splits {sizes}; training needs at least two labels in train "
            f"and one image in validation and test (label more images)"
        )
    if opts.mean is not None and opts.std is not None:
        mean, std = opts.mean, opts.std
    else:
        mean, std = _mean_std(x_train)
    try:
        pipeline = InputPipeline.model_validate({**draft.model_dump(), "mean": mean, "std": std})
    except ValueError as exc:
        raise TrainingError(f"invalid input pipeline: {exc}") from None
    det = export.detector
    return PreparedData(
        spec=spec,
        pipeline=pipeline,
        splits=TensorSplits(x_train, y_train, x_val, y_val, x_test, y_test),
        item_ids={s: [item.image_query_id for item, _ in rows] for s, rows in by_split.items()},
        test_images=[export.image_bytes(item) for item, _ in by_split["test"]],
        snapshot=export.label_snapshot(),
        skipped_undecodable=undecodable,
        export_info={
            "source": Path(export.source).name if export.source else "",
            "format_version": export.manifest.format_version,
            "created_at": export.manifest.created_at,
            "detector_id": det.id,
            "mode_configuration": det.mode_configuration,
            "items": len(export.manifest.items),
            "undecodable_skipped": len(undecodable),
        },
    )


# --- model and training ----------------------------------------------------------------------


def build_model(pipeline: InputPipeline, num_classes: int, options: TrainingOptions) -> SmallCnn:
    side = pipeline.input_height
    widths = tuple(options.widths) if options.widths else STAGE_WIDTHS[: stages_for(side)]
    if pipeline.input_width != side:
        raise TrainingError("only square inputs are supported (input_height == input_width)")
    try:
        return SmallCnn(
            in_channels=len(pipeline.channels),
            num_classes=num_classes,
            input_size=side,
            widths=widths,
            embedding_dim=options.embedding_dim,
        )
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def architecture(model: SmallCnn) -> dict[str, Any]:
    return {
        "name": "SmallCnn",
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "input_size": model.input_size,
        "widths": list(model.widths),
        "embedding_dim": int(model.head.in_features),
        "feature_tap": model.feature_tap,
    }


def load_pretrained(model: SmallCnn, path: Path) -> dict[str, Any]:
    """Copy every tensor whose name and shape match from a local checkpoint (never downloads).

    Accepts a bare state dict or this trainer's checkpoint.pt ({"state_dict": ...}). A head of
    another width (a detector with other labels) is simply not copied.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"pretrained checkpoint {path} could not be read: {exc}") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise TrainingError(f"pretrained checkpoint {path} holds no state dict")
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not matched:
        raise TrainingError(f"pretrained checkpoint {path} has no tensor that fits this model")
    model.load_state_dict(matched, strict=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "path": str(path),
        "sha256": digest,
        "tensors_loaded": len(matched),
        "tensors_total": len(own),
    }


def _balance(y: torch.Tensor, num_classes: int, mode: str) -> tuple[str, tuple[float, ...] | None]:
    """(effective mode, per-class prior weights n / (K' n_k) over the K' classes present; 1 elsewhere)."""
    counts = np.bincount(y.numpy(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    ratio = counts[present].max() / counts[present].min()
    if mode == "auto":
        mode = "loss" if ratio > AUTO_BALANCE_RATIO else "none"
    if mode == "none":
        return mode, None
    weights = np.ones(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return mode, tuple(float(w) for w in weights)


def train_model(
    data: PreparedData, options: TrainingOptions | None = None, progress: ProgressCallback | None = None
) -> TrainedModel:
    """Train the compact CNN on `data.splits`; the returned model is on the CPU in eval mode."""
    opts = options or TrainingOptions()
    clock = _Clock(progress)
    torch.manual_seed(opts.seed)
    model = build_model(data.pipeline, data.num_classes, opts)
    pretrained = None
    if opts.pretrained_checkpoint:
        pretrained = load_pretrained(model, Path(opts.pretrained_checkpoint))
    mode, weights = _balance(data.splits.y_train, data.num_classes, opts.balance)
    side = data.pipeline.input_height
    config = TrainConfig(
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        max_lr=opts.learning_rate,
        weight_decay=opts.weight_decay,
        max_shift=round(opts.max_shift_fraction * side),
        max_rotation=opts.max_rotation,
        max_zoom=opts.max_zoom,
        max_brightness=opts.max_brightness,
        colour_channels=data.pipeline.colour_channels,
        seed=opts.seed,
        threads=opts.threads,
        class_weights=weights if mode == "loss" else None,
        balanced_sampling=mode == "sampler",
        patience=opts.patience,
        lr_schedule=opts.lr_schedule,
        device=opts.device,
        amp=opts.amp,
    )
    device = resolve_device(opts.device)
    clock.report(
        "train",
        f"{count_parameters(model)} parameters, {len(data.splits.y_train)} training images, "
        f"up to {opts.epochs} epochs on {device.type}",
        epoch=0,
        epochs=opts.epochs,
    )

    def on_epoch(stats: EpochStats) -> None:
        done = stats.epoch + 1
        per_epoch = clock.elapsed / done
        clock.report(
            "train",
            f"epoch {done}/{opts.epochs}",
            epoch=done,
            epochs=opts.epochs,
            train_loss=stats.train_loss,
            train_accuracy=stats.train_accuracy,
            val_loss=stats.val_loss,
            val_accuracy=stats.val_accuracy,
            learning_rate=stats.lr,
            eta_s=per_epoch * (opts.epochs - done),
        )

    s = data.splits
    result = train_classifier(
        model,
        s.x_train,
        s.y_train,
        s.x_val,
        s.y_val,
        Normalizer.from_pipeline(data.pipeline),
        config,
        on_epoch,
    )
    if weights is not None:
        remove_class_weight_prior(model.head, weights)
    info: dict[str, Any] = {
        "parameters": count_parameters(model),
        "architecture": architecture(model),
        "balance": mode,
        "class_weights": list(weights) if weights is not None else None,
        "device": result.device,
        "amp": result.amp,
        "threads": opts.threads or available_cores(),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch + 1,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 2),
        "pretrained": pretrained,
        "history": [
            {
                "epoch": e.epoch + 1,
                "train_loss": round(e.train_loss, 5),
                "train_accuracy": round(e.train_accuracy, 5),
                "val_loss": round(e.val_loss, 5),
                "val_accuracy": round(e.val_accuracy, 5),
                "lr": e.lr,
                "seconds": round(e.seconds, 3),
            }
            for e in result.history
        ],
    }
    return TrainedModel(model, result, info)


# --- evaluation, lineage, outputs -------------------------------------------------------------


def code_version() -> str:
    """`git describe` of the checkout this code runs from, else the installed package's version."""
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--tags"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return f"git:{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"intellioptics=={importlib.metadata.version('intellioptics')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def evaluate_candidate(data: PreparedData, calibrated: CalibratedModel, version: str = "") -> Evaluation:
    return evaluate_probabilities(
        calibrated.test_probabilities,
        data.splits.y_test.numpy(),
        data.spec.labels,
        data.item_ids["test"],
        model_version=version,
    )


def evaluate_production(
    data: PreparedData, production_bundle: Path, backbone_store: BackboneStore | None = None
) -> tuple[Evaluation | None, str | None]:
    """The production bundle on the candidate's test items, through the edge runtime; or why not."""
    try:
        evaluation = evaluate_bundle(
            production_bundle,
            data.test_images,
            data.splits.y_test.numpy(),
            data.spec.labels,
            data.item_ids["test"],
            backbone_store=backbone_store,
        )
    except (BundleError, IncomparableModelError, ImageError, OSError) as exc:
        return None, str(exc)
    return evaluation, None


def production_operating_point(
    data: PreparedData, production_bundle: Path, threshold: float, backbone_store: BackboneStore | None
) -> tuple[OperatingPoint | None, str | None, int | None]:
    """Production's answers at the threshold on the candidate's test items, and how many labels it
    learnt from (its lineage), or why it could not be judged."""
    try:
        labels_then = (read_metadata(production_bundle).lineage.get("label_snapshot") or {}).get("count")
        probs, q, version = bundle_answers(
            production_bundle, data.test_images, data.spec.labels, backbone_store=backbone_store
        )
    except (BundleError, IncomparableModelError, ImageError, OSError) as exc:
        return None, str(exc), None
    point = operating_point(probs, q, data.splits.y_test.numpy(), threshold, data.item_ids["test"], version)
    return point, None, labels_then


def save_checkpoint(path: Path, model: SmallCnn, data: PreparedData, version: str) -> Path:
    """Weights plus what they mean, loadable with `load_pretrained` for the next version's warm start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "architecture": architecture(model),
            "labels": list(data.spec.labels),
            "pipeline": data.pipeline.model_dump(mode="json"),
            "detector_id": data.spec.detector_id,
            "version": version,
        },
        path,
    )
    return path


def write_reports(
    reports_dir: Path,
    trained: TrainedModel,
    calibrated: CalibratedModel,
    data: PreparedData,
    candidate: Evaluation,
    production: Evaluation | None,
    payload: dict[str, Any],
) -> list[Path]:
    """Learning curves, confusion matrix, reliability diagram (before/after temperature, production)."""
    y_test = data.splits.y_test.numpy()
    before = reliability_bins(softmax(calibrated.test_logits), y_test)
    curves = [
        ("candidate, T=1", before, float(calibrated.metrics["test_ece_before_temperature"])),
        (f"candidate, T={calibrated.temperature:.2f}", candidate.reliability, candidate.ece),
    ]
    if production is not None:
        curves.append((f"production {production.model_version}", production.reliability, production.ece))
    return [
        plot_learning_curves(
            trained.result.history, reports_dir / LEARNING_CURVES, trained.result.best_epoch
        ),
        plot_confusion_matrix(candidate, reports_dir / CONFUSION_MATRIX),
        plot_reliability(curves, reports_dir / RELIABILITY),
        write_json(reports_dir / METRICS_JSON, payload),
    ]


def train_from_export(
    export: Path | DatasetExport,
    out_dir: Path,
    options: TrainingOptions | None = None,
    production_bundle: Path | None = None,
    parent_version: str | None = None,
    progress: ProgressCallback | None = None,
    production_backbones: BackboneStore | None = None,
    judge_at_threshold: bool = False,
) -> TrainingOutcome:
    """Train, calibrate, evaluate (against production when given) and write a candidate bundle.

    `out_dir/bundle` must not exist yet (or be empty); reports and the checkpoint are overwritten.
    `parent_version` names the version this one succeeds when no production bundle is given.
    `production_backbones` holds a split production bundle's backbone. With `judge_at_threshold` the
    promotion follows `training.promotion.decide_at_threshold` (what cameras get at the detector's
    threshold) instead of the balanced-accuracy rule.
    """
    opts = options or TrainingOptions()
    clock = _Clock(progress)
    bundle_dir = out_dir / BUNDLE_DIR
    if bundle_dir.exists() and any(bundle_dir.iterdir()):
        raise TrainingError(f"{bundle_dir} already holds files; choose another --out")
    clock.report("prepare", f"reading {export if isinstance(export, Path) else 'the export'}")
    dataset = read_export(export) if isinstance(export, Path) else export
    data = prepare_data(dataset, opts)
    bundle_pipeline(data.pipeline)  # fail before training if the bundle format cannot ship this input
    n = {k: len(v) for k, v in data.item_ids.items()}
    clock.report(
        "prepare",
        f"{data.spec.detector_name} ({data.spec.mode.value}, {data.num_classes} labels): "
        f"{n['train']} train / {n['val']} val / {n['test']} test images at "
        f"{data.pipeline.input_height}x{data.pipeline.input_width} {data.pipeline.channels}",
    )
    trained = train_model(data, opts, progress)

    clock.report("calibrate", "temperature, OODD and ONNX export")
    calibrated = calibrate_and_export(trained.model, data.pipeline, data.splits, data.num_classes)
    version = candidate_version(data.spec, data.pipeline, calibrated)
    candidate = evaluate_candidate(data, calibrated, version)
    production, production_error = None, None
    if production_bundle is not None:
        clock.report(
            "evaluate", f"production bundle {production_bundle} on the same {candidate.n} test items"
        )
        production, production_error = evaluate_production(data, production_bundle, production_backbones)
        if production_error is not None:
            log.warning("production could not be evaluated: %s", production_error)
    threshold = opts.confidence_threshold or data.spec.default_confidence_threshold
    candidate_point = operating_point(
        calibrated.test_probabilities,
        calibrated.test_in_domain,
        data.splits.y_test.numpy(),
        threshold,
        data.item_ids["test"],
        version,
    )
    if judge_at_threshold:
        prod_point, prod_error, prod_labels = None, None, None
        if production_bundle is not None:
            prod_point, prod_error, prod_labels = production_operating_point(
                data, production_bundle, threshold, production_backbones
            )
        decision = decide_at_threshold(
            candidate_point,
            prod_point,
            opts.operating_policy(),
            production_error=prod_error,
            candidate_labels=data.snapshot.count,
            production_labels=prod_labels if production_bundle is not None else None,
        )
    else:
        decision = decide_promotion(candidate, production, opts.promotion_policy(), production_error)
    clock.report("evaluate", f"promote={decision.promote}: {'; '.join(decision.reasons)}")

    metrics: dict[str, Any] = {
        **calibrated.metrics,
        "engine": "cnn",
        "operating_point": candidate_point.as_dict(),
        "test_balanced_accuracy": candidate.balanced_accuracy,
        "evaluation": {
            "split": "test",
            "candidate": candidate.as_dict(),
            "production": production.as_dict() if production is not None else None,
            "production_error": production_error,
        },
        "promotion": decision.as_dict(),
        "training": {k: v for k, v in trained.info.items() if k != "architecture"},
    }
    lineage: dict[str, Any] = {
        "parent_version": production.model_version if production is not None else parent_version,
        "label_snapshot": data.snapshot.as_dict(),
        "code": CODE_REF,
        "code_version": code_version(),
        "training_config": opts.model_dump(mode="json"),
        "export": data.export_info,
        "splits": {"method": "sha256(image_query_id)", **{f"n_{k}": v for k, v in n.items()}},
        "architecture": trained.info["architecture"],
        "backbone": {"id": "digitnet/from-scratch", "sha256": None, "weights_sha256": None},
        "seed": opts.seed,
        "torch": torch.__version__,
        "device": trained.info["device"],
        "initialised_from": trained.info["pretrained"],
    }
    metadata = bundle_metadata(data.spec, data.pipeline, calibrated, metrics, lineage)

    clock.report("write", f"bundle {metadata.version} into {bundle_dir}")
    write_bundle_dir(bundle_dir, calibrated, data.pipeline, metadata)
    checkpoint = save_checkpoint(out_dir / CHECKPOINT_FILE, trained.model, data, metadata.version)
    reports_dir = out_dir / REPORTS_DIR
    outcome = TrainingOutcome(
        bundle_dir=bundle_dir,
        reports_dir=reports_dir,
        checkpoint=checkpoint,
        metadata=metadata,
        candidate=candidate,
        production=production,
        production_error=production_error,
        promotion=decision,
        history=list(trained.result.history),
        wall_s=clock.elapsed,
    )
    payload = {
        "summary": outcome.summary(),
        "metrics": metrics,
        "lineage": lineage,
        "pipeline": data.pipeline.model_dump(mode="json"),
    }
    write_reports(reports_dir, trained, calibrated, data, candidate, production, payload)
    outcome = dataclasses.replace(outcome, wall_s=clock.elapsed)
    clock.report("done", f"{metadata.version} in {clock.elapsed:.1f}s")
    return outcome
