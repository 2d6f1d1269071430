"""The detection job: targets and loss, box-preserving augmentation, score calibration, boxes from an
export's rois, and (slow) a small job end to end whose bundle the edge runtime loads and answers with."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.backbone import BackboneStore
from common.bundle import DetectorMode, verify_bundle
from common.imaging import ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from common.wire.device_api import Roi
from training.dataset_export import ExportDetector, ExportSample, read_export, write_export
from training.detection.augment import MIN_KEPT, AugmentOptions, _crop_window, augment, crop_boxes
from training.detection.items import as_detection_items, items_from_export
from training.detection.judging import judge_detection
from training.detection.synthetic import generate
from training.detection.train import (
    DetectionOptions,
    _autocast_dtype,
    copies_for,
    detection_loss,
    detection_spec,
    epochs_for,
    fit_platt,
    heatmap_targets,
    train_detection_from_export,
)
from training.from_export import TrainingError, TrainingOptions

COUNT_ID = "det_DetectionCountTest000000000"
BOX_ID = "det_DetectionBoxTest00000000000"


def test_heatmap_targets_mark_centres_and_sizes() -> None:
    box = np.array([[0.25, 0.5, 0.5, 0.625]], dtype=np.float32)  # centre (0.375, 0.5625) of a 28 grid
    heat, reg, mask = heatmap_targets(box, 28)
    cx, cy = 0.375 * 28, 0.5625 * 28  # 10.5, 15.75
    assert mask.sum() == 1 and mask[15, 10] == 1
    assert heat[15, 10] == 1.0 and heat.max() == 1.0 and (heat == 1.0).sum() == 1
    assert heat[15, 11] < 1.0 and heat[15, 11] > heat[15, 13]  # falls off around the centre
    np.testing.assert_allclose(reg[:, 15, 10], [cx - 10, cy - 15, math.log(7.0), math.log(3.5)], rtol=1e-6)
    empty_heat, _, empty_mask = heatmap_targets(np.zeros((0, 4), np.float32), 28)
    assert empty_heat.max() == 0 and empty_mask.sum() == 0


def test_loss_rewards_the_right_answer() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.25], [0.6, 0.5, 0.9, 0.9]], dtype=np.float32)
    heat, reg, mask = (torch.from_numpy(t)[None] for t in heatmap_targets(boxes, 28))
    right = torch.zeros(1, 5, 28, 28)
    right[:, 0] = torch.where(mask > 0, 8.0, -8.0)
    right[:, 1:] = reg
    wrong = right.clone()
    wrong[:, 0] = -right[:, 0]
    good, parts = detection_loss(right, heat, reg, mask)
    bad, _ = detection_loss(wrong, heat, reg, mask)
    assert parts["offset"] == 0.0 and parts["size"] == 0.0
    assert float(good) < 0.01 < 1.0 < float(bad)
    shifted = right.clone()
    shifted[:, 3:5] += 0.5
    assert detection_loss(shifted, heat, reg, mask)[1]["size"] == pytest.approx(1.0)  # 2 * 0.5 per object


def test_a_jobs_maps_and_steps_stop_growing_with_its_labels() -> None:
    opts = DetectionOptions(copies=8, epochs=30, max_train_maps=2400, min_epochs=10)
    assert copies_for(200, opts) == 8  # 1800 maps: every image gets all its variants
    assert copies_for(771, opts) == 2 and copies_for(2000, opts) == 1  # never fewer than one
    assert copies_for(500, DetectionOptions(copies=0)) == 0
    assert epochs_for(2400, opts) == 30
    assert epochs_for(4800, opts) == 15  # the same number of steps over twice the maps
    assert epochs_for(48_000, opts) == 10  # but at least min_epochs passes
    for n_train in (50, 300, 771, 1200):
        n_maps = n_train * (1 + copies_for(n_train, opts))
        assert n_maps * epochs_for(n_maps, opts) <= 2 * 2400 * 30


def test_bfloat16_only_where_the_cpu_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.detection import train

    monkeypatch.setattr(train, "_cpu_has_bf16", lambda: False)
    assert _autocast_dtype("cpu", amp=True) is None  # emulated bfloat16 is slower than float32
    monkeypatch.setattr(train, "_cpu_has_bf16", lambda: True)
    assert _autocast_dtype("cpu", amp=True) is torch.bfloat16
    assert _autocast_dtype("cpu", amp=False) is None


def test_platt_scaling_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=40_000)
    y = rng.random(z.size) < 1 / (1 + np.exp(-(1.5 * z - 0.5)))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(1.5, abs=0.06) and b == pytest.approx(-0.5, abs=0.06)
    assert fit_platt(z, np.zeros(z.size, dtype=bool)) == (1.0, 0.0)  # nothing to learn from one class


def _white_boxes(boxes: np.ndarray, size: tuple[int, int] = (200, 160)) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    for left, top, right, bottom in boxes:
        arr[
            round(top * size[1]) : round(bottom * size[1]), round(left * size[0]) : round(right * size[0])
        ] = 255
    return Image.fromarray(arr)


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.55, 0.6, 0.8, 0.95], [0.7, 0.05, 0.95, 0.3]], np.float32)
    image = _white_boxes(boxes)
    opts = AugmentOptions(
        vflip=True,
        crop_probability=1.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        colour_cast=0.0,
        blur_probability=0.0,
    )
    moved = 0
    for seed in range(25):
        out, got = augment(image, boxes, np.random.default_rng(seed), opts)
        assert out.size == image.size and got.shape[1] == 4
        arr = np.asarray(out.convert("L"), np.float32) / 255
        w, h = out.size
        covered = np.zeros(arr.shape, bool)
        for left, top, right, bottom in got:
            # Shrunk by 2 px against resampling at the edges: inside every box is white.
            inner = arr[int(top * h) + 2 : int(bottom * h) - 2, int(left * w) + 2 : int(right * w) - 2]
            assert inner.size == 0 or inner.mean() > 0.97
            covered[int(top * h) : math.ceil(bottom * h), int(left * w) : math.ceil(right * w)] = True
        outside = arr[~np.asarray(Image.fromarray(covered).resize(out.size), bool)]
        assert outside.mean() < 0.02  # and nothing white is left unlabelled
        moved += not np.allclose(got, boxes)
    assert moved >= 20


def test_a_crop_never_cuts_an_object_by_more_than_the_label_rule() -> None:
    rng = np.random.default_rng(1)
    boxes = np.array([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6], [0.8, 0.7, 1.0, 1.0]], np.float32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    windows = 0
    for _ in range(200):
        window = _crop_window(rng, boxes, AugmentOptions())
        if window is None:
            continue
        windows += 1
        left, top, right, bottom = window
        iw = np.clip(np.minimum(boxes[:, 2], right) - np.maximum(boxes[:, 0], left), 0, None)
        ih = np.clip(np.minimum(boxes[:, 3], bottom) - np.maximum(boxes[:, 1], top), 0, None)
        kept = iw * ih / areas
        assert np.all((kept >= MIN_KEPT - 1e-6) | (kept == 0))
        # The zoom: 60 % of the side at least, the aspect changed by at most exp(0.15).
        assert min(right - left, bottom - top) >= 0.6 * math.exp(-0.15) - 1e-6
        assert max(right - left, bottom - top) <= 1.0
    assert windows >= 100
    window = (0.1, 0.1, 0.9, 0.9)
    cropped = crop_boxes(boxes, window)
    assert cropped.shape == (3, 4)
    np.testing.assert_allclose(cropped[1], [0.375, 0.375, 0.625, 0.625], atol=1e-6)
    kept = (cropped[:, 2] - cropped[:, 0]) * (cropped[:, 3] - cropped[:, 1]) * 0.64 / areas
    assert kept[1] == pytest.approx(1.0) and kept[0] < MIN_KEPT  # the rule would refuse this window


def _roi(box: np.ndarray) -> Roi:
    return Roi.from_box("coin", 1.0, *(float(v) for v in box))


def _export(tmp_path: Path, samples: list, detector: ExportDetector, label_of) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{detector.id}.tar.gz"
    write_export(
        path,
        detector,
        [
            ExportSample(
                image_query_id=f"iq_{i:04d}",
                label=label_of(s),
                image=s.jpeg(),
                rois=[_roi(b) for b in s.boxes] or None,
            )
            for i, s in enumerate(samples)
        ],
    )
    return path


def test_boxes_come_from_an_exports_rois(tmp_path: Path) -> None:
    samples = generate(6, seed=21, max_count=3)
    detector = ExportDetector(
        id=COUNT_ID,
        name="coins",
        mode="COUNT",
        labels=["0", "1", "2", "3"],
        mode_configuration={"max_count": 3, "class_name": "coin"},
    )
    # Item 0 claims one more coin than it has boxes for: it cannot teach where they all are.
    export = read_export(
        _export(tmp_path, samples, detector, lambda s: str(s.count + (1 if s is samples[0] else 0)))
    )
    items, skipped = items_from_export(export, 3)
    assert skipped == {"fewer_rois_than_count": 1}
    assert [i.id for i in items] == [f"iq_{i:04d}" for i in range(1, 6)]
    for item, sample in zip(items, samples[1:], strict=True):
        np.testing.assert_allclose(item.boxes, sample.boxes, atol=1e-6)
        assert Image.open(io.BytesIO(item.image)).size == (224, 224)
    spec, class_name = detection_spec(export)
    assert spec.labels == ("0", "1", "2", "3") and class_name == "coin"


def test_a_bounding_box_detector_answers_count_buckets(tmp_path: Path) -> None:
    samples = generate(4, seed=22, max_count=3)
    detector = ExportDetector(
        id=BOX_ID,
        name="coins",
        mode="BOUNDING_BOX",
        labels=["NO_OBJECTS", "BOUNDING_BOX", "GREATER_THAN_MAX"],
        mode_configuration={"max_num_bboxes": 5, "class_name": "coin"},
    )
    export = read_export(
        _export(tmp_path, samples, detector, lambda s: "BOUNDING_BOX" if s.count else "NO_OBJECTS")
    )
    spec, _ = detection_spec(export)
    assert spec.mode is DetectorMode.BOUNDING_BOX and spec.labels == tuple(str(i) for i in range(6))
    items, skipped = items_from_export(export, 5)
    assert len(items) == 4 and not skipped
    assert [i.count for i in items] == [s.count for s in samples]


def test_items_are_checked() -> None:
    with pytest.raises(ValueError, match="empty box"):
        as_detection_items([("a", b"x", [[0.5, 0.5, 0.4, 0.6]])])
    with pytest.raises(ValueError, match="twice"):
        as_detection_items([("a", b"x", []), ("a", b"y", [])])
    (item,) = as_detection_items([("a", b"x", [[-0.1, 0.2, 0.5, 1.2]])])
    np.testing.assert_allclose(item.boxes, [[0.0, 0.2, 0.5, 1.0]])


@pytest.mark.slow
def test_a_small_job_writes_a_bundle_the_runtime_answers_with(tmp_path: Path) -> None:
    from tests.support.models import lite0_backbone
    from training.embeddings import Embedder

    max_count = 4
    train = generate(80, seed=31, max_count=max_count)
    detector = ExportDetector(
        id=COUNT_ID,
        name="coins",
        query="How many coins?",
        mode="COUNT",
        labels=[str(i) for i in range(max_count + 1)],
        mode_configuration={"max_count": max_count, "class_name": "coin"},
    )
    # The first image claims one coin more than its boxes: left out of the fit, still a label.
    export = read_export(
        _export(tmp_path, train, detector, lambda s: str(s.count + (1 if s is train[0] else 0)))
    )
    embedder = Embedder(lite0_backbone(), threads=1)
    try:
        outcome = train_detection_from_export(
            export,
            tmp_path / "out",
            TrainingOptions(device="cpu", threads=1, seed=0),
            embedder,
            DetectionOptions(epochs=10, copies=2, width=64),
        )
        with pytest.raises(TrainingError, match="already holds files"):
            train_detection_from_export(export, tmp_path / "out", TrainingOptions(device="cpu"), embedder)
    finally:
        embedder.close()
    meta = outcome.metadata
    assert meta.mode is DetectorMode.COUNT and meta.labels == [str(i) for i in range(max_count + 1)]
    assert meta.head_input == "feature_map" and meta.backbone is not None
    assert (
        meta.detection is not None and meta.detection.class_name == "coin" and meta.detection.max_boxes == 100
    )
    for key in ("map50", "map50_95", "count_accuracy", "count_mae"):
        assert 0.0 <= meta.metrics[key] <= max_count
    verify_bundle(outcome.bundle_dir)
    labels = export.label_snapshot().count
    assert outcome.data["used"] == labels - 1

    # Against a production it cannot be compared with on enough shared items, newer data wins: both
    # sides count the labels the same way (the snapshot), so the same export is not "more" than itself.
    judged = judge_detection(
        outcome,
        export,
        BackboneStore(tmp_path / "out" / "backbones"),
        TrainingOptions(device="cpu", threads=1, min_test_items=10_000, confidence_threshold=1.0),
        production_bundle=outcome.bundle_dir,
    )
    assert judged.production is not None and not judged.promotion.promote
    assert judged.promotion.reasons[-1].endswith(f"no more labels ({labels} vs {labels})")

    runtime = ModelRuntime(
        outcome.bundle_dir,
        ["CPUExecutionProvider"],
        backbone_store=BackboneStore(tmp_path / "out" / "backbones"),
        backbones=BackbonePool(["CPUExecutionProvider"]),
    )
    held_out = generate(40, seed=32, max_count=max_count)
    try:
        runtime.warmup()
        predictions = [runtime.predict(s.jpeg(), ImageLimits()) for s in held_out]
    finally:
        runtime.close()
    true = np.array([s.count for s in held_out])
    counted = np.array([p.label_index for p in predictions])
    for p in predictions:
        assert p.boxes is not None and p.greater_than_max is not None
        assert len(p.boxes) == int(p.label) or p.greater_than_max
        assert all(0 <= b.left < b.right <= 1 and 0 <= b.top < b.bottom <= 1 for b in p.boxes)
    # Better than always answering the commonest count, and closer than always answering the median.
    majority = np.bincount(true).max() / true.size
    assert np.mean(counted == true) > majority + 0.1
    assert np.mean(np.abs(counted - true)) < np.mean(np.abs(np.median(true) - true))
