"""A deterministic supervised training loop for `(logits, features)` models, on CUDA or CPU.

Images are kept as uint8 (N, C, H, W) and each batch is scaled to [0, 1], augmented there and
then normalised exactly as the runtime normalises (`preprocess.Normalizer`). Augmentation pads
with 0 (a black pixel, and "no depth" in a depth plane), so shifted digits still sit on the
background the runtime will show the model, and brightness jitter touches colour planes only.

The loop picks CUDA when it is there (mixed precision with a gradient scaler), else the CPU; it
can balance classes by loss weights or by sampling, stop early when the validation loss stops
improving (restoring the best weights), and follows a one-cycle or a reduce-on-plateau schedule.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from training.preprocess import Normalizer

DevicePreference = Literal["auto", "cpu", "cuda"]
LrSchedule = Literal["onecycle", "plateau"]
# Plateau schedule: multiply the learning rate by this when the validation loss stalls.
PLATEAU_FACTOR = 0.3


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
    # Random gain in [1 - b, 1 + b] on the colour planes (not on a depth plane); 0 disables it.
    max_brightness: float = 0.0
    # How many leading planes are colour (brightness applies to them): 1 for L, 3 for RGB and RGB+depth.
    colour_channels: int = 3
    seed: int = 0
    # NHWC activations let oneDNN pick faster CPU convolution kernels (about 25% per epoch here).
    channels_last: bool = True
    # Intra-op threads; None uses every core we may run on. Results depend on this number.
    threads: int | None = None
    # Per-class loss weights; None trains on the natural class balance.
    class_weights: tuple[float, ...] | None = None
    # Draw each epoch's batches with class-balanced probabilities (with replacement) instead.
    balanced_sampling: bool = False
    # Stop after this many epochs without a better validation loss and keep the best weights.
    patience: int | None = None
    lr_schedule: LrSchedule = "onecycle"
    device: DevicePreference = "auto"
    # float16 autocast with a gradient scaler; applies on CUDA only.
    amp: bool = True


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    lr: float = 0.0
    best: bool = False


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    device: str = "cpu"
    amp: bool = False

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.history)


EpochCallback = Callable[[EpochStats], None]


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(preference: DevicePreference = "auto") -> torch.device:
    """CUDA when asked for or available (auto), else the CPU; asking for CUDA without one is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise RuntimeError("CUDA was requested but torch sees no CUDA device")
    return torch.device("cpu")


def random_shift(x: Tensor, max_shift: int, fill: Sequence[float], generator: torch.Generator) -> Tensor:
    """Translate each image independently by up to ±max_shift pixels, filling with `fill` per channel."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    base = torch.tensor(list(fill), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = max_shift
    padded = F.pad(x - base, (s, s, s, s)) + base
    oy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (oy[:, None] + ar_h)[:, None, :, None]
    cols = (ox[:, None] + ar_w)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


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
    base = torch.tensor(list(fill), dtype=x.dtype, device=x.device).view(1, c, 1, 1)

    def uniform(limit: float) -> Tensor:
        return (torch.rand(n, generator=generator) * 2.0 - 1.0) * limit

    angle = uniform(math.radians(max_rotation))
    zoom = 1.0 + uniform(max_zoom)
    # affine_grid maps output to input coordinates in [-1, 1]; a pixel is 2/size wide.
    tx, ty = uniform(2.0 * max_shift / w), uniform(2.0 * max_shift / h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, c, h, w], align_corners=False)
    return F.grid_sample(x - base, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + base


def random_brightness(
    x01: Tensor, max_gain: float, colour_channels: int, generator: torch.Generator
) -> Tensor:
    """Multiply the colour planes of each [0, 1] image by a gain in [1 - g, 1 + g], clipped to [0, 1].

    A gain keeps black black (the padding and a digit's background stay what the runtime sees).
    """
    if max_gain <= 0:
        return x01
    n, c = x01.shape[:2]
    k = min(colour_channels, c)
    gain = (1.0 + (torch.rand(n, generator=generator) * 2.0 - 1.0) * max_gain).to(x01.device, x01.dtype)
    out = x01.clone()
    out[:, :k] = (x01[:, :k] * gain.view(n, 1, 1, 1)).clamp_(0.0, 1.0)
    return out


def augment(x01: Tensor, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """The training-time view of a [0, 1] batch: geometry (black fill), then brightness."""
    fill = [0.0] * x01.shape[1]
    if cfg.max_rotation > 0 or cfg.max_zoom > 0:
        x01 = random_affine(x01, cfg.max_shift, cfg.max_rotation, cfg.max_zoom, fill, generator)
    else:
        x01 = random_shift(x01, cfg.max_shift, fill, generator)
    return random_brightness(x01, cfg.max_brightness, cfg.colour_channels, generator)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    normalizer: Normalizer | None = None,
    batch_size: int = 500,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Eval-mode float32 logits and features as numpy arrays, batched, on the model's device.

    `x` is uint8 images (normalised here by `normalizer`) or an already normalised float tensor.
    """
    if x.dtype == torch.uint8 and normalizer is None:
        raise ValueError("uint8 images need a normalizer")
    model.eval()
    device = _model_device(model)
    logits, features = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        if x.dtype == torch.uint8 and normalizer is not None:
            xb = normalizer(xb)
        lo, fe = model(xb)
        logits.append(lo.float().cpu().numpy())
        features.append(fe.float().cpu().numpy())
    if not logits:
        raise ValueError("no images to predict")
    return np.concatenate(logits), np.concatenate(features)


@torch.no_grad()
def _set_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """What `Module.to(memory_format=...)` does: re-lay out every 4-D weight in place."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=fmt)


def _epoch_order(y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    n = y.shape[0]
    if not cfg.balanced_sampling:
        return torch.randperm(n, generator=gen)
    counts = torch.bincount(y).to(torch.float64)
    weights = (1.0 / counts.clamp(min=1.0))[y]
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class _Optimisation:
    """Everything a training step needs besides the batch, built once per run."""

    device: torch.device
    use_amp: bool
    fmt: torch.memory_format
    weight: Tensor | None
    optimizer: torch.optim.Adam
    onecycle: torch.optim.lr_scheduler.OneCycleLR | None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler


def _check_images(x_train: Tensor, x_val: Tensor) -> None:
    """Fail before touching the device: the loop assumes uint8 images and non-empty splits."""
    if x_train.dtype != torch.uint8 or x_val.dtype != torch.uint8:
        raise ValueError("training images must be uint8 (N, C, H, W)")
    if x_train.shape[0] == 0 or x_val.shape[0] == 0:
        raise ValueError("need at least one training and one validation image")


def _seed_torch(cfg: TrainConfig, device: torch.device) -> None:
    """Threads, seed and (on CUDA) deterministic kernels, so a run is reproducible."""
    torch.set_num_threads(cfg.threads or available_cores())
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _optimisation(
    model: nn.Module, cfg: TrainConfig, device: torch.device, use_amp: bool, steps_per_epoch: int
) -> _Optimisation:
    """Move the model to the device and build its optimiser, LR schedule and loss scaler."""
    weight = None
    if cfg.class_weights is not None:
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device)
    _set_memory_format(model, fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    onecycle: torch.optim.lr_scheduler.OneCycleLR | None = None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    if cfg.lr_schedule == "onecycle":
        onecycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
        )
    else:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=PLATEAU_FACTOR, patience=max(1, (cfg.patience or 4) // 2)
        )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return _Optimisation(device, use_amp, fmt, weight, optimizer, onecycle, plateau, scaler)


def _train_epoch(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    normalizer: Normalizer,
    cfg: TrainConfig,
    gen: torch.Generator,
    opt: _Optimisation,
) -> tuple[Tensor, Tensor]:
    """One pass over the (augmented) training set; the sums stay on the device until the epoch ends."""
    device = opt.device
    model.train()
    order = _epoch_order(y_train.cpu(), cfg, gen)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, x_train.shape[0], cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        xb = normalizer.normalize(
            augment(Normalizer.scale(x_train[idx.to(x_train.device)].to(device)), cfg, gen)
        )
        xb = xb.contiguous(memory_format=opt.fmt)
        yb = y_train[idx.to(y_train.device)].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=opt.use_amp):
            logits, _ = model(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=opt.weight)
        opt.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(opt.scaler.scale(loss))
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        if opt.onecycle is not None:
            opt.onecycle.step()
        total_loss += loss.detach().to(torch.float64) * idx.shape[0]
        correct += (logits.argmax(dim=1) == yb).sum()
    return total_loss, correct


def _validate(
    model: nn.Module, x_val: Tensor, y_val_cpu: Tensor, normalizer: Normalizer, weight: Tensor | None
) -> tuple[float, float]:
    """(loss, accuracy) on the validation set, weighted like the training loss so the two compare."""
    val_logits, _ = predict(model, x_val, normalizer)
    val_loss = float(
        F.cross_entropy(
            torch.from_numpy(val_logits), y_val_cpu, weight=None if weight is None else weight.cpu()
        )
    )
    val_acc = float((val_logits.argmax(axis=1) == y_val_cpu.numpy()).mean())
    return val_loss, val_acc


def _finish(model: nn.Module, cfg: TrainConfig, result: TrainResult, best_state: dict[str, Tensor]) -> None:
    """Back to the CPU in eval mode, with the best weights when early stopping chose them."""
    model.to("cpu")
    if cfg.patience is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history) - 1
    _set_memory_format(model, torch.contiguous_format)
    model.eval()


def train_classifier(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    normalizer: Normalizer,
    config: TrainConfig | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on uint8 (N, C, H, W) images with Adam, augmentation and a fixed seed.

    Returns the model (on the CPU, eval mode, best weights when early stopping is on) and its
    history. `on_epoch` sees every epoch's statistics; an exception it raises aborts training
    (that is how a caller cancels a run).
    """
    cfg = config or TrainConfig()
    _check_images(x_train, x_val)
    device = resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    _seed_torch(cfg, device)
    # A small dataset fits on the GPU as uint8; moving it once beats a copy per batch.
    if device.type == "cuda" and x_train.numel() < 2**30:
        x_train, y_train = x_train.to(device), y_train.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(x_train.shape[0] / cfg.batch_size)
    opt = _optimisation(model, cfg, device, use_amp, steps_per_epoch)
    y_val_cpu = y_val.to("cpu")
    result = TrainResult(model, device=device.type, amp=use_amp)
    best_loss, best_state, since_best = math.inf, _cpu_state(model), 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lr = float(opt.optimizer.param_groups[0]["lr"])
        total_loss, correct = _train_epoch(model, x_train, y_train, normalizer, cfg, gen, opt)
        val_loss, val_acc = _validate(model, x_val, y_val_cpu, normalizer, opt.weight)
        n = x_train.shape[0]
        improved = val_loss < best_loss
        if improved:
            best_loss, best_state, since_best, result.best_epoch = val_loss, _cpu_state(model), 0, epoch
        else:
            since_best += 1
        if opt.plateau is not None:
            opt.plateau.step(val_loss)
        stats = EpochStats(
            epoch,
            float(total_loss) / n,
            int(correct) / n,
            val_loss,
            val_acc,
            time.perf_counter() - t0,
            lr=lr,
            best=improved,
        )
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if cfg.patience is not None and since_best >= cfg.patience and epoch + 1 < cfg.epochs:
            result.stopped_early = True
            break
    _finish(model, cfg, result, best_state)
    return result


def balanced_class_weights(labels: NDArray[np.integer], num_classes: int) -> tuple[float, ...]:
    """Weights n / (K * n_k): every class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"a class has no samples: {counts.tolist()}")
    return tuple(float(w) for w in counts.sum() / (num_classes * counts))


@torch.no_grad()
def remove_class_weight_prior(head: nn.Linear, class_weights: Sequence[float]) -> None:
    """Undo the prior shift that weighted cross-entropy (or balanced sampling) bakes into the logits.

    Weighting class k by w_k makes the network learn p(k|x)·w_k (renormalised), i.e. logits
    offset by log w_k. Subtracting that from the bias restores probabilities for the true class
    balance, so temperature scaling only has to fix sharpness, which is all it can fix. Sampling
    class k with probability proportional to w_k·n_k shifts the logits the same way.
    """
    head.bias.sub_(torch.log(torch.tensor(list(class_weights), dtype=head.bias.dtype)))
