"""Network definitions. Every model returns `(logits, features)` so the OODD can read the features.

The bundle format exports both outputs from one graph; keeping the pair in `forward` means export,
calibration and OODD fitting never need model-specific hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


FeatureTap = Literal["stage_stats", "embedding"]


def channel_stats(x: Tensor) -> Tensor:
    """Per-channel spatial mean and standard deviation of a feature map: (N, C, H, W) → (N, 2C)."""
    mean = x.mean(dim=(2, 3))
    centred = x - mean[:, :, None, None]
    std = torch.sqrt((centred * centred).mean(dim=(2, 3)) + 1e-6)
    return torch.cat([mean, std], dim=1)


class SmallCnn(nn.Module):
    """Compact CNN for small grayscale crops: conv stages, a 128-d embedding, a linear head.

    Each stage is conv+BN+ReLU, conv+BN+ReLU, 2x2 max-pool, so the input side must be divisible
    by 2**len(widths). The `features` output feeds the Mahalanobis OODD. By default it is the
    channel mean and std after every stage ("stage_stats"), not the 128-d embedding: the
    embedding only keeps what separates the trained classes, so a photo tile lands inside a
    class cluster (a binary detector's embedding flagged none of them), while the stage
    statistics still see background level, stroke contrast and texture and flag all of them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        widths: Sequence[int] = (32, 64),
        embedding_dim: int = 128,
        feature_tap: FeatureTap = "stage_stats",
    ) -> None:
        super().__init__()
        if input_size % (2 ** len(widths)) != 0:
            raise ValueError(f"input_size {input_size} must be divisible by {2 ** len(widths)}")
        stages: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            stages.append(
                nn.Sequential(*_conv_bn_relu(cin, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2))
            )
            cin = width
        self.stages = nn.ModuleList(stages)
        side = input_size // (2 ** len(widths))
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * side * side, embedding_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(embedding_dim, num_classes)
        self.feature_tap = feature_tap
        self.widths = tuple(widths)
        self.in_channels = in_channels
        self.input_size = input_size
        self.feature_dim = embedding_dim if feature_tap == "embedding" else 2 * sum(widths)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stats: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            stats.append(channel_stats(x))
        embedding = self.embed(x)
        features = embedding if self.feature_tap == "embedding" else torch.cat(stats, dim=1)
        return self.head(embedding), features


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to multiples of 8 (never losing more than 10%), as MobileNetV2 does."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) → depthwise 3x3 → linear project (1x1), with a skip when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return x + out if self.use_skip else out


# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
_MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetLike(nn.Module):
    """MobileNetV2-class network for camera-sized RGB input, used to benchmark serving throughput.

    Global average pooling makes it input-size agnostic; `input_size` is recorded for export.
    Features are the pooled last-layer activations (1280-d at width 1.0).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        input_size: int = 224,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stem = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_ConvBNReLU6(in_channels, stem, stride=2)]
        cin = stem
        for t, c, n, s in _MOBILENET_V2_STAGES:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_ConvBNReLU6(cin, last, kernel=1))
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self.in_channels = in_channels
        self.input_size = input_size
        self.feature_dim = last
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.pool(self.trunk(x))
        return self.head(features), features


def example_input(model: SmallCnn | MobileNetLike, batch: int = 1) -> Tensor:
    """A zero tensor of the model's input shape, for export and shape checks."""
    return torch.zeros(batch, model.in_channels, model.input_size, model.input_size)
