"""Split bundles for tests: a tiny deterministic backbone (32x32 RGB → 8-d embedding, 8x8x8 feature map)
and linear heads on it, installed like the trainer's, in well under a second.

Real EfficientNet-Lite0 bundles come from the training code (tests/training); these exercise the
bundle format, the shared-backbone cache and the updater without a 13 MB file per test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.backbone import BackboneRef, BackboneStore, sha256_path
from common.bundle import (
    DetectorMode,
    OoddCalibration,
    PipelineConfig,
    PredictorMetadata,
    install_bundle,
    write_split_bundle,
)
from training.export import _export
from training.oodd import OoddModule

TINY_SIDE = 32
TINY_DIM = 8


class TinyBackbone(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, TINY_DIM, kernel_size=4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            bias = self.conv.bias
            assert bias is not None  # Conv2d has one unless told bias=False
            bias.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = torch.relu(self.conv(x))
        return fmap.mean(dim=(2, 3)), fmap


class LinearHead(nn.Module):
    """embedding → (logits, features = the embedding) as the trainer's heads answer."""

    def __init__(self, num_classes: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(TINY_DIM, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.fc.bias.zero_()

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(embedding), embedding * 1.0


def tiny_pipeline() -> PipelineConfig:
    return PipelineConfig(
        input_height=TINY_SIDE, input_width=TINY_SIDE, channels="RGB", mean=[0.5] * 3, std=[0.25] * 3
    )


def export_tiny_backbone(out: Path, seed: int = 0) -> BackboneRef:
    """Write the tiny backbone's ONNX file to `out` and return its reference."""
    module = TinyBackbone(seed).eval()
    data = _export(module, torch.zeros((1, 3, TINY_SIDE, TINY_SIDE)), "input", ["embedding", "feature_map"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return BackboneRef(
        id=f"tiny-test/seed{seed}",
        sha256=sha256_path(out),
        bytes=out.stat().st_size,
        embedding_dim=TINY_DIM,
        feature_map_output="feature_map",
        feature_map_shape=[TINY_DIM, TINY_SIDE // 4, TINY_SIDE // 4],
    )


def install_tiny_backbone(model_root: Path, seed: int = 0) -> BackboneRef:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        ref = export_tiny_backbone(path, seed)
        BackboneStore.for_model_root(model_root).install_file(path, ref)
    return ref


def write_tiny_split_bundle(
    out_dir: Path,
    detector_id: str,
    backbone: BackboneRef,
    *,
    version: str = "v1-tinyhead0001",
    labels: tuple[str, ...] = ("NO", "YES"),
    mode: DetectorMode = DetectorMode.BINARY,
    seed: int = 1,
    threshold: float = 0.5,
) -> Path:
    """A standalone split bundle in `out_dir` (not installed)."""
    head = LinearHead(len(labels), seed).eval()
    head_onnx = _export(head, torch.zeros((1, TINY_DIM)), "embedding", ["logits", "features"])
    oodd = OoddModule(means=np.zeros((1, TINY_DIM)), precision=np.eye(TINY_DIM), threshold=100.0, scale=1.0)
    cal = OoddCalibration(threshold=100.0, scale=1.0)
    oodd_onnx = _export(oodd, torch.zeros((1, TINY_DIM)), cal.input_name, [cal.output_name])
    meta = PredictorMetadata(
        detector_id=detector_id,
        version=version,
        detector_name=f"tiny {detector_id[-6:]}",
        query="Is it there?",
        mode=mode,
        labels=list(labels),
        default_confidence_threshold=threshold,
        oodd=cal,
        backbone=backbone,
        head_input="embedding",
    )
    write_split_bundle(out_dir, head_onnx, oodd_onnx, tiny_pipeline(), meta)
    return out_dir


def install_tiny_split_bundle(
    model_root: Path, detector_id: str, backbone: BackboneRef, **kwargs: object
) -> Path:
    """Write and install (backbone must be installed in `model_root` already); returns the version dir."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_tiny_split_bundle(Path(tmp) / "bundle", detector_id, backbone, **kwargs)  # type: ignore[arg-type]
        return install_bundle(bundle, model_root)
