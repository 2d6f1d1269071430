"""A detector's head on frozen backbone embeddings: fitted in seconds, chosen by cross-validation.

    fit_head(x, y, num_classes, options) -> FittedHead

Candidates, each scored by the out-of-fold negative log-likelihood after its own temperature (a
proper score: it rewards being right and being calibrated):
    linear  multinomial logistic regression with an L2 penalty from a grid, full-batch L-BFGS
    mlp     one hidden ReLU layer (only with enough labels), AdamW with weight decay
Embeddings are standardised first (mean and scale of the training items, folded into the exported
graph). Classes are balanced in the loss when their sizes differ, and the prior that balancing adds
is taken out of the bias again, so probabilities keep meaning frequencies. The temperature is fitted
on the chosen candidate's out-of-fold logits, so it measures how the head does on items it has not
seen, with every labelled item taking part (no small hold-out).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from training.calibration import fit_temperature, negative_log_likelihood

HeadKind = Literal["linear", "mlp"]
DEFAULT_L2_GRID = (1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# log T bounds: out-of-fold logits of well separated classes would drive T toward 0 (every answer
# certain); a floor of 0.4 keeps a head that has never been wrong on a few items from claiming 1.0.
TEMPERATURE_BOUNDS = (math.log(0.4), math.log(20.0))
# Balance the loss when the largest class has more than this many times the items of the smallest.
BALANCE_RATIO = 1.5


@dataclass(frozen=True)
class HeadOptions:
    folds: int = 5
    l2_grid: Sequence[float] = DEFAULT_L2_GRID
    lbfgs_iterations: int = 50
    # Heads fit in the span of the top principal components of the standardised embeddings: far
    # fewer weights to fit from few labels, fits several times faster, the same accuracy.
    pca_dims: int = 256
    mlp_min_items: int = 300
    mlp_hidden: int = 128
    mlp_steps: int = 150
    mlp_batch: int = 512
    mlp_weight_decays: Sequence[float] = (1e-2,)
    # Hyperparameters are chosen by cross-validation on at most this many items (stratified); the
    # chosen candidate's out-of-fold logits over all items come from `final_folds` folds.
    select_items: int = 1200
    final_folds: int = 3
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class FittedHead:
    """Weights (numpy, float32) and what choosing them measured."""

    kind: HeadKind
    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    weights: list[NDArray[np.float32]]  # linear: [W (D, K), b (K,)]; mlp: [W1, b1, W2, b2]
    temperature: float
    oof_logits: NDArray[np.float32]  # (N, K), each row from a model that did not see that item
    folds: NDArray[np.int64]  # (N,) fold index of each item
    params: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # Columns of the standardised embedding that the head hands on as `features` (the OODD's input).
    feature_columns: tuple[int, int] | None = None

    def features(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Numpy twin of the head's `features` output."""
        xs = self.standardise(x)
        if self.feature_columns is None:
            return xs
        lo, hi = self.feature_columns
        out: NDArray[np.float32] = np.ascontiguousarray(xs[:, lo:hi])
        return out

    def standardise(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = ((np.asarray(x, np.float32) - self.mean) / self.scale).astype(np.float32)
        return out

    def logits(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Numpy twin of the exported head (logits at T = 1)."""
        return _forward_numpy(self.kind, self.weights, self.standardise(x))

    def to_module(self) -> HeadModule:
        return HeadModule(self.kind, self.mean, self.scale, self.weights, self.feature_columns)


def _forward_numpy(
    kind: HeadKind, weights: list[NDArray[np.float32]], xs: NDArray[np.float32]
) -> NDArray[np.float32]:
    if kind == "linear":
        out: NDArray[np.float32] = xs @ weights[0] + weights[1]
        return out
    hidden = np.maximum(xs @ weights[0] + weights[1], 0.0)
    out = hidden @ weights[2] + weights[3]
    return out.astype(np.float32)


class HeadModule(nn.Module):
    """embedding (N, D) → (logits (N, K), features = standardised embedding columns) for head.onnx."""

    mean: Tensor
    scale: Tensor

    def __init__(
        self,
        kind: HeadKind,
        mean: NDArray[np.float32],
        scale: NDArray[np.float32],
        weights: list[NDArray[np.float32]],
        feature_columns: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.feature_columns = feature_columns
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, np.float32)))
        if kind == "linear":
            w, b = weights
            self.fc = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(w.T.copy()))
                self.fc.bias.copy_(torch.from_numpy(b))
        else:
            w1, b1, w2, b2 = weights
            self.fc1 = nn.Linear(w1.shape[0], w1.shape[1])
            self.fc2 = nn.Linear(w2.shape[0], w2.shape[1])
            with torch.no_grad():
                self.fc1.weight.copy_(torch.from_numpy(w1.T.copy()))
                self.fc1.bias.copy_(torch.from_numpy(b1))
                self.fc2.weight.copy_(torch.from_numpy(w2.T.copy()))
                self.fc2.bias.copy_(torch.from_numpy(b2))

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        xs = (embedding - self.mean) / self.scale
        if self.kind == "linear":
            logits: Tensor = self.fc(xs)
        else:
            logits = self.fc2(torch.relu(self.fc1(xs)))
        if self.feature_columns is None:
            return logits, xs
        lo, hi = self.feature_columns
        return logits, xs[:, lo:hi]


# --- folds, balance ----------------------------------------------------------------------------------


def stratified_folds(y: NDArray[np.integer], k: int, seed: int = 0) -> NDArray[np.int64]:
    """Fold index per item: each class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(y.shape[0], dtype=np.int64)
    offset = 0
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        folds[idx] = (np.arange(idx.size) + offset) % k
        offset += idx.size  # so small classes do not all start in fold 0
    return folds


def _selection_subset(y: NDArray[np.int64], limit: int, seed: int) -> NDArray[np.int64]:
    """Indices of at most `limit` items, each class kept in proportion (all items when fewer)."""
    if y.shape[0] <= limit:
        return np.arange(y.shape[0])
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        take = max(min(idx.size, 3), round(idx.size * limit / y.shape[0]))
        keep.append(rng.choice(idx, size=take, replace=False))
    out: NDArray[np.int64] = np.sort(np.concatenate(keep))
    return out


def fold_count(y: NDArray[np.integer], wanted: int) -> int:
    """As many folds as asked, but every class needs an item in each training part: ≤ smallest class."""
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min()) if counts.size else 0
    return max(2, min(wanted, smallest)) if y.shape[0] >= 4 else 1


def class_weights(y: NDArray[np.integer], num_classes: int) -> NDArray[np.float64] | None:
    """n / (K' n_k) over the K' classes present when they are unbalanced; None when they are not."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    if counts[present].max() / counts[present].min() <= BALANCE_RATIO:
        return None
    weights = np.ones(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def _prior_correction(weights: NDArray[np.float64] | None) -> NDArray[np.float32]:
    """Bias to add so a model trained with class weights w_k answers with the data's own prior again."""
    if weights is None:
        return np.zeros(0, dtype=np.float32)
    out: NDArray[np.float32] = (-np.log(weights)).astype(np.float32)
    return out


# --- fitting -----------------------------------------------------------------------------------------


def _train_linear(
    xs: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    weights: Tensor | None,
    iterations: int,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    d = xs.shape[1]
    w = (
        init[0].clone() if init else torch.zeros((d, num_classes), dtype=xs.dtype, device=xs.device)
    ).requires_grad_()
    b = (
        init[1].clone() if init else torch.zeros(num_classes, dtype=xs.dtype, device=xs.device)
    ).requires_grad_()
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iterations,
        history_size=10,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )
    loss_fn = nn.CrossEntropyLoss(weight=weights)

    def closure() -> Tensor:
        opt.zero_grad()
        loss: Tensor = loss_fn(xs @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def _train_mlp(
    xs: Tensor, y: Tensor, num_classes: int, options: HeadOptions, weight_decay: float, weights: Tensor | None
) -> list[Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    d = xs.shape[1]
    fc1 = nn.Linear(d, options.mlp_hidden).to(xs.device)
    fc2 = nn.Linear(options.mlp_hidden, num_classes).to(xs.device)
    with torch.no_grad():
        fc1.weight.copy_(torch.randn(fc1.weight.shape, generator=gen) * math.sqrt(2.0 / d))
        fc1.bias.zero_()
        fc2.weight.copy_(torch.randn(fc2.weight.shape, generator=gen) * math.sqrt(1.0 / options.mlp_hidden))
        fc2.bias.zero_()
    params = [*fc1.parameters(), *fc2.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.mlp_steps)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    n = xs.shape[0]
    drop = nn.Dropout(0.2)
    for _ in range(options.mlp_steps):
        idx = torch.randint(0, n, (min(options.mlp_batch, n),), generator=gen).to(xs.device)
        logits = fc2(drop(torch.relu(fc1(xs[idx]))))
        loss = loss_fn(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [fc1.weight.detach().T, fc1.bias.detach(), fc2.weight.detach().T, fc2.bias.detach()]


def _logits(kind: HeadKind, params: list[Tensor], xs: Tensor) -> Tensor:
    if kind == "linear":
        return xs @ params[0] + params[1]
    return torch.relu(xs @ params[0] + params[1]) @ params[2] + params[3]


@dataclass
class _Candidate:
    kind: HeadKind
    setting: float
    oof: NDArray[np.float32]
    nll: float = float("inf")
    temperature: float = 1.0


@dataclass(frozen=True)
class _Setup:
    """What every fit of one head shares: the class count, the options and the device."""

    num_classes: int
    opts: HeadOptions
    device: torch.device


@dataclass(frozen=True)
class _Space:
    """The standardised embeddings (`xs_full`) and, when PCA applies, their projection `xs`."""

    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    xs_full: Tensor
    basis: Tensor | None
    xs: Tensor


def _checked_inputs(
    embeddings: NDArray[np.floating], labels: NDArray[np.integer]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """float32 (N, D) and int64 (N,): refused early when no classifier could be fitted on them."""
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"need (N, D) embeddings and N ≥ 2 labels, got {x.shape} and {y.shape}")
    if np.unique(y).size < 2:
        raise ValueError("a head needs items of at least two classes")
    return x, y


def _standardise(x: NDArray[np.float32], pca_dims: int, device: torch.device) -> _Space:
    """Standardise, then project onto at most `pca_dims` directions: fits stay fast and well-posed."""
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-3).astype(np.float32)
    xs_full = torch.from_numpy(((x - mean) / scale).astype(np.float32)).to(device)
    r = min(pca_dims, x.shape[0], x.shape[1])
    basis: Tensor | None = None
    if r < x.shape[1]:
        _, _, v = torch.svd_lowrank(xs_full, q=min(r + 8, x.shape[0], x.shape[1]), niter=2)
        basis = v[:, :r].contiguous()
    xs = xs_full @ basis if basis is not None else xs_full
    return _Space(mean, scale, xs_full, basis, xs)


def _weights_for_labels(
    setup: _Setup, labels_: NDArray[np.int64]
) -> tuple[Tensor | None, NDArray[np.float32]]:
    """Loss weights for these labels and the bias that undoes them, so rare classes still count."""
    w = class_weights(labels_, setup.num_classes)
    return (
        torch.tensor(w, dtype=torch.float32, device=setup.device) if w is not None else None
    ), _prior_correction(w)


def _cross_validate(
    setup: _Setup,
    kind: HeadKind,
    setting: float,
    fold_ids: NDArray[np.int64],
    xs_: Tensor,
    yt_: Tensor,
    y_: NDArray[np.int64],
) -> NDArray[np.float32]:
    """Out-of-fold logits: each row from a fit that did not see it, so calibration is honest."""
    num_classes, opts = setup.num_classes, setup.opts
    oof = np.zeros((y_.shape[0], num_classes), dtype=np.float32)
    for f in range(int(fold_ids.max()) + 1):
        train, held = fold_ids != f, fold_ids == f
        w, correction = _weights_for_labels(setup, y_[train])
        if kind == "linear":
            params = list(
                _train_linear(xs_[train], yt_[train], num_classes, setting, w, opts.lbfgs_iterations)
            )
        else:
            params = _train_mlp(xs_[train], yt_[train], num_classes, opts, setting, w)
        out = _logits(kind, params, xs_[held]).cpu().numpy()
        oof[held] = out + (correction if correction.size else 0.0)
    return oof


def _linear_candidates(
    setup: _Setup,
    xs_sel: Tensor,
    yt_sel: Tensor,
    sub_y: NDArray[np.int64],
    sub_folds: NDArray[np.int64],
    sub_k: int,
) -> list[_Candidate]:
    """One candidate per L2 setting; strong to weak, each fit warm-starts the next (much faster)."""
    num_classes, opts = setup.num_classes, setup.opts
    grid = sorted(opts.l2_grid, reverse=True)  # strong to weak: each fit warm-starts the next
    oofs = {l2: np.zeros((sub_y.shape[0], num_classes), dtype=np.float32) for l2 in grid}
    for f in range(sub_k):
        train, held = sub_folds != f, sub_folds == f
        w, correction = _weights_for_labels(setup, sub_y[train])
        init = None
        for l2 in grid:
            wb = _train_linear(xs_sel[train], yt_sel[train], num_classes, l2, w, opts.lbfgs_iterations, init)
            init = wb
            out = _logits("linear", list(wb), xs_sel[held]).cpu().numpy()
            oofs[l2][held] = out + (correction if correction.size else 0.0)
    return [_Candidate("linear", l2, oofs[l2]) for l2 in grid]


def _choose_candidate(
    setup: _Setup, xs: Tensor, yt: Tensor, y: NDArray[np.int64], k: int, folds: NDArray[np.int64]
) -> tuple[_Candidate, list[_Candidate], NDArray[np.int64]]:
    """(best, every candidate tried, the folds of the best's out-of-fold logits), by calibrated NLL."""
    opts, device = setup.opts, setup.device
    # Hyperparameters are chosen on at most `select_items` items (stratified); the chosen one's
    # out-of-fold logits over every item then come from `final_folds` more fits.
    sel = _selection_subset(y, opts.select_items, opts.seed)
    sub_y = y[sel]
    sub_k = fold_count(sub_y, opts.folds)
    sub_folds = stratified_folds(sub_y, sub_k, opts.seed) if sel.size < y.size else folds
    xs_sel, yt_sel = xs[torch.from_numpy(sel).to(device)], yt[torch.from_numpy(sel).to(device)]

    candidates: list[_Candidate] = []
    candidates += _linear_candidates(setup, xs_sel, yt_sel, sub_y, sub_folds, sub_k)
    if sub_y.shape[0] >= opts.mlp_min_items:
        mlp_folds = sub_folds % min(sub_k, 3)
        for wd in opts.mlp_weight_decays:
            candidates.append(
                _Candidate("mlp", wd, _cross_validate(setup, "mlp", wd, mlp_folds, xs_sel, yt_sel, sub_y))
            )
    for cand in candidates:
        cand.temperature = fit_temperature(cand.oof, sub_y, TEMPERATURE_BOUNDS)
        cand.nll = negative_log_likelihood(cand.oof, sub_y, cand.temperature)
    best = min(candidates, key=lambda c: (c.nll, c.kind != "linear"))
    if sel.size < y.size:
        folds = folds % min(k, opts.final_folds)
        best = _Candidate(
            best.kind, best.setting, _cross_validate(setup, best.kind, best.setting, folds, xs, yt, y)
        )
        best.temperature = fit_temperature(best.oof, y, TEMPERATURE_BOUNDS)
        best.nll = negative_log_likelihood(best.oof, y, best.temperature)
    return best, candidates, folds


def _fit_final(
    setup: _Setup, best: _Candidate, space: _Space, yt: Tensor, y: NDArray[np.int64]
) -> list[NDArray[np.float32]]:
    """The chosen head on every item, as arrays that read the raw (standardised) embedding."""
    num_classes, opts = setup.num_classes, setup.opts
    w, correction = _weights_for_labels(setup, y)
    if best.kind == "linear":
        final = list(_train_linear(space.xs, yt, num_classes, best.setting, w, opts.lbfgs_iterations))
    else:
        final = _train_mlp(space.xs, yt, num_classes, opts, best.setting, w)
    if space.basis is not None:  # fold the projection into the first layer: the graph reads the embedding
        final = [space.basis @ final[0], *final[1:]]
    arrays = [t.cpu().numpy().astype(np.float32) for t in final]
    if correction.size:
        arrays[-1] = arrays[-1] + correction
    return arrays


def fit_head(
    embeddings: NDArray[np.floating],
    labels: NDArray[np.integer],
    num_classes: int,
    options: HeadOptions | None = None,
    feature_columns: tuple[int, int] | None = None,
) -> FittedHead:
    """Choose and fit a head on (N, D) embeddings and class indices (N,); see the module docstring."""
    opts = options or HeadOptions()
    t0 = time.perf_counter()
    x, y = _checked_inputs(embeddings, labels)
    torch.manual_seed(opts.seed)
    setup = _Setup(num_classes, opts, torch.device(opts.device))
    space = _standardise(x, opts.pca_dims, setup.device)
    yt = torch.from_numpy(y).to(setup.device)
    k = fold_count(y, opts.folds)
    folds = stratified_folds(y, k, opts.seed) if k > 1 else np.zeros(y.shape[0], dtype=np.int64)

    candidates: list[_Candidate] = []
    if k > 1:
        best, candidates, folds = _choose_candidate(setup, space.xs, yt, y, k, folds)
    else:
        best = _Candidate("linear", max(opts.l2_grid), np.zeros((y.shape[0], num_classes), dtype=np.float32))

    arrays = _fit_final(setup, best, space, yt, y)
    if k == 1:
        best.oof = _forward_numpy(best.kind, arrays, space.xs_full.cpu().numpy())  # in-sample, T = 1
    return FittedHead(
        kind=best.kind,
        mean=space.mean.astype(np.float32),
        scale=space.scale,
        weights=arrays,
        temperature=float(best.temperature),
        oof_logits=best.oof,
        folds=folds,
        params={
            "kind": best.kind,
            "l2" if best.kind == "linear" else "weight_decay": best.setting,
            "folds": k,
        },
        candidates=[
            {
                "kind": c.kind,
                "setting": c.setting,
                "oof_nll": round(c.nll, 5),
                "temperature": round(c.temperature, 4),
            }
            for c in candidates
        ],
        seconds=time.perf_counter() - t0,
        feature_columns=feature_columns,
    )
