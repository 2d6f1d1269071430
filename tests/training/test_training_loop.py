"""The training loop's parts: per-batch normalisation, augmentation, early stopping, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from common.bundle import PipelineConfig
from training.preprocess import Normalizer, normalize_uint8, to_nchw_uint8
from training.training_loop import (
    EpochStats,
    TrainConfig,
    augment,
    random_brightness,
    resolve_device,
    train_classifier,
)

RGB = PipelineConfig(
    input_height=8, input_width=8, channels="RGB", mean=[0.1, 0.5, 0.33], std=[0.3, 0.25, 0.7]
)


def test_per_batch_normalisation_is_bit_identical_to_the_runtime_arithmetic() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    assert torch.equal(Normalizer.from_pipeline(RGB)(to_nchw_uint8(images)), normalize_uint8(images, RGB))


def test_augmentation_keeps_shape_and_range_and_never_brightens_depth() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 4, 12, 12, generator=gen)
    cfg = TrainConfig(max_shift=2, max_rotation=10, max_zoom=0.1, max_brightness=0.5, colour_channels=3)
    out = augment(x, cfg, gen)
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    bright = random_brightness(x, 0.5, 3, torch.Generator().manual_seed(1))
    assert torch.equal(bright[:, 3], x[:, 3]) and not torch.equal(bright[:, :3], x[:, :3])
    black = augment(torch.zeros(4, 1, 12, 12), cfg, gen)
    assert torch.equal(black, torch.zeros_like(black))  # padding is black, gain keeps black black


class _Linear(nn.Module):
    """No batch norm: with a learning rate of ~0 nothing at all changes between epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = x.flatten(1)
        return self.head(features), features


def _data(n: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8), torch.arange(n) % 2


def test_early_stopping_ends_a_run_that_stopped_improving() -> None:
    x, y = _data(32)
    cfg = TrainConfig(
        epochs=10, patience=2, max_lr=1e-30, weight_decay=0.0, lr_schedule="plateau", device="cpu"
    )
    seen: list[EpochStats] = []
    result = train_classifier(_Linear(), x, y, x, y, Normalizer((0.5,), (0.25,)), cfg, seen.append)
    assert result.stopped_early and len(result.history) == 3 == len(seen)
    assert result.best_epoch == 0 and [e.best for e in result.history] == [True, False, False]


def test_early_stopping_restores_the_best_weights() -> None:
    x, y = _data(64)
    torch.manual_seed(0)
    model = _Linear()
    snapshots: list[dict[str, Tensor]] = []

    def keep(stats: EpochStats) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    cfg = TrainConfig(epochs=6, patience=6, max_lr=0.5, lr_schedule="plateau", device="cpu", max_shift=0)
    result = train_classifier(model, x, y, x[:8], 1 - y[:8], Normalizer((0.5,), (0.25,)), cfg, keep)
    best = result.best_epoch
    assert result.history[best].val_loss == min(e.val_loss for e in result.history)
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][key])


def test_balanced_sampling_and_seeds_make_runs_repeatable() -> None:
    x, y = _data(40)
    y = (torch.arange(40) < 5).long()  # 5 of one class, 35 of the other
    cfg = TrainConfig(epochs=2, balanced_sampling=True, device="cpu", threads=1, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _Linear()
        train_classifier(model, x, y, x, y, Normalizer((0.5,), (0.25,)), cfg)
        runs.append(model.head.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_device_choice_falls_back_to_the_cpu() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")
