"""Detection jobs: labelled boxes in, a split bundle (detection head + OODD on the shared backbone) out.

  train_detection(items, spec, out_dir, options, embedder)      in-memory (id, image bytes, boxes)
  train_detection_from_export(export, out_dir, options, embedder)  a dataset export whose items
                                                                carry `rois`

split      by the hash of each item id (training.dataset_export.item_split): "train" fits the
           head, the rest (val and test, 30 % by default) is held out for calibration and the
           metrics in the bundle; an item keeps its split across versions
maps       every image is decoded and preprocessed by common.runtime.Preprocessor and run through
           backbone.onnx once, as the edge will; the train images also as `copies` augmented
           variants (flips, crops, colour; training.detection.augment), computed once and cached
fit        the centre-point head (training.detection.model) on the cached maps: focal loss on
           the centre heatmap, L1 on sub-cell offset and log size, AdamW with a cosine schedule
calibrate  on held-out images: Platt scaling of the peak logits so that a box that matches a true
           one (IoU >= 0.5) is a positive; then one temperature on the Poisson-binomial count
           logits by the NLL of the true counts; a low-rank Mahalanobis OODD on the feature map's
           channel statistics (training.oodd), calibrated on out-of-fold distances
write      head.onnx and oodd.onnx (parity against torch), the split bundle, loaded back through
           common.runtime.ModelRuntime and checked again on held-out images
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from common.backbone import BackboneStore
from common.bundle import BOX_MODES, DetectionSpec, DetectorMode, PredictorMetadata, write_split_bundle
from common.confidence import final_confidence, softmax
from common.imaging import ImageError, ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from training.builder import DetectorSpec, behaviour_key, utc_now_iso, version_id
from training.calibration import expected_calibration_error, fit_temperature, negative_log_likelihood
from training.dataset_export import DatasetExport, item_split
from training.detection.augment import AugmentOptions, augment
from training.detection.items import DetectionItem, as_detection_items, items_from_export
from training.detection.metrics import (
    DetectionMetrics,
    ImageDetections,
    evaluate_detections,
    match_detections,
)
from training.detection.model import MAX_BOXES, CentreNet, DeepContext, DetectionHead, box_pixels_tolerance
from training.embeddings import Embedder
from training.export import PARITY_TOLERANCE, ExportMismatchError, _export, _session
from training.from_export import (
    BUNDLE_DIR,
    TrainingError,
    TrainingOptions,
    TrainingProgress,
    code_version,
    detector_spec,
)
from training.oodd import (
    LowRankOodd,
    NegativeCalibration,
    calibrate_with_negatives,
    fit_lowrank_oodd,
    in_domain_needed,
    out_of_fold_distances,
    quantile_for,
)

log = logging.getLogger(__name__)

CODE_REF = "training.detection.train"
BATCH = 32  # images per backbone run
PARITY_ROWS = 32
MIN_COMPARED_SCORE = 1e-3
OODD_FOLDS = 3
# The Gaussian around each centre, in heatmap cells: wide enough that a centre near a cell border
# gives one confident peak, not two half-confident ones.
SIGMA_MIN = 0.6
SIGMA_PER_CELL = 0.15
# A BOUNDING_BOX detector without mode_configuration.max_num_bboxes (the cloud's default limit).
DEFAULT_MAX_BOXES_LABEL = 10
Progress = Callable[[TrainingProgress], None]
ItemLike = DetectionItem | tuple[str, bytes, Any]


@dataclass(frozen=True)
class DetectionOptions:
    """What shapes a detection head (TrainingOptions carries the splits, seed, device, threads)."""

    copies: int = 8  # augmented variants per train image, besides the image itself (at most)
    epochs: int = 30
    # The maps (train images and their variants) a job is sized for: with more train images each
    # gets fewer variants (at least one) and, past the budget, the epochs shrink (to `min_epochs`),
    # so a job's time stops growing with its labels while the labels keep adding real images.
    max_train_maps: int = 2400
    min_epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 96
    input_dropout: float = 0.2
    # Read the backbone's frozen deeper blocks too (training.detection.model.DeepContext).
    context: bool = True
    # The head answers with an exponential moving average of its weights (0: the last weights).
    ema_decay: float = 0.99
    offset_weight: float = 1.0
    size_weight: float = 1.0
    max_boxes: int = MAX_BOXES
    class_name: str = "object"
    score_threshold: float = 0.5
    match_iou: float = 0.5
    augment: AugmentOptions = field(default_factory=AugmentOptions)


@dataclass(frozen=True)
class DetectionOutcome:
    bundle_dir: Path
    metadata: PredictorMetadata
    evaluation: DetectionMetrics
    head: DetectionHead = field(repr=False)
    oodd: LowRankOodd = field(repr=False)
    data: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    engine: str = "detection"

    @property
    def version(self) -> str:
        return self.metadata.version

    def summary(self) -> dict[str, Any]:
        return {
            "detector_id": self.metadata.detector_id,
            "version": self.metadata.version,
            "engine": self.engine,
            "temperature": self.metadata.temperature,
            "evaluation": self.evaluation.as_dict(),
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
        log.info("%s: %s", stage, message)
        if self.progress is not None:
            self.progress(
                TrainingProgress(stage=stage, message=message, elapsed_s=time.perf_counter() - self.t0)
            )

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round(now - self._last, 3)
        self._last = now


# --- targets and loss -----------------------------------------------------------------------------------


def heatmap_targets(
    boxes: NDArray[np.float32], grid: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """(heat (G, G), regression (4, G, G): offset x, y and log size w, h in cells, mask (G, G)).

    Each object puts a 1 at its centre cell and a Gaussian around it (sigma grows with its size);
    the regression targets live only at centre cells.
    """
    heat = np.zeros((grid, grid), dtype=np.float32)
    reg = np.zeros((4, grid, grid), dtype=np.float32)
    mask = np.zeros((grid, grid), dtype=np.float32)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for left, top, right, bottom in np.asarray(boxes, dtype=np.float32).reshape(-1, 4):
        cx, cy = (left + right) / 2 * grid, (top + bottom) / 2 * grid
        w, h = max((right - left) * grid, 1e-3), max((bottom - top) * grid, 1e-3)
        ix, iy = min(grid - 1, max(0, int(cx))), min(grid - 1, max(0, int(cy)))
        sigma = max(SIGMA_MIN, SIGMA_PER_CELL * math.sqrt(w * h))
        blob = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma)).astype(np.float32)
        heat = np.maximum(heat, blob)
        reg[:, iy, ix] = (cx - ix, cy - iy, math.log(w), math.log(h))
        mask[iy, ix] = 1.0
    return heat, reg, mask


def detection_loss(
    raw: torch.Tensor,
    heat: torch.Tensor,
    reg: torch.Tensor,
    mask: torch.Tensor,
    offset_weight: float = 1.0,
    size_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Penalty-reduced focal loss on the heatmap (alpha 2, beta 4) and L1 at the centre cells,
    each summed and divided by the number of objects."""
    logit = raw[:, 0]
    pos = mask
    n_pos = torch.clamp(pos.sum(), min=1.0)
    p = torch.sigmoid(logit)
    log_p = torch.nn.functional.logsigmoid(logit)
    log_not_p = torch.nn.functional.logsigmoid(-logit)
    pos_loss = -(((1 - p) ** 2) * log_p * pos).sum()
    neg_loss = -(((1 - heat) ** 4) * (p**2) * log_not_p * (1 - pos)).sum()
    focal = (pos_loss + neg_loss) / n_pos
    l1 = (raw[:, 1:5] - reg).abs() * pos.unsqueeze(1)
    offset = l1[:, 0:2].sum() / n_pos
    size = l1[:, 2:4].sum() / n_pos
    total = focal + offset_weight * offset + size_weight * size
    return total, {
        "focal": float(focal.detach()),
        "offset": float(offset.detach()),
        "size": float(size.detach()),
    }


# --- data -----------------------------------------------------------------------------------------------


def copies_for(n_train: int, opts: DetectionOptions) -> int:
    """Augmented variants per train image: `copies` while the maps fit `max_train_maps`, then fewer."""
    if n_train <= 0:
        return opts.copies
    return max(min(opts.copies, 1), min(opts.copies, opts.max_train_maps // n_train - 1))


def epochs_for(n_maps: int, opts: DetectionOptions) -> int:
    """`epochs` up to `max_train_maps` maps; past it the same number of steps, but never under
    `min_epochs` passes over the data."""
    if n_maps <= opts.max_train_maps:
        return opts.epochs
    return max(min(opts.epochs, opts.min_epochs), round(opts.epochs * opts.max_train_maps / n_maps))


@dataclass
class _Maps:
    """Backbone feature maps (float16) with the boxes each copy was labelled with."""

    maps: NDArray[np.float16]
    boxes: list[NDArray[np.float32]]
    ids: list[str]
    original: NDArray[np.bool_]  # the un-augmented image of its item


def _decode(
    items: Sequence[DetectionItem], embedder: Embedder, skipped: Counter[str]
) -> list[tuple[DetectionItem, Image.Image]]:
    limits = ImageLimits()
    out = []
    for item in items:
        try:
            out.append((item, embedder.preprocessor.decode(item.image, limits)))
        except ImageError:
            skipped["undecodable"] += 1
    return out


def _feature_maps(embedder: Embedder, images: Sequence[Image.Image]) -> NDArray[np.float32]:
    """The backbone's feature maps of decoded images, preprocessed exactly as the runtime does."""
    ref = embedder.backbone.ref
    name = str(ref.feature_map_output)
    shape = tuple(ref.feature_map_shape or ())
    out = np.zeros((len(images), *shape), dtype=np.float32)
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        batch = np.concatenate([embedder.preprocessor.image_to_tensor(img) for img in chunk])
        out[start : start + len(chunk)] = embedder.runtime.run(batch, [name])[name]
    return out


def _train_maps(
    decoded: Sequence[tuple[DetectionItem, Image.Image]],
    embedder: Embedder,
    opts: DetectionOptions,
    seed: int,
    clock: _Clock,
) -> _Maps:
    """Each train image and its augmented variants (`copies_for`), through the backbone once."""
    variants: list[tuple[str, Image.Image, NDArray[np.float32], bool]] = []
    chunks: list[NDArray[np.float16]] = []
    boxes: list[NDArray[np.float32]] = []
    ids: list[str] = []
    original: list[bool] = []
    copies = copies_for(len(decoded), opts)
    total = len(decoded) * (1 + copies)

    def flush() -> None:
        if variants:
            chunks.append(_feature_maps(embedder, [v[1] for v in variants]).astype(np.float16))
            boxes.extend(v[2] for v in variants)
            ids.extend(v[0] for v in variants)
            original.extend(v[3] for v in variants)
            variants.clear()

    for item, image in decoded:
        rng = np.random.default_rng(
            [seed, int.from_bytes(hashlib.sha256(item.id.encode()).digest()[:4], "big")]
        )
        variants.append((item.id, image, item.boxes, True))
        for _ in range(copies):
            img, b = augment(image, item.boxes, rng, opts.augment)
            variants.append((item.id, img, b, False))
        if len(variants) >= 4 * BATCH:
            flush()
            clock.report("prepare", f"feature maps of {len(ids)}/{total} training images and variants")
    flush()
    shape = tuple(embedder.backbone.ref.feature_map_shape or ())
    maps = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.float16)
    return _Maps(maps=maps, boxes=boxes, ids=ids, original=np.asarray(original, dtype=bool))


def _deep_maps(net: CentreNet, maps: NDArray[np.float16], device: str) -> torch.Tensor | None:
    """The frozen context of every cached map, once (float16, like the maps)."""
    if net.context is None:
        return None
    out = []
    for start in range(0, maps.shape[0], 128):
        x = torch.from_numpy(maps[start : start + 128]).to(device=device, dtype=torch.float32)
        deep = net.deep(x)
        assert deep is not None
        out.append(deep.to("cpu", torch.float16))
    return torch.cat(out)


def _cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). oneDNN also runs bfloat16
    on plain AVX-512 by emulation, where a step takes about twice as long as in float32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = {word for line in info if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _autocast_dtype(device: str, amp: bool) -> torch.dtype | None:
    """bfloat16 where the hardware computes it natively (about twice as fast on such CPUs), else None."""
    if not amp:
        return None
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else None


def _stacked_targets(
    boxes: Sequence[NDArray[np.float32]], grid: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heat, reg, mask) of every cached map, built once: the epochs only index them."""
    targets = [heatmap_targets(b, grid) for b in boxes]
    heat = torch.from_numpy(np.stack([t[0] for t in targets]))
    reg = torch.from_numpy(np.stack([t[1] for t in targets]))
    mask = torch.from_numpy(np.stack([t[2] for t in targets]))
    return heat, reg, mask


def _weight_average(
    net: CentreNet, ema_decay: float, total: int
) -> torch.optim.swa_utils.AveragedModel | None:
    """The moving average the head answers with; None when the job is too short to average."""
    # The average spans about the last tenth of the steps: a small job (tens of steps) must not
    # answer with weights that are mostly those of its first steps.
    decay = min(ema_decay, 1.0 - 10.0 / total) if total > 10 else 0.0
    return (
        torch.optim.swa_utils.AveragedModel(
            net,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
        if decay > 0
        else None
    )


def _warmup_cosine(
    optimiser: torch.optim.Optimizer, steps_per_epoch: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over the first epoch, then cosine to zero: AdamW on a fresh head needs both."""
    warmup = max(1, steps_per_epoch)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, rate)


def _fit(
    maps: _Maps,
    opts: DetectionOptions,
    seed: int,
    device: str,
    clock: _Clock,
    amp: bool = True,
) -> tuple[CentreNet, dict[str, float]]:
    """The head on cached maps: all targets built once, shuffled mini-batches, cosine learning rate,
    mixed precision where the hardware has it (the loss and the weights stay float32)."""
    torch.manual_seed(seed)
    context = DeepContext() if opts.context else None
    net = CentreNet(maps.maps.shape[1], opts.width, input_dropout=opts.input_dropout, context=context)
    net = net.to(device)
    deep_all = _deep_maps(net, maps.maps, device)
    grid = maps.maps.shape[2] * net.upsample
    heat, reg, mask = _stacked_targets(maps.boxes, grid)
    x_all = torch.from_numpy(maps.maps)
    n = x_all.shape[0]
    steps_per_epoch = max(1, math.ceil(n / opts.batch_size))
    epochs = epochs_for(n, opts)
    total = epochs * steps_per_epoch
    ema = _weight_average(net, opts.ema_decay, total)
    optimiser = torch.optim.AdamW(net.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay)
    schedule = _warmup_cosine(optimiser, steps_per_epoch, total)
    generator = torch.Generator().manual_seed(seed)
    cast = _autocast_dtype(device, amp)
    parts: dict[str, float] = {}
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        sums: Counter[str] = Counter()
        for start in range(0, n, opts.batch_size):
            idx = order[start : start + opts.batch_size]
            if idx.numel() < 2:  # batch norm needs two samples
                continue
            xb = x_all[idx].to(device=device, dtype=torch.float32)
            db = None if deep_all is None else deep_all[idx].to(device=device, dtype=torch.float32)
            with torch.autocast(device, dtype=cast or torch.float32, enabled=cast is not None):
                raw = net(xb, db)
            loss, parts = detection_loss(
                raw.float(),
                heat[idx].to(device),
                reg[idx].to(device),
                mask[idx].to(device),
                opts.offset_weight,
                opts.size_weight,
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(net)
            sums.update({k: v * idx.numel() for k, v in parts.items()})
        parts = {k: v / n for k, v in sums.items()}
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            clock.report(
                "train",
                f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()),
            )
    if ema is not None:
        averaged = ema.module
        assert isinstance(averaged, CentreNet)
        net = averaged
    net.eval()
    return net.cpu(), {k: round(v, 4) for k, v in parts.items()}


# --- calibration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadAnswers:
    """A batch of maps through the head (numpy): what head.onnx answers, and the peaks' raw logits."""

    logits: NDArray[np.float32]
    features: NDArray[np.float32]
    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    peak_logits: NDArray[np.float32]
    peaks: NDArray[np.bool_]


def head_answers(head: DetectionHead, maps: NDArray[np.floating], batch: int = 128) -> HeadAnswers:
    parts: list[list[NDArray[np.float32]]] = [[] for _ in range(6)]
    head.eval()
    with torch.no_grad():
        for start in range(0, maps.shape[0], batch):
            x = torch.from_numpy(np.asarray(maps[start : start + batch], dtype=np.float32))
            logits, features, boxes, scores = head(x)
            _, z, keep = head.decode(head.net(x))
            for bucket, value in zip(parts, (logits, features, boxes, scores, z, keep), strict=True):
                bucket.append(value.numpy().astype(np.float32))
    cat = [np.concatenate(p) for p in parts]
    return HeadAnswers(cat[0], cat[1], cat[2], cat[3], cat[4], cat[5] > 0.5)


def fit_platt(
    logits: NDArray[np.floating], positive: NDArray[np.bool_], l2: float = 1e-3
) -> tuple[float, float]:
    """(a, b) of sigmoid(a·z + b) by Newton's method on the log-loss (a tiny ridge keeps it finite
    when the classes separate perfectly)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=np.float64).reshape(-1)
    if z.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -40, 40)))
        grad = x.T @ (p - y) / z.size + l2 * np.array([w[0] - 1.0, 0.0])
        hess = (x * (p * (1 - p))[:, None]).T @ x / z.size + l2 * np.diag([1.0, 1e-6])
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.abs(step).max()) < 1e-9:
            break
    return float(max(w[0], 1e-3)), float(w[1])


def peak_matches(
    answers: HeadAnswers, truths: Sequence[NDArray[np.float32]], iou: float
) -> NDArray[np.bool_]:
    """(N, K): which peaks match a true box (greedy, best first), the positives of calibration."""
    out = np.zeros(answers.peaks.shape, dtype=bool)
    for i, truth in enumerate(truths):
        keep = answers.peaks[i]
        hit = match_detections(answers.boxes[i][keep], answers.peak_logits[i][keep], truth, iou)
        out[i, np.flatnonzero(keep)] = hit
    return out


def detections_of(answers: HeadAnswers) -> list[ImageDetections]:
    return [ImageDetections(answers.boxes[i], answers.scores[i]) for i in range(answers.boxes.shape[0])]


# --- export and the runtime check -----------------------------------------------------------------------


def export_head(head: DetectionHead, maps: NDArray[np.float32], temperature: float) -> bytes:
    """head.onnx, checked against torch on `maps`: probabilities and scores within 1e-4, boxes
    within a pixel."""
    x = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    data = _export(head.eval(), x[:1], "feature_map", ["logits", "features", "boxes", "scores"])
    got = _session(data).run(["logits", "features", "boxes", "scores"], {"feature_map": x.numpy()})
    want = head_answers(head, x.numpy())
    check_parity(
        (want.logits, want.features, want.boxes, want.scores),
        (got[0], got[1], got[2], got[3]),
        temperature,
        "head.onnx",
    )
    return data


def box_differences(
    boxes_w: NDArray[np.floating],
    scores_w: NDArray[np.floating],
    boxes_g: NDArray[np.floating],
    scores_g: NDArray[np.floating],
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """The largest box difference (N, K, 4) between two answers, where boxes whose scores are equal
    within `tolerance` may come in either order (two runtimes rank near-ties differently). Boxes
    scored under MIN_COMPARED_SCORE by both are not compared: on plateaus of near-equal logits two
    runtimes may pick different cells as the peak, and such boxes never reach an answer."""
    bw, bg = np.asarray(boxes_w, np.float64), np.asarray(boxes_g, np.float64)
    sw, sg = np.asarray(scores_w, np.float64), np.asarray(scores_g, np.float64)
    diff = np.abs(bw - bg).max(axis=2) * (np.maximum(sw, sg) >= MIN_COMPARED_SCORE)
    worst = 0.0
    for r, k in zip(*np.nonzero(diff > box_pixels_tolerance()), strict=True):
        tied = np.flatnonzero(np.abs(sw[r] - sg[r, k]) <= tolerance)
        worst = max(worst, float(np.abs(bw[r, tied] - bg[r, k]).max(axis=1).min()) if tied.size else np.inf)
    return max(worst, float(np.where(diff > box_pixels_tolerance(), 0.0, diff).max(initial=0.0)))


def check_parity(
    want: tuple[NDArray[np.floating], ...], got: Sequence[NDArray[np.floating]], temperature: float, what: str
) -> None:
    logits_w, feats_w, boxes_w, scores_w = want
    logits_g, feats_g, boxes_g, scores_g = (np.asarray(g) for g in got)
    p_diff = float(np.max(np.abs(softmax(logits_w, temperature) - softmax(logits_g, temperature))))
    s_diff = float(np.max(np.abs(np.asarray(scores_w, np.float64) - scores_g)))
    b_diff = box_differences(boxes_w, scores_w, boxes_g, scores_g)
    f_diff = float(np.max(np.abs(np.asarray(feats_w, np.float64) - feats_g)))
    if not (p_diff <= PARITY_TOLERANCE and s_diff <= PARITY_TOLERANCE and b_diff <= box_pixels_tolerance()):
        raise ExportMismatchError(
            f"{what} differs from torch: probabilities {p_diff:.3g}, scores {s_diff:.3g}, boxes {b_diff:.3g}"
        )
    if not f_diff <= 1e-3 * max(1.0, float(np.abs(feats_w).max())):
        raise ExportMismatchError(f"{what} features differ from torch by {f_diff:.3g}")


def export_oodd(oodd: LowRankOodd, features: NDArray[np.float32]) -> bytes:
    module = oodd.to_module().eval()
    data = _export(module, torch.from_numpy(features[:1]), "features", ["in_domain"])
    (q,) = _session(data).run(["in_domain"], {"features": features})
    diff = float(np.max(np.abs(q - oodd.in_domain(features))))
    if not diff <= 1e-3:
        raise ExportMismatchError(f"oodd.onnx and numpy in-domain scores differ by {diff:.3g}")
    return data


def _check_in_runtime(
    bundle_dir: Path,
    store: BackboneStore,
    maps: NDArray[np.float32],
    want: HeadAnswers,
    images: Sequence[bytes],
    temperature: float,
) -> None:
    """Load the bundle as an edge does and compare: the head on the same maps, and whole predictions
    from image bytes (count and boxes as the torch head answers them)."""
    pool = BackbonePool(["CPUExecutionProvider"])
    runtime = ModelRuntime(bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=pool)
    try:
        runtime.warmup()
        out = runtime.run_head_full({runtime.backbone_outputs[0]: maps})
        assert out.boxes is not None and out.scores is not None
        p_diff = float(np.max(np.abs(out.probs - softmax(want.logits[: len(maps)], temperature))))
        b_diff = box_differences(want.boxes[: len(maps)], want.scores[: len(maps)], out.boxes, out.scores)
        s_diff = float(np.max(np.abs(out.scores - want.scores[: len(maps)])))
        if not (
            p_diff <= PARITY_TOLERANCE and s_diff <= PARITY_TOLERANCE and b_diff <= box_pixels_tolerance()
        ):
            raise ExportMismatchError(
                f"{bundle_dir}: the runtime's head differs from torch's: p {p_diff:.3g}, "
                f"scores {s_diff:.3g}, boxes {b_diff:.3g}"
            )
        limits = ImageLimits()
        for i, data in enumerate(images):
            pred = runtime.predict(data, limits)
            probs = softmax(want.logits[i : i + 1], temperature)[0]
            count = int(np.argmax(probs))
            top = np.sort(want.scores[i])[::-1][:count]
            if pred.boxes is None or pred.label_index != count or len(pred.boxes) < count:
                raise ExportMismatchError(
                    f"{bundle_dir}: the runtime counts {pred.label_index} on held-out image {i}, torch {count}"
                )
            got = np.asarray([b.score for b in pred.boxes[:count]], dtype=np.float64)
            if got.size and float(np.max(np.abs(got - top))) > PARITY_TOLERANCE:
                raise ExportMismatchError(f"{bundle_dir}: the runtime's boxes on held-out image {i} differ")
    finally:
        runtime.close()


# --- the job --------------------------------------------------------------------------------------------


def _split_of(item_id: str, options: TrainingOptions) -> str:
    return item_split(item_id, options.val_fraction, options.test_fraction)


def _fold_of(item_id: str, folds: int) -> int:
    return int.from_bytes(hashlib.sha256(f"fold:{item_id}".encode()).digest()[:4], "big") % folds


@dataclass(frozen=True)
class _Calibrated:
    """The Platt parameters of the box scores, the held-out answers after them, the count temperature."""

    a: float
    b: float
    answers: HeadAnswers
    temperature: float


@dataclass(frozen=True)
class _FittedOodd:
    oodd: LowRankOodd
    quantile: float
    tightened: NegativeCalibration | None


def _check_job(bundle_dir: Path, spec: DetectorSpec, labels: list[str], embedder: Embedder) -> None:
    """Refuse a job that could not produce a loadable bundle before spending any time on it."""
    if bundle_dir.exists() and any(bundle_dir.iterdir()):
        raise TrainingError(f"{bundle_dir} already holds files; choose another --out")
    if spec.mode not in BOX_MODES:
        raise TrainingError(f"a detection head answers COUNT or BOUNDING_BOX, not {spec.mode.value}")
    if labels != [str(i) for i in range(len(labels))] or len(labels) < 2:
        raise TrainingError(f"a {spec.mode.value} detector's labels are 0..max_count, not {labels}")
    ref = embedder.backbone.ref
    if not ref.feature_map_output or not ref.feature_map_shape:
        raise TrainingError(f"backbone {ref.id} has no feature map for a detection head")


def _torch_device(options: TrainingOptions) -> str:
    """Threads and device as asked; asking for CUDA without one is an error, not a silent CPU run."""
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for, but torch sees no CUDA device")
    return "cuda" if options.device != "cpu" and torch.cuda.is_available() else "cpu"


_Decoded = list[tuple[DetectionItem, Image.Image]]


def _train_and_held(decoded: _Decoded, options: TrainingOptions) -> tuple[_Decoded, _Decoded]:
    """By each item's hash split: calibration and the metrics need images the head never saw."""
    train = [(it, img) for it, img in decoded if _split_of(it.id, options) == "train"]
    held = [(it, img) for it, img in decoded if _split_of(it.id, options) != "train"]
    if len(train) < 2 or not held:
        raise TrainingError(
            f"a detection head needs train and held-out images; the split gave {len(train)} and {len(held)}"
        )
    return train, held


def _calibrate(
    head: DetectionHead,
    held_maps: NDArray[np.float32],
    held_truth: list[NDArray[np.float32]],
    held_counts: NDArray[np.int64],
    opts: DetectionOptions,
) -> _Calibrated:
    """Box scores that mean P(a true box) (Platt), then one temperature that makes the counts honest."""
    raw = head_answers(head, held_maps)
    positive = peak_matches(raw, held_truth, opts.match_iou)
    a, b = fit_platt(raw.peak_logits[raw.peaks], positive[raw.peaks])
    head.set_platt(a, b)
    answers = head_answers(head, held_maps)
    temperature = fit_temperature(
        answers.logits.astype(np.float64), held_counts, (math.log(0.25), math.log(8.0))
    )
    return _Calibrated(a, b, answers, temperature)


def _negative_features(
    head: DetectionHead, embedder: Embedder, negatives: Sequence[bytes], skip: Counter[str]
) -> NDArray[np.float32] | None:
    """Features of the UNCLEAR images that decode (counted in `skip` when not); None when none do."""
    neg_decoded = []
    for data in negatives:
        try:
            neg_decoded.append(embedder.preprocessor.decode(data, ImageLimits()))
        except ImageError:
            skip["undecodable_negatives"] += 1
    if not neg_decoded:
        return None
    return head_answers(head, _feature_maps(embedder, neg_decoded)).features


def _fit_oodd(
    head: DetectionHead,
    cached: _Maps,
    held: _Decoded,
    answers: HeadAnswers,
    need: float | None,
    negatives: Sequence[bytes],
    embedder: Embedder,
    options: TrainingOptions,
    skip: Counter[str],
) -> _FittedOodd:
    """One Gaussian over the (un-augmented) labelled images' channel statistics, calibrated out of
    fold, then tightened so that reviewers' UNCLEAR images fall below the bar."""
    originals = np.flatnonzero(cached.original)
    train_features = head_answers(head, cached.maps[originals]).features
    features = np.concatenate([train_features, answers.features])
    ids = [cached.ids[i] for i in originals] + [it.id for it, _ in held]
    folds = np.asarray([_fold_of(i, OODD_FOLDS) for i in ids], dtype=np.int64)
    zeros = np.zeros(len(ids), dtype=np.int64)
    oof = out_of_fold_distances(features, zeros, folds, 1, options.oodd_rank)
    quantile = quantile_for(len(ids))
    oodd = fit_lowrank_oodd(features, zeros, oof, 1, options.oodd_rank, quantile=quantile)
    tightened = None
    if negatives and need is not None:
        neg_features = _negative_features(head, embedder, negatives, skip)
        if neg_features is not None:
            tightened = calibrate_with_negatives(oof, oodd.distances(neg_features), need, quantile=quantile)
            if tightened is not None:
                oodd = dataclasses.replace(oodd, threshold=tightened.threshold, scale=tightened.scale)
    return _FittedOodd(oodd, quantile, tightened)


def _detection_metrics(
    evaluation: DetectionMetrics,
    calibrated: _Calibrated,
    fitted: _FittedOodd,
    held_counts: NDArray[np.int64],
    threshold: float,
    n_labels: int,
    losses: dict[str, float],
    n_negatives: int,
) -> dict[str, Any]:
    """The bundle's metrics: box figures, and what the count answers would do at the threshold."""
    answers, temperature, oodd, tightened = (
        calibrated.answers,
        calibrated.temperature,
        fitted.oodd,
        fitted.tightened,
    )
    probs = softmax(answers.logits, temperature)
    q = oodd.in_domain(answers.features)
    confidence = np.asarray(
        [final_confidence(float(p.max()), float(qq), n_labels) for p, qq in zip(probs, q, strict=True)]
    )
    correct = probs.argmax(axis=1) == held_counts
    confident = confidence >= threshold
    return {
        "engine": "detection",
        **evaluation.as_dict(),
        "evaluation": "held-out (also where the box scores and the count temperature were calibrated)",
        "count_ece": round(expected_calibration_error(probs, held_counts), 4),
        "count_nll": round(negative_log_likelihood(answers.logits, held_counts, temperature), 4),
        "threshold": threshold,
        "escalation_rate": round(float(1.0 - confident.mean()), 4),
        "confident_count_accuracy": round(float(correct[confident].mean()), 4) if confident.any() else None,
        "platt": {"scale": round(calibrated.a, 6), "bias": round(calibrated.b, 6)},
        "train_loss": losses,
        "oodd": {
            "rank": int(oodd.components.shape[0]),
            "shrinkage": oodd.shrinkage,
            "quantile": fitted.quantile,
            "unclear_examples": n_negatives,
            "tightened_by_unclear": tightened.as_dict() if tightened is not None else None,
        },
    }


def _detection_version(
    embedder: Embedder,
    spec: DetectorSpec,
    calibrated: _Calibrated,
    oodd: LowRankOodd,
    opts: DetectionOptions,
    head_onnx: bytes,
    oodd_onnx: bytes,
) -> str:
    """The answers, the backbone, the box decoding and the moment: each job is a version of its own."""
    key = (
        behaviour_key(embedder.backbone.pipeline, spec, calibrated.temperature, oodd.calibration())
        + embedder.backbone.ref.sha256.encode()
        + repr((calibrated.a, calibrated.b, opts.max_boxes, opts.score_threshold)).encode()
        + str(time.time_ns()).encode()
    )
    return version_id(head_onnx, oodd_onnx, key)


def _detection_data_info(
    checked: list[DetectionItem],
    decoded: _Decoded,
    train: _Decoded,
    held: _Decoded,
    cached: _Maps,
    skip: Counter[str],
    labels: list[str],
    max_count: int,
    opts: DetectionOptions,
) -> dict[str, Any]:
    """What the job learnt from, for the bundle's lineage and the job's summary."""
    counts = Counter(min(it.count, max_count) for it, _ in decoded)
    return {
        "items": len(checked) + sum(skip.values()),
        "used": len(decoded),
        "skipped": dict(skip),
        "per_label": {label: counts.get(int(label), 0) for label in labels},
        "n_train": len(train),
        "n_heldout": len(held),
        "train_maps": int(cached.maps.shape[0]),
        "copies_per_image": copies_for(len(train), opts),
        "epochs": epochs_for(int(cached.maps.shape[0]), opts),
        "objects": int(sum(it.count for it, _ in decoded)),
    }


def _detection_lineage(
    options: TrainingOptions,
    opts: DetectionOptions,
    embedder: Embedder,
    data_info: dict[str, Any],
    device: str,
    label_snapshot: dict[str, Any] | None,
) -> dict[str, Any]:
    """Where the version came from: enough to reproduce it and to trace it back to its labels."""
    ref = embedder.backbone.ref
    lineage: dict[str, Any] = {
        "code": CODE_REF,
        "code_version": code_version(),
        "training_config": options.model_dump(mode="json"),
        "detection_config": dataclasses.asdict(opts),
        "backbone": {"id": ref.id, "sha256": ref.sha256, "weights_sha256": ref.weights_sha256},
        "data": data_info,
        "seed": options.seed,
        "torch": torch.__version__,
        "device": device,
    }
    if label_snapshot is not None:
        lineage["label_snapshot"] = label_snapshot
    return lineage


def _write_checked_bundle(
    bundle_dir: Path,
    head_onnx: bytes,
    oodd_onnx: bytes,
    embedder: Embedder,
    metadata: PredictorMetadata,
    store: BackboneStore,
    held_maps: NDArray[np.float32],
    held: _Decoded,
    calibrated: _Calibrated,
) -> None:
    """Write the bundle and load it back as an edge would; a bundle that fails is never left behind."""
    try:
        write_split_bundle(bundle_dir, head_onnx, oodd_onnx, embedder.backbone.pipeline, metadata)
        rows = min(PARITY_ROWS, len(held))
        _check_in_runtime(
            bundle_dir,
            store,
            held_maps[:rows],
            calibrated.answers,
            [it.image for it, _ in held[: min(8, rows)]],
            calibrated.temperature,
        )
    except BaseException:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        raise


def train_detection(
    items: Iterable[ItemLike],
    spec: DetectorSpec,
    out_dir: Path,
    options: TrainingOptions,
    embedder: Embedder,
    detection: DetectionOptions | None = None,
    progress: Progress | None = None,
    negatives: Sequence[bytes] = (),
    label_snapshot: dict[str, Any] | None = None,
    skipped: dict[str, int] | None = None,
) -> DetectionOutcome:
    """See the module docstring. `spec.mode` is COUNT or BOUNDING_BOX and its labels "0".."max_count";
    `negatives` are images reviewers marked UNCLEAR (they tighten the OODD). `out_dir/bundle` must not
    hold files yet."""
    clock = _Clock(progress)
    opts = detection or DetectionOptions()
    bundle_dir = out_dir / BUNDLE_DIR
    labels = list(spec.labels)
    _check_job(bundle_dir, spec, labels, embedder)
    max_count = len(labels) - 1
    ref = embedder.backbone.ref
    device = _torch_device(options)
    skip: Counter[str] = Counter(skipped or {})
    checked = as_detection_items(items)
    decoded = _decode(checked, embedder, skip)
    train, held = _train_and_held(decoded, options)
    clock.report("prepare", f"{len(decoded)} labelled images: {len(train)} to train on, {len(held)} held out")
    cached = _train_maps(train, embedder, opts, options.seed, clock)
    held_maps = _feature_maps(embedder, [img for _, img in held])
    clock.lap("feature_maps")

    clock.report("train", f"fitting the head on {cached.maps.shape[0]} maps ({device})")
    net, losses = _fit(cached, opts, options.seed, device, clock, options.amp)
    clock.lap("fit_head")

    head = DetectionHead(net, max_count, opts.max_boxes)
    held_truth = [it.boxes for it, _ in held]
    held_counts = np.asarray([min(it.count, max_count) for it, _ in held], dtype=np.int64)
    calibrated = _calibrate(head, held_maps, held_truth, held_counts, opts)
    answers, temperature = calibrated.answers, calibrated.temperature
    clock.report(
        "calibrate",
        f"Platt a={calibrated.a:.3f} b={calibrated.b:.3f}; count temperature {temperature:.3f}; OODD",
    )
    threshold = options.confidence_threshold or spec.default_confidence_threshold
    need = in_domain_needed(threshold, len(labels))
    fitted = _fit_oodd(head, cached, held, answers, need, negatives, embedder, options, skip)
    oodd = fitted.oodd
    clock.lap("calibrate")

    # Held-out figures (the calibration split: two Platt parameters and one temperature were fitted there).
    evaluation = evaluate_detections(
        detections_of(answers), held_truth, np.argmax(answers.logits, axis=1), max_count=max_count
    )
    metrics = _detection_metrics(
        evaluation, calibrated, fitted, held_counts, threshold, len(labels), losses, len(negatives)
    )

    head_onnx = export_head(head, held_maps[:PARITY_ROWS], temperature)
    oodd_onnx = export_oodd(oodd, answers.features)
    clock.lap("export")
    version = _detection_version(embedder, spec, calibrated, oodd, opts, head_onnx, oodd_onnx)
    data_info = _detection_data_info(checked, decoded, train, held, cached, skip, labels, max_count, opts)
    metrics["timings_s"] = clock.marks
    lineage = _detection_lineage(options, opts, embedder, data_info, device, label_snapshot)
    metadata = PredictorMetadata(
        detector_id=spec.detector_id,
        version=version,
        detector_name=spec.detector_name,
        query=spec.query,
        mode=spec.mode,
        labels=labels,
        temperature=temperature,
        default_confidence_threshold=spec.default_confidence_threshold,
        oodd=oodd.calibration(),
        metrics=metrics,
        lineage=lineage,
        created_at=utc_now_iso(),
        backbone=ref,
        head_input="feature_map",
        detection=DetectionSpec(
            class_name=opts.class_name, max_boxes=opts.max_boxes, score_threshold=opts.score_threshold
        ),
    )
    clock.report("write", f"bundle {version} into {bundle_dir}")
    store = BackboneStore(out_dir / "backbones")
    store.install_file(embedder.backbone.path, ref)
    _write_checked_bundle(
        bundle_dir, head_onnx, oodd_onnx, embedder, metadata, store, held_maps, held, calibrated
    )
    clock.lap("write")
    wall = time.perf_counter() - clock.t0
    clock.report("done", f"{version} in {wall:.1f}s")
    return DetectionOutcome(
        bundle_dir=bundle_dir,
        metadata=metadata,
        evaluation=evaluation,
        head=head,
        oodd=oodd,
        data=data_info,
        timings_s=dict(clock.marks),
        wall_s=wall,
    )


def detection_spec(export: DatasetExport) -> tuple[DetectorSpec, str]:
    """The detector as a detection bundle describes it, and its class name: a BOUNDING_BOX
    detector's answers (NO_OBJECTS, BOUNDING_BOX, GREATER_THAN_MAX) become the count buckets
    "0".."max_num_bboxes" its head answers."""
    spec = detector_spec(export)
    config = export.detector.mode_configuration or {}
    class_name = str(config.get("class_name") or "object")
    if spec.mode is DetectorMode.BOUNDING_BOX:
        limit = config.get("max_num_bboxes", DEFAULT_MAX_BOXES_LABEL)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TrainingError(f"mode_configuration.max_num_bboxes {limit!r} is not a positive integer")
        spec = dataclasses.replace(spec, labels=tuple(str(i) for i in range(limit + 1)))
    return spec, class_name


def train_detection_from_export(
    export: DatasetExport,
    out_dir: Path,
    options: TrainingOptions,
    embedder: Embedder,
    detection: DetectionOptions | None = None,
    progress: Progress | None = None,
) -> DetectionOutcome:
    """A detection job from a dataset export: items whose `rois` cover their objects train the head
    (training.detection.items says which do); UNCLEAR items tighten the OODD."""
    spec, class_name = detection_spec(export)
    opts = dataclasses.replace(detection or DetectionOptions(), class_name=class_name)
    items, skipped = items_from_export(export, len(spec.labels) - 1)
    negatives = [export.image_bytes(i) for i in export.unclear_items() if export.has_image(i)]
    return train_detection(
        items,
        spec,
        out_dir,
        options,
        embedder,
        opts,
        progress,
        negatives=negatives,
        label_snapshot=export.label_snapshot().as_dict(),
        skipped=skipped,
    )
