"""The training service core: export in, a bundle the edge accepts out, with metrics, lineage and plots."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from common.bundle import (
    METADATA_FILE,
    OODD_FILE,
    BundleError,
    DetectorMode,
    current_bundle_dir,
    install_bundle,
    read_metadata,
    verify_bundle,
)
from common.confidence import softmax
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from common.wire.dataset_export import EXPORT_FORMAT_VERSION
from training.builder import calibrate_and_export
from training.dataset_export import read_export
from training.from_export import (
    TrainingError,
    TrainingOptions,
    TrainingOutcome,
    TrainingProgress,
    prepare_data,
    train_from_export,
    train_model,
)
from training.models import SmallCnn
from training.preprocess import Normalizer

from .synthetic import write_count_export, write_depth_export, write_digit_export

LIMITS = ImageLimits()
# Tiny runs: one thread (no spin-waiting on a shared box), two epochs, the CPU.
TINY = TrainingOptions(epochs=2, threads=1, device="cpu", min_test_items=5)


@dataclass(frozen=True)
class Run:
    export: Path
    out: Path
    outcome: TrainingOutcome


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Is-it-a-7 from 400 digits (about one in ten is YES, so classes get balanced), 10 UNCLEAR."""
    root = tmp_path_factory.mktemp("binary")
    export = write_digit_export(root / "export.tar.gz", 400, binary_digit=7, unclear=10)
    outcome = train_from_export(export, root / "out", TINY)
    return Run(export, root / "out", outcome)


def test_trained_bundle_verifies_loads_and_answers_in_the_edge_runtime(binary_run: Run) -> None:
    bundle = binary_run.outcome.bundle_dir
    manifest = verify_bundle(bundle)
    assert manifest.version == binary_run.outcome.version == (bundle / "model_id.txt").read_text().strip()
    runtime = ModelRuntime(bundle)
    runtime.warmup()
    assert runtime.metadata.mode is DetectorMode.BINARY and runtime.metadata.labels == ["YES", "NO"]
    export = read_export(binary_run.export)
    images = [export.image_bytes(i) for i in export.trainable_items()[:20]]
    predictions = [runtime.predict(data, LIMITS) for data in images]
    assert all(p.label in ("YES", "NO") and 0.5 <= p.raw_confidence <= 1.0 for p in predictions)
    assert all(0.0 <= p.in_domain <= 1.0 for p in predictions)


def test_bundle_installs_into_a_model_root_as_the_current_version(binary_run: Run, tmp_path: Path) -> None:
    installed = install_bundle(binary_run.outcome.bundle_dir, tmp_path)
    assert current_bundle_dir(tmp_path, binary_run.outcome.metadata.detector_id) == installed
    assert installed.name == binary_run.outcome.version


@pytest.mark.parametrize("name", [METADATA_FILE, OODD_FILE])
def test_a_tampered_bundle_file_fails_verification(binary_run: Run, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(binary_run.outcome.bundle_dir, copy)
    path = copy / name
    if name == METADATA_FILE:
        meta = json.loads(path.read_text())
        meta["temperature"] = meta["temperature"] * 0.5  # a "harmless" edit that changes every answer
        path.write_text(json.dumps(meta, indent=2))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy)
    with pytest.raises(BundleError):
        ModelRuntime(copy)


def test_checkpoint_in_torch_and_bundle_in_onnx_runtime_agree(binary_run: Run) -> None:
    checkpoint = torch.load(binary_run.outcome.checkpoint, map_location="cpu", weights_only=True)
    arch = checkpoint["architecture"]
    model = SmallCnn(
        in_channels=arch["in_channels"],
        num_classes=arch["num_classes"],
        input_size=arch["input_size"],
        widths=arch["widths"],
        embedding_dim=arch["embedding_dim"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = prepare_data(read_export(binary_run.export), TINY)
    runtime = ModelRuntime(binary_run.outcome.bundle_dir)
    assert data.pipeline.model_dump() == runtime.pipeline.model_dump()
    x = Normalizer.from_pipeline(data.pipeline)(data.splits.x_test)
    with torch.no_grad():
        logits, _ = model(x)
    expected = softmax(logits.numpy(), binary_run.outcome.metadata.temperature)
    got, in_domain = runtime.run_tensor(x.numpy())
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert in_domain.shape == (x.shape[0],)
    # And from encoded bytes, through the runtime's own decode, to the same answers.
    from_bytes = np.stack([runtime.predict(b, LIMITS).probabilities for b in data.test_images])
    assert np.max(np.abs(from_bytes - expected)) <= 1e-4


def test_metadata_records_evaluation_promotion_and_lineage(binary_run: Run) -> None:
    meta = read_metadata(binary_run.outcome.bundle_dir)
    export = read_export(binary_run.export)
    m, lineage = meta.metrics, meta.lineage
    candidate = m["evaluation"]["candidate"]
    assert candidate["n"] == m["n_test"] > 0 and m["n_train"] + m["n_val"] + m["n_test"] == 390
    lo, hi = candidate["balanced_accuracy_ci95"]
    assert 0.0 <= lo <= candidate["balanced_accuracy"] <= hi <= 1.0
    assert set(candidate["per_class"]) == {"YES", "NO"}
    assert sum(map(sum, candidate["confusion_matrix"])) == candidate["n"]
    assert candidate["ece_bins"] == 15 and 0.0 <= candidate["ece"] <= 1.0
    assert m["evaluation"]["production"] is None and m["promotion"]["promote"] in (True, False)
    assert m["training"]["balance"] == "loss" and m["training"]["device"] == "cpu"
    assert len(m["training"]["history"]) == m["training"]["epochs_run"] <= 2
    snapshot = export.label_snapshot()
    assert lineage["label_snapshot"] == snapshot.as_dict() and snapshot.count == 390
    assert lineage["label_snapshot"]["unclear_skipped"] == 10
    assert lineage["parent_version"] is None
    assert lineage["code_version"] and lineage["code_version"] != "unknown"
    assert lineage["training_config"] == TINY.model_dump(mode="json")
    assert (
        lineage["export"]["format_version"] == export.manifest.format_version == EXPORT_FORMAT_VERSION
        and lineage["splits"]["method"] == "sha256(image_query_id)"
    )


def test_reports_are_written_next_to_the_bundle(binary_run: Run) -> None:
    reports = binary_run.outcome.reports_dir
    assert reports.parent == binary_run.outcome.bundle_dir.parent
    for name in ("learning_curves.png", "confusion_matrix.png", "reliability.png"):
        data = (reports / name).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.size[0] > 300
    payload = json.loads((reports / "metrics.json").read_text())
    assert payload["summary"]["version"] == binary_run.outcome.version
    assert sorted(p.name for p in binary_run.outcome.bundle_dir.iterdir()) == sorted(
        [
            "primary.onnx",
            "oodd.onnx",
            "pipeline_config.yaml",
            "predictor_metadata.json",
            "model_id.txt",
            "manifest.json",
        ]
    )


def test_retraining_is_compared_with_production_on_the_same_test_items(
    binary_run: Run, tmp_path: Path
) -> None:
    options = TINY.model_copy(
        update={"epochs": 1, "pretrained_checkpoint": str(binary_run.outcome.checkpoint)}
    )
    second = train_from_export(
        binary_run.export, tmp_path / "out", options, production_bundle=binary_run.outcome.bundle_dir
    )
    first = binary_run.outcome
    assert second.production is not None and second.production_error is None
    assert second.production.model_version == first.version
    assert second.production.items_sha256 == second.candidate.items_sha256 == first.candidate.items_sha256
    # The production bundle, re-run through the runtime, scores exactly what it scored at training time.
    assert second.production.balanced_accuracy == pytest.approx(first.candidate.balanced_accuracy, abs=1e-9)
    meta = read_metadata(second.bundle_dir)
    assert meta.lineage["parent_version"] == first.version
    assert (
        meta.lineage["initialised_from"]["tensors_loaded"]
        == meta.lineage["initialised_from"]["tensors_total"]
    )
    assert meta.metrics["evaluation"]["production"]["model_version"] == first.version
    assert second.promotion.production_version == first.version


def test_same_export_seed_and_threads_give_the_same_version(binary_run: Run, tmp_path: Path) -> None:
    again = train_from_export(binary_run.export, tmp_path / "out", TINY)
    assert again.version == binary_run.outcome.version
    assert (again.bundle_dir / "primary.onnx").read_bytes() == (
        binary_run.outcome.bundle_dir / "primary.onnx"
    ).read_bytes()


def test_an_unloadable_production_bundle_blocks_automatic_promotion(binary_run: Run, tmp_path: Path) -> None:
    broken = tmp_path / "prod"
    shutil.copytree(binary_run.outcome.bundle_dir, broken)
    (broken / OODD_FILE).write_bytes(b"not onnx")
    outcome = train_from_export(
        binary_run.export, tmp_path / "out", TINY.model_copy(update={"epochs": 1}), production_bundle=broken
    )
    assert outcome.production is None and outcome.production_error and "sha256" in outcome.production_error
    assert not outcome.promotion.promote


def test_count_mode_trains_exports_and_serves(tmp_path: Path) -> None:
    export = write_count_export(tmp_path / "count.tar.gz", 240, max_count=3)
    outcome = train_from_export(export, tmp_path / "out", TINY.model_copy(update={"epochs": 3}))
    runtime = ModelRuntime(outcome.bundle_dir)
    assert runtime.metadata.mode is DetectorMode.COUNT and runtime.metadata.labels == ["0", "1", "2", "3"]
    assert runtime.pipeline.channels == "L" and runtime.pipeline.input_height == 32
    data = read_export(export)
    prediction = runtime.predict(data.image_bytes(data.trainable_items()[0]), LIMITS)
    assert prediction.label in runtime.metadata.labels and len(prediction.probabilities) == 4
    assert outcome.candidate.accuracy > 0.25  # better than always guessing one count


def test_rgb_plus_depth_input_trains_and_exports_four_channel_graphs(tmp_path: Path) -> None:
    export = read_export(write_depth_export(tmp_path / "depth.tar.gz", 160))
    options = TINY.model_copy(update={"channels": "RGBA", "epochs": 3, "widths": [8, 16]})
    data = prepare_data(export, options)
    assert data.pipeline.channels == "RGBA" and tuple(data.splits.x_train.shape[1:]) == (4, 16, 16)
    assert len(data.pipeline.mean) == 4
    trained = train_model(data, options)
    assert trained.model.in_channels == 4
    calibrated = calibrate_and_export(trained.model, data.pipeline, data.splits, data.num_classes)
    import onnxruntime as ort

    session = ort.InferenceSession(calibrated.primary_onnx, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [4, 16, 16]
    x = calibrated.check_inputs
    logits, _ = session.run(["logits", "features"], {"input": x})
    assert np.max(np.abs(softmax(logits, calibrated.temperature) - calibrated.check_probabilities)) <= 1e-4
    # The depth plane carries the answer (the colour planes are noise), so the model must read it.
    assert calibrated.metrics["test_accuracy"] >= 0.8


def test_rgb_plus_depth_bundle_serves_in_the_runtime(tmp_path: Path) -> None:
    export = write_depth_export(tmp_path / "depth.tar.gz", 160)
    outcome = train_from_export(export, tmp_path / "out", TINY.model_copy(update={"channels": "RGBA"}))
    runtime = ModelRuntime(outcome.bundle_dir)
    data = read_export(export)
    assert runtime.predict(data.image_bytes(data.trainable_items()[0]), LIMITS).label in ("YES", "NO")


def test_too_few_labelled_images_is_a_clear_error(tmp_path: Path) -> None:
    export = write_digit_export(tmp_path / "small.tar.gz", 3)
    with pytest.raises(TrainingError, match="not enough labelled images"):
        train_from_export(export, tmp_path / "out", TINY)


def test_an_existing_bundle_in_the_output_is_not_overwritten(binary_run: Run) -> None:
    with pytest.raises(TrainingError, match="already holds files"):
        train_from_export(binary_run.export, binary_run.out, TINY)


def test_progress_reports_every_stage_and_epoch_and_can_cancel(binary_run: Run, tmp_path: Path) -> None:
    seen: list[TrainingProgress] = []

    class Cancelled(Exception):
        pass

    def progress(p: TrainingProgress) -> None:
        seen.append(p)
        if p.stage == "train" and p.epoch == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_from_export(binary_run.export, tmp_path / "out", TINY, progress=progress)
    assert [p.stage for p in seen][:3] == ["prepare", "prepare", "train"]
    last = seen[-1].as_dict()
    assert last["epoch"] == 1 and last["epochs"] == 2 and "val_accuracy" in last and "eta_s" in last
    assert not (tmp_path / "out" / "bundle").exists()


def test_job_options_are_validated() -> None:
    assert TrainingOptions.model_validate({"epochs": 5, "balance": "sampler"}).epochs == 5
    with pytest.raises(ValidationError):
        TrainingOptions.model_validate({"epochs": 0})
    with pytest.raises(ValidationError):
        TrainingOptions.model_validate({"learning_rte": 0.1})
    with pytest.raises(ValidationError):
        TrainingOptions.model_validate({"mean": [0.5]})
