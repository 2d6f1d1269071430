"""From a trained `(logits, features)` model to a verified bundle, installed or standalone.

Calibration, OODD fitting, export with parity checks and the final check in the edge runtime are
the same for every detector, whatever trained it (the demo builder and the training service both
come through here):

    calibrate_and_export  temperature on validation, OODD (train fit, validation calibration),
                          ONNX export of both graphs with torch parity checks, test-split metrics
    bundle_metadata       predictor_metadata.json, with a content-hashed version id
    write_bundle_dir      a standalone bundle directory (what the cloud registers)
    install_artifacts     straight into a model root, `current` repointed (what the demos do)

Both writers load the result in `common.runtime.ModelRuntime` and compare its probabilities with
torch's before returning, so no bundle leaves here that the edge would answer differently.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from common.bundle import (
    DetectorMode,
    OoddCalibration,
    PipelineConfig,
    PredictorMetadata,
    install_bundle,
    verify_bundle,
    write_bundle,
)
from common.confidence import softmax
from common.runtime import ModelRuntime
from training.calibration import calibration_report, fit_temperature
from training.export import PARITY_TOLERANCE, ExportMismatchError, export_oodd, export_primary
from training.oodd import MahalanobisOodd, fit_oodd
from training.preprocess import Normalizer, bundle_pipeline
from training.training_loop import predict

PARITY_BATCH = 64


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector is, independent of how it was trained."""

    detector_id: str
    detector_name: str
    query: str
    mode: DetectorMode
    labels: tuple[str, ...]
    default_confidence_threshold: float = 0.9


@dataclass(frozen=True)
class TensorSplits:
    """uint8 images (N, C, H, W) at the input size, and int64 labels, for each split.

    Normalisation happens per batch (`preprocess.Normalizer`), exactly as the runtime does it.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class CalibratedModel:
    """Everything a bundle needs besides its description, plus what was measured on the way."""

    temperature: float
    oodd: MahalanobisOodd
    primary_onnx: bytes
    oodd_onnx: bytes
    # Test split: float32 logits, probabilities at the fitted temperature, OODD in-domain scores.
    test_logits: NDArray[np.float32]
    test_probabilities: NDArray[np.float64]
    test_in_domain: NDArray[np.float64]
    metrics: dict[str, Any] = field(default_factory=dict)
    # Normalised inputs and torch's calibrated probabilities, for the check in the runtime.
    check_inputs: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0,), np.float32))
    check_probabilities: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0,), np.float64))


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    metadata: PredictorMetadata


def version_id(*payloads: bytes) -> str:
    """`v1-` + a short content hash: rebuilding identical artefacts yields the identical version.

    Pass everything that defines the bundle's behaviour (graphs, pipeline, labels, calibration):
    `install_bundle` keeps an existing version directory as it is, so a change that did not
    change the version would never reach disk.
    """
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(hashlib.sha256(payload).digest())
    return f"v1-{digest.hexdigest()[:12]}"


def behaviour_key(
    pipeline: PipelineConfig, spec: DetectorSpec, temperature: float, oodd: OoddCalibration
) -> bytes:
    """The non-graph inputs to a bundle's answers, serialised stably for `version_id`."""
    return json.dumps(
        {
            "pipeline": pipeline.model_dump(mode="json"),
            "spec": {**asdict(spec), "mode": spec.mode.value},
            "temperature": temperature,
            "oodd": oodd.model_dump(mode="json"),
        },
        sort_keys=True,
    ).encode()


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fraction(mask: NDArray[np.bool_]) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def calibrate_and_export(
    model: nn.Module,
    pipeline: PipelineConfig,
    data: TensorSplits,
    num_classes: int,
    ood_inputs: torch.Tensor | None = None,
) -> CalibratedModel:
    """Fit temperature (val), OODD (train means/covariance, val calibration), export, measure.

    Metrics are measured on the test split, which neither the weights nor the calibration saw.
    `num_classes` is the head's width; classes without training items get no OODD Gaussian.
    `ood_inputs` (uint8 known-foreign images) only adds a report of how the OODD treats them.
    The model must be on the CPU in eval mode (as `train_classifier` leaves it).
    """
    norm = Normalizer.from_pipeline(pipeline)
    _, train_features = predict(model, data.x_train, norm)
    val_logits, val_features = predict(model, data.x_val, norm)
    test_logits, test_features = predict(model, data.x_test, norm)
    y_train, y_val, y_test = (t.numpy() for t in (data.y_train, data.y_val, data.y_test))
    if test_logits.shape[1] != num_classes:
        raise ValueError(f"the model has {test_logits.shape[1]} outputs, the detector {num_classes} labels")

    temperature = fit_temperature(val_logits, y_val)
    report = calibration_report(test_logits, y_test, temperature)
    # Class-conditional Gaussians for the classes training saw (a COUNT detector may have labels
    # nobody has answered yet); the OODD only describes where seen data lives.
    present, y_compact = np.unique(y_train, return_inverse=True)
    oodd: MahalanobisOodd = fit_oodd(train_features, y_compact, val_features, len(present))
    test_q = oodd.in_domain(test_features)
    metrics: dict[str, Any] = {
        "test_accuracy": report["accuracy"],
        "test_ece_before_temperature": report["ece_before"],
        "test_ece_after_temperature": report["ece_after"],
        "test_nll_before_temperature": report["nll_before"],
        "test_nll_after_temperature": report["nll_after"],
        "val_accuracy": float((val_logits.argmax(axis=1) == y_val).mean()),
        "n_train": len(y_train),
        "n_val": len(y_val),
        "n_test": len(y_test),
        "oodd_shrinkage": oodd.shrinkage,
        "oodd_test_frac_in_domain_ge_0_9": _fraction(test_q >= 0.9),
    }
    if ood_inputs is not None:
        _, ood_features = predict(model, ood_inputs, norm)
        metrics["oodd_photo_tiles_frac_in_domain_lt_0_5"] = _fraction(oodd.in_domain(ood_features) < 0.5)

    check = norm(data.x_test[:PARITY_BATCH])
    primary = export_primary(model, pipeline, check)
    oodd_bytes = export_oodd(
        oodd.to_module(), oodd.calibration(), torch.from_numpy(test_features[:PARITY_BATCH])
    )
    return CalibratedModel(
        temperature=temperature,
        oodd=oodd,
        primary_onnx=primary,
        oodd_onnx=oodd_bytes,
        test_logits=test_logits,
        test_probabilities=softmax(test_logits, temperature),
        test_in_domain=test_q,
        metrics=metrics,
        check_inputs=check.numpy(),
        check_probabilities=softmax(test_logits[:PARITY_BATCH], temperature),
    )


def candidate_version(spec: DetectorSpec, pipeline: PipelineConfig, calibrated: CalibratedModel) -> str:
    """The version id `bundle_metadata` will give this model (metrics and lineage do not change it)."""
    key = behaviour_key(pipeline, spec, calibrated.temperature, calibrated.oodd.calibration())
    return version_id(calibrated.primary_onnx, calibrated.oodd_onnx, key)


def bundle_metadata(
    spec: DetectorSpec,
    pipeline: PipelineConfig,
    calibrated: CalibratedModel,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
) -> PredictorMetadata:
    """predictor_metadata.json for a calibrated model; the version is a hash of what it answers."""
    return PredictorMetadata(
        detector_id=spec.detector_id,
        version=candidate_version(spec, pipeline, calibrated),
        detector_name=spec.detector_name,
        query=spec.query,
        mode=spec.mode,
        labels=list(spec.labels),
        temperature=calibrated.temperature,
        default_confidence_threshold=spec.default_confidence_threshold,
        oodd=calibrated.oodd.calibration(),
        metrics=metrics,
        lineage=lineage,
        created_at=utc_now_iso(),
    )


def check_in_runtime(
    bundle_dir: Path,
    inputs: NDArray[np.float32],
    expected_probabilities: NDArray[np.float64],
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Load a bundle as the edge does (verify, warm up) and compare its probabilities with torch's.

    Returns the largest absolute difference; raises ExportMismatchError above `tolerance`.
    """
    runtime = ModelRuntime(bundle_dir, providers=["CPUExecutionProvider"])
    try:
        runtime.warmup()
        if inputs.shape[0] == 0:
            return 0.0
        probs, in_domain = runtime.run_tensor(inputs)
    finally:
        runtime.close()
    if probs.shape != expected_probabilities.shape or in_domain.shape != (inputs.shape[0],):
        raise ExportMismatchError(
            f"{bundle_dir}: runtime outputs {probs.shape}, torch {expected_probabilities.shape}"
        )
    diff = float(np.max(np.abs(probs - expected_probabilities)))
    if not diff <= tolerance:
        raise ExportMismatchError(
            f"{bundle_dir}: runtime and torch probabilities differ by {diff:.3g} > {tolerance}"
        )
    return diff


def write_bundle_dir(
    out_dir: Path, calibrated: CalibratedModel, pipeline: PipelineConfig, metadata: PredictorMetadata
) -> Path:
    """Write a standalone bundle into `out_dir` (created; must be empty), verify and runtime-check it.

    A bundle that fails its checks is removed again, so `out_dir` either holds a good bundle or
    nothing.
    """
    shipped = bundle_pipeline(pipeline)
    created = not out_dir.exists()
    try:
        write_bundle(out_dir, calibrated.primary_onnx, calibrated.oodd_onnx, shipped, metadata)
        verify_bundle(out_dir)
        check_in_runtime(out_dir, calibrated.check_inputs, calibrated.check_probabilities)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out_dir


def install_artifacts(
    model_root: Path,
    primary_onnx: bytes,
    oodd_onnx: bytes,
    pipeline: PipelineConfig,
    metadata: PredictorMetadata,
) -> Path:
    """Write the bundle into a private temp dir, then let `install_bundle` verify and copy it in."""
    with tempfile.TemporaryDirectory(prefix="intellioptics-bundle-") as tmp:
        staging = Path(tmp) / metadata.version
        write_bundle(staging, primary_onnx, oodd_onnx, bundle_pipeline(pipeline), metadata)
        return install_bundle(staging, model_root)


def build_classifier_bundle(
    model: nn.Module,
    spec: DetectorSpec,
    pipeline: PipelineConfig,
    data: TensorSplits,
    model_root: Path,
    lineage: dict[str, Any],
    extra_metrics: dict[str, Any] | None = None,
    ood_inputs: torch.Tensor | None = None,
) -> BuiltBundle:
    """Calibrate, export and install into `model_root` (repointing `current`), checked in the runtime."""
    calibrated = calibrate_and_export(model, pipeline, data, len(spec.labels), ood_inputs)
    metrics = {**calibrated.metrics, **(extra_metrics or {})}
    metadata = bundle_metadata(spec, pipeline, calibrated, metrics, lineage)
    path = install_artifacts(model_root, calibrated.primary_onnx, calibrated.oodd_onnx, pipeline, metadata)
    check_in_runtime(path, calibrated.check_inputs, calibrated.check_probabilities)
    return BuiltBundle(path, metadata)
