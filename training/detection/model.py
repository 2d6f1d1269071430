"""The detection head: a compact anchor-free (centre-point) detector on the frozen backbone's feature map.

    CentreNet      feature_map (N, 112, 14, 14) → raw maps (N, 5, 28, 28): a centre heatmap logit,
                   the sub-cell offset (x, y) and log box size (w, h) in cells; the ×2 upsampling
                   (a learnt pixel shuffle) gives stride 8, so objects whose centres are 24 px apart
                   (at 224) are always two cells apart and 3x3 peak picking never merges them
    DetectionHead  CentreNet plus decoding, everything head.onnx computes:
                       boxes   (N, K, 4)    normalised ltrb of the K best peaks, clipped to [0, 1]
                       scores  (N, K)       calibrated probabilities sigmoid(a·z + b) of the peak
                                            logits z (Platt), 0 for padding
                       logits  (N, M + 1)   log of the count distribution: the Poisson-binomial of
                                            the K scores, the last bucket "M or more"
                       features (N, 224)    channel mean and std of the feature map (the OODD's input,
                                            the same statistics as the backbone's embedding columns)

A peak is a cell whose logit is the maximum of its 3x3 neighbourhood (max-pooling is the whole
non-maximum suppression a centre-point detector needs). Decoding is in the graph, so the edge,
the cloud and training read the same boxes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from training.backbones import LITE0_FEATURE_MAP, LITE0_INPUT_SIDE, channel_stats

HEAT, OFFSET_X, OFFSET_Y, SIZE_W, SIZE_H = range(5)
RAW_CHANNELS = 5
CONTEXT_CHANNELS = 320  # Lite0's block 15
MAX_BOXES = 100
# log of the smallest probability a count bucket reports (keeps logits finite in ONNX and numpy).
LOG_FLOOR = -30.0


def _block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DeepContext(nn.Module):
    """Lite0's pretrained blocks 11..15, frozen: feature map (N, 112, 14, 14) → (N, 320, 7, 7).

    What the backbone computes after its feature map, for its ImageNet embedding: the semantic
    features that tell a coin from a round badge or a galaxy, at half the feature map's resolution.
    Frozen (always in eval mode, no gradients), so training computes them once per cached map.
    """

    def __init__(self, net: Any = None) -> None:
        super().__init__()
        from training.backbones import Lite0Suffix, load_lite0_network

        self.blocks = Lite0Suffix(net if net is not None else load_lite0_network()).blocks
        for param in self.blocks.parameters():
            param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DeepContext:
        super().train(False)
        return self

    def forward(self, fmap: Tensor) -> Tensor:
        h = fmap
        for block in self.blocks:
            h = block(h)
        return h


class CentreNet(nn.Module):
    """The trainable part: feature map → raw maps at `upsample` × the feature map's resolution.

    The feature map (stride 16) and, with `context`, the frozen deeper blocks' output (stride 32,
    upsampled) are reduced to `width` channels and added, then two 3x3 convolutions and a learnt
    pixel shuffle give the raw maps.
    """

    def __init__(
        self,
        in_channels: int = LITE0_FEATURE_MAP[0],
        width: int = 96,
        upsample: int = 2,
        input_dropout: float = 0.0,
        context: DeepContext | None = None,
        context_channels: int = CONTEXT_CHANNELS,
    ) -> None:
        super().__init__()
        self.upsample = upsample
        # Whole channels of the frozen inputs dropped while training (identity in eval and ONNX):
        # the head cannot lean on a few channels that happen to separate a few hundred images.
        self.drop = nn.Dropout2d(input_dropout)
        self.reduce = nn.Sequential(*_block(in_channels, width, 1))
        self.context = context
        self.reduce_context = (
            nn.Sequential(*_block(context_channels, width, 1)) if context is not None else None
        )
        self.body = nn.Sequential(*_block(width, width, 3), *_block(width, width, 3))
        self.out = nn.Conv2d(width, RAW_CHANNELS * upsample * upsample, 1)
        self.shuffle = nn.PixelShuffle(upsample)
        with torch.no_grad():  # start every cell at p = 0.01, as focal-loss detectors do
            bias = self.out.bias
            assert bias is not None
            bias.zero_()
            bias.view(RAW_CHANNELS, upsample * upsample)[HEAT].fill_(-math.log(99.0))

    def deep(self, fmap: Tensor) -> Tensor | None:
        """The frozen context of a batch of feature maps (None without context)."""
        if self.context is None:
            return None
        with torch.no_grad():
            out: Tensor = self.context(fmap)
        return out

    def forward(self, fmap: Tensor, deep: Tensor | None = None) -> Tensor:
        """Raw maps; `deep` is the precomputed context (training), else it is computed here."""
        h = self.reduce(self.drop(fmap))
        if self.context is not None and self.reduce_context is not None:
            d = deep if deep is not None else self.context(fmap)
            d = self.reduce_context(self.drop(d))
            h = h + nn.functional.interpolate(d, size=(h.shape[2], h.shape[3]), mode="nearest")
        out: Tensor = self.shuffle(self.out(self.body(h)))
        return out


def shift_matrix(max_count: int) -> NDArray[np.float32]:
    """S with (d @ S)[c] = d[c - 1] and the last bucket keeping its own mass: one more object."""
    m = max_count + 1
    s = np.zeros((m, m), dtype=np.float32)
    for c in range(m - 1):
        s[c, c + 1] = 1.0
    s[m - 1, m - 1] = 1.0
    return s


def poisson_binomial_log(scores: Tensor, max_count: int) -> Tensor:
    """log P(count = c), c = 0..max_count ("max_count or more" last), of independent boxes that are
    real with probabilities `scores` (N, K). One bidiagonal update per box, unrolled for ONNX."""
    k = scores.shape[1]
    shift = torch.from_numpy(shift_matrix(max_count)).to(scores.device, scores.dtype)
    first = torch.from_numpy(np.eye(1, max_count + 1, dtype=np.float32)).to(scores.device, scores.dtype)
    dist = torch.ones_like(scores[:, :1]) * first  # (N, M + 1): no object yet
    for i in range(k):
        p = scores[:, i : i + 1]
        dist = dist * (1.0 - p) + torch.matmul(dist, shift) * p
    return torch.log(torch.clamp(dist, min=math.exp(LOG_FLOOR)))


def poisson_binomial_numpy(scores: NDArray[np.floating], max_count: int) -> NDArray[np.float64]:
    """The same distribution in float64 numpy (the reference the graph is tested against)."""
    p = np.asarray(scores, dtype=np.float64)
    dist = np.zeros((p.shape[0], max_count + 1))
    dist[:, 0] = 1.0
    for i in range(p.shape[1]):
        q = p[:, i : i + 1]
        moved = np.zeros_like(dist)
        moved[:, 1:] = dist[:, :-1]
        moved[:, -1] += dist[:, -1]
        dist = dist * (1.0 - q) + moved * q
    out: NDArray[np.float64] = np.log(np.maximum(dist, math.exp(LOG_FLOOR)))
    return out


class DetectionHead(nn.Module):
    """feature_map → (logits, features, boxes, scores): see the module docstring."""

    grid_x: Tensor
    grid_y: Tensor
    platt: Tensor

    def __init__(
        self,
        net: CentreNet,
        max_count: int,
        max_boxes: int = MAX_BOXES,
        platt: tuple[float, float] = (1.0, 0.0),
        grid: int = LITE0_FEATURE_MAP[1] * 2,
    ) -> None:
        super().__init__()
        if max_boxes > grid * grid:
            raise ValueError(f"{max_boxes} boxes from a {grid}x{grid} grid")
        self.net = net
        self.max_count = max_count
        self.max_boxes = max_boxes
        self.grid = grid
        ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
        self.register_buffer("grid_x", torch.from_numpy(xs.reshape(-1)))
        self.register_buffer("grid_y", torch.from_numpy(ys.reshape(-1)))
        self.register_buffer("platt", torch.tensor([max(platt[0], 1e-3), platt[1]], dtype=torch.float32))

    def set_platt(self, scale: float, bias: float) -> None:
        """A scale is kept positive: calibration must not reverse the order of the peaks."""
        self.platt.copy_(torch.tensor([max(scale, 1e-3), bias], dtype=torch.float32))

    def decode(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps → (boxes (N, K, 4), peak logits (N, K), peak mask (N, K) as 0/1)."""
        n = raw.shape[0]
        g = self.grid
        heat = raw[:, HEAT : HEAT + 1]
        pooled = nn.functional.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
        peak = (heat >= pooled).to(raw.dtype).reshape(n, g * g)
        z = heat.reshape(n, g * g)
        # Non-peaks sink below every peak but keep their order (no ties between the two kinds).
        ranked = z - (1.0 - peak) * 1.0e4
        _, idx = torch.topk(ranked, self.max_boxes, dim=1)
        flat = raw.reshape(n, RAW_CHANNELS, g * g)
        at = idx.unsqueeze(1).expand(n, RAW_CHANNELS, self.max_boxes)
        picked = torch.gather(flat, 2, at)  # (N, 5, K)
        keep = torch.gather(peak, 1, idx)
        logit = picked[:, HEAT]
        cx = (torch.gather(self.grid_x.expand(n, -1), 1, idx) + picked[:, OFFSET_X]) / g
        cy = (torch.gather(self.grid_y.expand(n, -1), 1, idx) + picked[:, OFFSET_Y]) / g
        half_w = torch.exp(torch.clamp(picked[:, SIZE_W], -6.0, 6.0)) / (2.0 * g)
        half_h = torch.exp(torch.clamp(picked[:, SIZE_H], -6.0, 6.0)) / (2.0 * g)
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
        boxes = torch.clamp(boxes, 0.0, 1.0) * keep.unsqueeze(2)
        return boxes, logit, keep

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raw = self.net(fmap)
        boxes, logit, keep = self.decode(raw)
        scores = torch.sigmoid(self.platt[0] * logit + self.platt[1]) * keep
        logits = poisson_binomial_log(scores, self.max_count)
        return logits, channel_stats(fmap), boxes, scores


def box_pixels_tolerance(side: int = LITE0_INPUT_SIDE) -> float:
    """One pixel of the model's input, in normalised box units (the ONNX parity bound)."""
    return 1.0 / side
