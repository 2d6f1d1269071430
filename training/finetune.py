"""Fine-tuning the backbone's last blocks: a second candidate for detectors with enough labels (or a GPU).

    fine_tune_head(head, feature maps, labels, splits, options) -> FineTuned

The shared backbone stays frozen up to block 10; its feature map (N, 112, 14, 14) is the head's input,
and the head trains a copy of blocks 11-15, the 1x1 head convolution and the classifier (initialised
from the fitted linear head), with light augmentation of the feature maps (horizontal flips, one-cell
shifts). The channel statistics the OODD reads come from the frozen feature map, so the linear head's
OODD serves this head unchanged. The result is a split bundle whose head reads `feature_map`; it
replaces the linear head only when it wins on the same held-out items (training.promotion).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from training.backbones import Lite0Backbone, channel_stats
from training.calibration import fit_temperature
from training.heads import TEMPERATURE_BOUNDS, FittedHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneOptions:
    epochs: int = 6
    batch_size: int = 64
    suffix_lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    flip: bool = True
    seed: int = 0
    device: str = "cpu"


class FineTunedHead(nn.Module):
    """feature_map (N, 112, 14, 14) → (logits (N, K), features = standardised channel statistics)."""

    mean: Tensor
    scale: Tensor
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, suffix: nn.Module, head: FittedHead, features_from: FittedHead | None = None) -> None:
        super().__init__()
        if head.kind != "linear" or head.feature_columns is None:
            raise ValueError("fine-tuning starts from a linear head with feature columns")
        self.suffix = suffix
        self.register_buffer("mean", torch.from_numpy(head.mean.copy()))
        self.register_buffer("scale", torch.from_numpy(head.scale.copy()))
        # The OODD's input is standardised as the head whose OODD this bundle ships was.
        lo, hi = head.feature_columns
        source = features_from or head
        self.register_buffer("feature_mean", torch.from_numpy(source.mean[lo:hi].copy()))
        self.register_buffer("feature_scale", torch.from_numpy(source.scale[lo:hi].copy()))
        w, b = head.weights
        self.fc = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(w.T.copy()))
            self.fc.bias.copy_(torch.from_numpy(b.copy()))
        self.columns = head.feature_columns

    def forward(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        stats = channel_stats(feature_map)
        embedding = torch.cat([self.suffix(feature_map), stats], dim=1)
        xs = (embedding - self.mean) / self.scale
        return self.fc(xs), (stats - self.feature_mean) / self.feature_scale


@dataclass(frozen=True)
class FineTuned:
    module: FineTunedHead
    temperature: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def logits(self, feature_maps: NDArray[np.float32], batch: int = 128) -> NDArray[np.float32]:
        return predict_logits(self.module, feature_maps, batch)


def predict_logits(
    module: nn.Module, feature_maps: NDArray[np.float32], batch: int = 128
) -> NDArray[np.float32]:
    module.eval()
    device = next(module.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, feature_maps.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(feature_maps[start : start + batch])).to(device)
            out.append(module(x)[0].cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _augment(x: Tensor, flip: bool, gen: torch.Generator) -> Tensor:
    if flip:
        mask = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None].to(x.device), x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def fine_tune_head(
    head: FittedHead,
    train_maps: NDArray[np.float32],
    train_labels: NDArray[np.int64],
    val_maps: NDArray[np.float32],
    val_labels: NDArray[np.int64],
    options: FineTuneOptions | None = None,
    check: Callable[[], None] | None = None,
    features_from: FittedHead | None = None,
) -> FineTuned:
    """Train blocks 11-15 and the classifier; the temperature is fitted on the validation maps.

    `check` is called once per batch (raise to cancel).
    """
    opts = options or FineTuneOptions()
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    device = torch.device(opts.device)
    suffix = copy.deepcopy(Lite0Backbone().suffix)
    module = FineTunedHead(suffix, head, features_from).to(device)
    params = [
        {"params": module.suffix.parameters(), "lr": opts.suffix_lr},
        {"params": module.fc.parameters(), "lr": opts.head_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=opts.weight_decay)
    n = train_maps.shape[0]
    steps = max(1, opts.epochs * ((n + opts.batch_size - 1) // opts.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[opts.suffix_lr, opts.head_lr], total_steps=steps, pct_start=0.15
    )
    counts = np.bincount(train_labels, minlength=module.fc.out_features).astype(np.float64)
    present = counts > 0
    weights = np.ones_like(counts)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    x_all = torch.from_numpy(train_maps)
    y_all = torch.from_numpy(train_labels)
    history: list[dict[str, float]] = []
    for epoch in range(opts.epochs):
        module.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, opts.batch_size):
            if check is not None:
                check()
            idx = order[start : start + opts.batch_size]
            xb = _augment(x_all[idx], opts.flip, gen).to(device)
            loss = loss_fn(module(xb)[0], y_all[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        val_logits = predict_logits(module, val_maps)
        acc = float((val_logits.argmax(axis=1) == val_labels).mean()) if len(val_labels) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, n), "val_accuracy": acc})
        log.info("fine-tune epoch %d: loss %.4f, val accuracy %.4f", epoch + 1, total / max(1, n), acc)
    module.eval()
    # Class weights shift the prior; the bias correction puts the data's own prior back.
    with torch.no_grad():
        module.fc.bias.add_(torch.from_numpy(-np.log(weights)).to(module.fc.bias))
    val_logits = predict_logits(module, val_maps)
    temperature = fit_temperature(val_logits, val_labels, TEMPERATURE_BOUNDS) if len(val_labels) else 1.0
    module.cpu()
    return FineTuned(module, float(temperature), history, time.perf_counter() - t0)


def describe(tuned: FineTuned) -> dict[str, Any]:
    return {
        "kind": "fine_tuned",
        "blocks": "11-15 + head conv + classifier",
        "temperature": round(tuned.temperature, 4),
        "history": tuned.history,
        "seconds": round(tuned.seconds, 2),
    }
