"""From a trained `(logits, features)` model to an installed, verified bundle.

Calibration, OODD fitting, export with parity checks and the atomic install are the same for
every detector, whatever trained it; this module is that shared tail.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
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
    write_bundle,
)
from training.calibration import calibration_report, fit_temperature
from training.export import export_oodd, export_primary
from training.oodd import MahalanobisOodd, fit_oodd
from training.train import predict

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
    """Normalised inputs (N, C, H, W) and int64 labels for each split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


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
        write_bundle(staging, primary_onnx, oodd_onnx, pipeline, metadata)
        return install_bundle(staging, model_root)


def _fraction(mask: NDArray[np.bool_]) -> float:
    return float(mask.mean()) if mask.size else float("nan")


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
    """Fit temperature (val), OODD (train means/covariance, val calibration), export, install.

    Metrics are measured on the test split, which neither the weights nor the calibration saw.
    `ood_inputs` (normalised known-foreign images) only adds a report of how the OODD treats them.
    """
    _, train_features = predict(model, data.x_train)
    val_logits, val_features = predict(model, data.x_val)
    test_logits, test_features = predict(model, data.x_test)
    y_train, y_val, y_test = (t.numpy() for t in (data.y_train, data.y_val, data.y_test))

    temperature = fit_temperature(val_logits, y_val)
    report = calibration_report(test_logits, y_test, temperature)
    oodd: MahalanobisOodd = fit_oodd(train_features, y_train, val_features, len(spec.labels))
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
        _, ood_features = predict(model, ood_inputs)
        metrics["oodd_photo_tiles_frac_in_domain_lt_0_5"] = _fraction(oodd.in_domain(ood_features) < 0.5)
    metrics.update(extra_metrics or {})

    primary = export_primary(model, pipeline, data.x_test[:PARITY_BATCH])
    check = torch.from_numpy(test_features[:PARITY_BATCH])
    oodd_bytes = export_oodd(oodd.to_module(), oodd.calibration(), check)
    key = behaviour_key(pipeline, spec, temperature, oodd.calibration())
    metadata = PredictorMetadata(
        detector_id=spec.detector_id,
        version=version_id(primary, oodd_bytes, key),
        detector_name=spec.detector_name,
        query=spec.query,
        mode=spec.mode,
        labels=list(spec.labels),
        temperature=temperature,
        default_confidence_threshold=spec.default_confidence_threshold,
        oodd=oodd.calibration(),
        metrics=metrics,
        lineage=lineage,
        created_at=utc_now_iso(),
    )
    path = install_artifacts(model_root, primary, oodd_bytes, pipeline, metadata)
    return BuiltBundle(path, metadata)
