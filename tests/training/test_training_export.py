"""ONNX export: parity with torch, dynamic batch, and refusal to ship a mismatching graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from common.bundle import OoddCalibration, PipelineConfig, verify_bundle
from common.confidence import softmax
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from training.demo_bundles import DEMO_CAMERA_ID, build_camera_bundle
from training.export import ExportMismatchError, export_oodd, export_primary
from training.models import MobileNetLike, SmallCnn, count_parameters
from training.oodd import fit_oodd
from training.sample_images import out_of_domain_images

PIPELINE = PipelineConfig(input_height=28, input_width=28, channels="L", mean=[0.1307], std=[0.3081])


def _digitnet() -> SmallCnn:
    torch.manual_seed(0)
    model = SmallCnn(widths=(8, 16))
    model.eval()
    return model


def test_onnx_and_torch_agree_on_probabilities_for_any_batch_size() -> None:
    model = _digitnet()
    data = export_primary(model, PIPELINE, torch.randn(16, 1, 28, 28))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 1, 28, 28)
        logits, features = session.run(["logits", "features"], {"input": x.numpy()})
        with torch.no_grad():
            ref_logits, ref_features = model(x)
        assert logits.shape == (batch, 10) and features.shape == (batch, model.feature_dim)
        assert np.max(np.abs(softmax(logits) - softmax(ref_logits.numpy()))) <= 1e-4
        np.testing.assert_allclose(features, ref_features.numpy(), rtol=1e-4, atol=1e-4)


class _NoisyLogits(nn.Module):
    """Random noise exports as a fresh RandomNormal op, so ONNX Runtime cannot reproduce torch."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = x.flatten(1)[:, :4]
        return features * 10 + torch.randn_like(features) * 10, features


def test_export_refuses_a_graph_that_disagrees_with_torch() -> None:
    with pytest.raises(ExportMismatchError):
        export_primary(_NoisyLogits(), PIPELINE, torch.randn(8, 1, 28, 28))


def test_oodd_onnx_matches_the_numpy_twin() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    centres = rng.normal(0, 4, (3, 12))
    features = (centres[labels] + rng.normal(0, 1, (600, 12))).astype(np.float32)
    oodd = fit_oodd(features[:400], labels[:400], features[400:], num_classes=3)
    probe = np.concatenate([features[400:], rng.normal(0, 12, (50, 12))]).astype(np.float32)
    calibration = OoddCalibration(threshold=oodd.threshold, scale=oodd.scale)
    data = export_oodd(oodd.to_module(), calibration, torch.from_numpy(probe))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (q,) = session.run(["in_domain"], {"features": probe})
    assert q.shape == (probe.shape[0],)
    assert np.max(np.abs(q - oodd.in_domain(probe))) <= 1e-4


def test_mobilenetlike_is_mobilenet_v2_sized_and_returns_logits_and_features() -> None:
    assert 3_000_000 <= count_parameters(MobileNetLike(num_classes=1000)) <= 4_000_000
    model = MobileNetLike(num_classes=2, width_mult=0.5).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 2) and features.shape == (2, model.feature_dim)


def test_camera_bundle_verifies_and_serves_photos(tmp_path: Path) -> None:
    bundle = build_camera_bundle(tmp_path, DEMO_CAMERA_ID, n_images=24)
    verify_bundle(bundle)
    runtime = ModelRuntime(bundle)
    assert runtime.pipeline.input_height == 224 and runtime.pipeline.channels == "RGB"
    for data in out_of_domain_images(3, seed=1):
        pred = runtime.predict(data, ImageLimits())
        assert pred.label in ("NO", "YES")
        assert np.isfinite(pred.probabilities).all() and 0.0 <= pred.in_domain <= 1.0
