"""A plain, deterministic supervised training loop for `(logits, features)` models on CPU.

Inputs arrive already normalised exactly as the runtime normalises them; augmentation works in
that space and pads with the normalised value of a black pixel, so shifted digits still sit on
the background the runtime will show the model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    max_lr: float = 4e-3
    weight_decay: float = 1e-4
    max_shift: int = 2
    # Random rotation (degrees) and zoom; 0 keeps augmentation to exact integer shifts.
    max_rotation: float = 0.0
    max_zoom: float = 0.0
    seed: int = 0
    # NHWC activations let oneDNN pick faster CPU convolution kernels (about 25% per epoch here).
    channels_last: bool = True
    # Intra-op threads; None uses every core we may run on. Results depend on this number.
    threads: int | None = None
    # Per-class loss weights; None trains on the natural class balance.
    class_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.history)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def random_shift(x: Tensor, max_shift: int, fill: Sequence[float], generator: torch.Generator) -> Tensor:
    """Translate each image independently by up to ±max_shift pixels, filling with `fill` per channel."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    base = torch.tensor(list(fill), dtype=x.dtype).view(1, c, 1, 1)
    s = max_shift
    padded = F.pad(x - base, (s, s, s, s)) + base
    oy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_affine(
    x: Tensor,
    max_shift: float,
    max_rotation: float,
    max_zoom: float,
    fill: Sequence[float],
    generator: torch.Generator,
) -> Tensor:
    """Small random rotation, zoom and translation per image (bilinear), filling with `fill`."""
    n, c, h, w = x.shape
    base = torch.tensor(list(fill), dtype=x.dtype).view(1, c, 1, 1)

    def uniform(limit: float) -> Tensor:
        return (torch.rand(n, generator=generator) * 2.0 - 1.0) * limit

    angle = uniform(math.radians(max_rotation))
    zoom = 1.0 + uniform(max_zoom)
    # affine_grid maps output to input coordinates in [-1, 1]; a pixel is 2/size wide.
    tx, ty = uniform(2.0 * max_shift / w), uniform(2.0 * max_shift / h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x - base, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + base


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, batch_size: int = 500
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Eval-mode logits and features as numpy arrays, batched to bound memory."""
    model.eval()
    logits, features = [], []
    for start in range(0, x.shape[0], batch_size):
        lo, fe = model(x[start : start + batch_size])
        logits.append(lo.numpy())
        features.append(fe.numpy())
    return np.concatenate(logits), np.concatenate(features)


@torch.no_grad()
def _set_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """What `Module.to(memory_format=...)` does: re-lay out every 4-D weight in place."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=fmt)


def train_classifier(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    fill: Sequence[float],
    config: TrainConfig | None = None,
) -> TrainResult:
    """Adam with a one-cycle schedule, shift augmentation and a fixed seed; returns model + history."""
    cfg = config or TrainConfig()
    torch.set_num_threads(cfg.threads or available_cores())
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    weight = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
    steps_per_epoch = math.ceil(x_train.shape[0] / cfg.batch_size)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    _set_memory_format(model, fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
    )
    result = TrainResult(model)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        total_loss, correct = 0.0, 0
        for start in range(0, x_train.shape[0], cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = x_train[idx]
            if cfg.max_rotation > 0 or cfg.max_zoom > 0:
                xb = random_affine(xb, cfg.max_shift, cfg.max_rotation, cfg.max_zoom, fill, gen)
            else:
                xb = random_shift(xb, cfg.max_shift, fill, gen)
            xb = xb.contiguous(memory_format=fmt)
            yb = y_train[idx]
            logits, _ = model(xb)
            loss = F.cross_entropy(logits, yb, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * idx.shape[0]
            correct += int((logits.argmax(dim=1) == yb).sum())
        val_logits, _ = predict(model, x_val)
        val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), y_val, weight=weight))
        val_acc = float((val_logits.argmax(axis=1) == y_val.numpy()).mean())
        n = x_train.shape[0]
        result.history.append(
            EpochStats(epoch, total_loss / n, correct / n, val_loss, val_acc, time.perf_counter() - t0)
        )
    _set_memory_format(model, torch.contiguous_format)
    model.eval()
    return result


def balanced_class_weights(labels: NDArray[np.integer], num_classes: int) -> tuple[float, ...]:
    """Weights n / (K * n_k): every class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"a class has no samples: {counts.tolist()}")
    return tuple(float(w) for w in counts.sum() / (num_classes * counts))


@torch.no_grad()
def remove_class_weight_prior(head: nn.Linear, class_weights: Sequence[float]) -> None:
    """Undo the prior shift that weighted cross-entropy bakes into the logits.

    Weighting class k by w_k makes the network learn p(k|x)·w_k (renormalised), i.e. logits
    offset by log w_k. Subtracting that from the bias restores probabilities for the true class
    balance, so temperature scaling only has to fix sharpness, which is all it can fix.
    """
    head.bias.sub_(torch.log(torch.tensor(list(class_weights), dtype=head.bias.dtype)))
