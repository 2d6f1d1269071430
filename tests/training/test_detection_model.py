"""The detection head: count logits are the Poisson-binomial of its box scores, decoding picks the
right peaks, the features are the backbone's channel statistics, and head.onnx answers as torch does."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from common.confidence import softmax
from training.detection.model import (
    MAX_BOXES,
    CentreNet,
    DeepContext,
    DetectionHead,
    poisson_binomial_log,
    poisson_binomial_numpy,
)
from training.detection.train import box_differences, export_head, head_answers
from training.export import _session


def brute_force_counts(p: np.ndarray, max_count: int) -> np.ndarray:
    """P(count = c) by summing over every subset of boxes; the last bucket collects max_count or more."""
    out = np.zeros(max_count + 1)
    for real in itertools.product([0, 1], repeat=p.size):
        chosen = np.asarray(real, dtype=bool)
        out[min(int(chosen.sum()), max_count)] += float(np.prod(np.where(chosen, p, 1 - p)))
    return out


def test_poisson_binomial_matches_counting_every_subset() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(4, 7))
    p[1, :3] = [1.0, 1.0, 0.0]
    for row in p:
        want = brute_force_counts(row, 4)
        got = np.exp(poisson_binomial_numpy(row[None], 4)[0])
        np.testing.assert_allclose(got, want, atol=1e-12)
    torch_logits = poisson_binomial_log(torch.from_numpy(p.astype(np.float32)), 4).numpy()
    np.testing.assert_allclose(np.exp(torch_logits), np.exp(poisson_binomial_numpy(p, 4)), atol=1e-6)


def test_poisson_binomial_known_values() -> None:
    half = poisson_binomial_numpy(np.array([[0.5, 0.5]]), 2)
    np.testing.assert_allclose(np.exp(half[0]), [0.25, 0.5, 0.25])
    # Certain boxes beyond max_count stay in the saturating last bucket.
    sure = poisson_binomial_numpy(np.ones((1, 5)), 3)
    np.testing.assert_allclose(np.exp(sure[0]), [0, 0, 0, 1], atol=1e-12)
    # No box: count 0 for certain; impossible buckets get the finite floor, not -inf.
    none = poisson_binomial_log(torch.zeros(1, 10), 3).numpy()
    assert none[0, 0] == pytest.approx(0.0) and np.isfinite(none).all()


class FixedMaps(nn.Module):
    """Stands in for the trained CentreNet: always the same raw maps."""

    def __init__(self, raw: torch.Tensor) -> None:
        super().__init__()
        self.raw = raw

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.raw.expand(fmap.shape[0], -1, -1, -1)


def test_decoding_picks_peaks_and_their_boxes() -> None:
    raw = torch.full((1, 5, 28, 28), -10.0)
    raw[0, 1:] = 0.0
    raw[0, :, 5, 7] = torch.tensor([3.0, 0.25, 0.5, math.log(4.0), math.log(2.0)])
    raw[0, 0, 5, 8] = 2.9  # next to a stronger peak: suppressed
    raw[0, :, 20, 20] = torch.tensor([1.0, 0.0, 0.0, math.log(56.0), math.log(3.0)])  # clipped at the edge
    head = DetectionHead(FixedMaps(raw), max_count=4)  # type: ignore[arg-type]
    head.set_platt(2.0, -1.0)
    logits, features, boxes, scores = (t.numpy() for t in head(torch.zeros(2, 112, 14, 14)))
    assert boxes.shape == (2, MAX_BOXES, 4) and scores.shape == (2, MAX_BOXES) and logits.shape == (2, 5)
    cx, cy = 7.25 / 28, 5.5 / 28
    np.testing.assert_allclose(boxes[0, 0], [cx - 2 / 28, cy - 1 / 28, cx + 2 / 28, cy + 1 / 28], atol=1e-6)
    np.testing.assert_allclose(boxes[0, 1], [0.0, (20 - 1.5) / 28, 1.0, (20 + 1.5) / 28], atol=1e-6)
    sig = 1 / (1 + np.exp(-np.array([2 * 3.0 - 1, 2 * 1.0 - 1])))
    np.testing.assert_allclose(scores[0, :2], sig, rtol=1e-6)
    # Every other cell of the plateau at -10 is a peak too, ranked after, with a score near 0.
    assert (scores[0, 2:] < 1e-8).all() and (np.diff(scores[0]) <= 1e-12).all()
    # The suppressed neighbour is not among the boxes.
    centres = (boxes[0, :, :2] + boxes[0, :, 2:]) / 2 * 28
    assert not np.any(np.all(np.abs(centres - [8.0, 5.0]) < 0.1, axis=1))
    np.testing.assert_allclose(np.exp(logits[0]), np.exp(poisson_binomial_numpy(scores[:1], 4)[0]), atol=1e-6)
    assert features.shape == (2, 224)


def test_non_peaks_are_padding_with_zero_score_and_box() -> None:
    raw = torch.zeros(1, 5, 28, 28)
    raw[0, 0] = torch.arange(28 * 28, dtype=torch.float32).reshape(28, 28) / 100.0  # one peak, a corner
    head = DetectionHead(FixedMaps(raw), max_count=3)  # type: ignore[arg-type]
    _, _, boxes, scores = (t.numpy() for t in head(torch.zeros(1, 112, 14, 14)))
    assert scores[0, 0] > 0.5 and (scores[0, 1:] == 0).all() and (boxes[0, 1:] == 0).all()


def test_features_are_the_backbones_channel_statistics() -> None:
    from tests.support.models import lite0_backbone
    from training.backbones import LITE0_POOLED_DIM
    from training.detection.synthetic import generate
    from training.embeddings import Embedder

    embedder = Embedder(lite0_backbone(), threads=1)
    try:
        images = [s.jpeg() for s in generate(2, seed=3)]
        embedding = embedder.embeddings(images).vectors
        maps = embedder.feature_maps(images).vectors
    finally:
        embedder.close()
    head = DetectionHead(CentreNet(), max_count=8).eval()
    with torch.no_grad():
        features = head(torch.from_numpy(maps))[1].numpy()
        # The deep context is the backbone's own blocks 11..15: their pooled, projected output is
        # the embedding's first 1280 columns.
        from training.backbones import Lite0Backbone

        suffix = Lite0Backbone().suffix.eval()
        deep = DeepContext().eval()(torch.from_numpy(maps))
        pooled = suffix.act(suffix.bn1(suffix.conv_head(deep))).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(features, embedding[:, LITE0_POOLED_DIM:], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled, embedding[:, :LITE0_POOLED_DIM], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("context", [False, True], ids=["feature-map-only", "with-deep-context"])
def test_onnx_answers_as_torch_does(context: bool) -> None:
    torch.manual_seed(0)
    net = CentreNet(context=DeepContext() if context else None)
    with torch.no_grad():  # make the heatmap vary enough for real peaks and a spread of scores
        net.out.weight.mul_(8.0)
        for name, module in net.named_modules():
            if isinstance(module, nn.BatchNorm2d) and not name.startswith("context"):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    head = DetectionHead(net, max_count=8).eval()
    head.set_platt(1.3, 0.4)
    maps = torch.randn(5, 112, 14, 14).numpy() * 2.0
    data = export_head(head, maps[:3], temperature=0.7)  # raises when parity fails
    got = _session(data).run(["logits", "features", "boxes", "scores"], {"feature_map": maps})
    want = head_answers(head, maps)
    assert got[2].shape == (5, MAX_BOXES, 4) and got[3].shape == (5, MAX_BOXES) and got[0].shape == (5, 9)
    assert box_differences(want.boxes, want.scores, got[2], got[3]) <= 1 / 224
    assert np.abs(got[3] - want.scores).max() <= 1e-4
    np.testing.assert_allclose(softmax(got[0], 0.7), softmax(want.logits, 0.7), atol=1e-4)
    np.testing.assert_allclose(got[1], want.features, rtol=1e-5, atol=1e-5)
    assert (want.scores > 0.05).sum() >= 5  # the check saw real boxes, not only padding
    assert np.all(np.diff(got[3], axis=1) <= 1e-7)  # best first


def test_box_parity_forgives_only_near_ties_and_negligible_boxes() -> None:
    boxes = np.array([[[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.0, 0.0, 0.3, 0.3]]], np.float32)
    scores = np.array([[0.9, 0.4, 0.0001]], np.float32)
    assert box_differences(boxes, scores, boxes, scores) == 0.0
    # Two boxes whose scores tie within 1e-4 may come in either order.
    tied = scores.copy()
    tied[0, 1] = 0.9 - 5e-5
    assert box_differences(boxes, tied, boxes[:, [1, 0, 2]], tied[:, [1, 0, 2]]) == 0.0
    # Clearly different scores may not swap their boxes.
    assert box_differences(boxes, scores, boxes[:, [1, 0, 2]], scores) > 0.3
    # A box nobody would answer with (score < 0.001 in both) is not compared.
    moved = boxes.copy()
    moved[0, 2] += 0.5
    assert box_differences(boxes, scores, moved, scores) == 0.0
    moved = boxes.copy()
    moved[0, 1] += 0.01
    assert box_differences(boxes, scores, moved, scores) == pytest.approx(0.01, abs=1e-6)
