"""Held-out metrics with exact intervals, and the rule that decides automatic promotion."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import Evaluation, auroc, clopper_pearson, evaluate_probabilities
from training.promotion import PromotionPolicy, decide_promotion

LABELS = ("NO", "YES")


def _evaluation(
    correct: list[bool], labels: list[int], confidence: float = 0.9, items: str = "shared", version: str = "v"
) -> Evaluation:
    """Predictions with a fixed top-class confidence; right or wrong as `correct` says."""
    y = np.asarray(labels)
    pred = np.where(correct, y, 1 - y)
    probs = np.full((len(y), 2), 1.0 - confidence)
    probs[np.arange(len(y)), pred] = confidence
    ids = [f"iq_{items}_{i}" for i in range(len(y))]
    return evaluate_probabilities(probs, y, LABELS, ids, model_version=version)


def _balanced(n: int, accuracy: float, confidence: float | None = None, version: str = "v") -> Evaluation:
    """n items, half of each label, the first `accuracy` share of each label answered right, with
    confidence = accuracy (perfectly calibrated) unless given."""
    half = n // 2
    right = round(half * accuracy)
    correct = ([True] * right + [False] * (half - right)) * 2
    conf = max(0.5, accuracy) if confidence is None else confidence
    return _evaluation(correct, [0] * half + [1] * half, conf, version=version)


def test_clopper_pearson_matches_known_exact_intervals() -> None:
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-5)
    assert clopper_pearson(10, 10) == pytest.approx((0.69150, 1.0), abs=1e-5)
    assert clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert clopper_pearson(95, 100) == pytest.approx((0.88716, 0.98357), abs=1e-5)


def test_metrics_per_class_confusion_and_balanced_accuracy() -> None:
    # 8 NO (6 right), 2 YES (1 right): accuracy 0.7, balanced (0.75 + 0.5) / 2.
    ev = _evaluation([True] * 6 + [False] * 2 + [True, False], [0] * 8 + [1] * 2)
    assert ev.accuracy == pytest.approx(0.7) and ev.balanced_accuracy == pytest.approx(0.625)
    assert ev.confusion == ((6, 2), (1, 1))
    no, yes = ev.per_class
    assert no.support == 8 and no.recall == 0.75 and no.precision == pytest.approx(6 / 7)
    assert yes.support == 2 and yes.recall == 0.5 and yes.precision == pytest.approx(1 / 3)
    lo, hi = ev.balanced_accuracy_ci95
    assert lo < 0.625 < hi
    # Imbalanced classes make the balanced estimate less certain than plain accuracy.
    assert hi - lo > ev.accuracy_ci95[1] - ev.accuracy_ci95[0]
    assert ev.ece == pytest.approx(0.2) and ev.reliability.counts[13] == 10  # all at confidence 0.9


def test_balanced_interval_equals_the_exact_accuracy_interval_for_equal_classes() -> None:
    ev = _balanced(100, 0.9)
    assert ev.balanced_accuracy == ev.accuracy == 0.9
    assert ev.balanced_accuracy_ci95 == pytest.approx(ev.accuracy_ci95)
    assert ev.accuracy_ci95 == pytest.approx(clopper_pearson(90, 100))


def test_auroc_counts_ties_as_half() -> None:
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5


def test_first_version_is_promoted_only_when_clearly_better_than_chance() -> None:
    good = decide_promotion(_balanced(100, 0.9), None)
    assert good.promote and "first version" in good.reasons[0]
    coin = decide_promotion(_balanced(100, 0.55), None)
    assert not coin.promote


def test_candidate_as_good_as_production_is_promoted() -> None:
    production = _balanced(200, 0.90, version="v-prod")
    for accuracy in (0.95, 0.90, 0.895):  # better, equal, within the 0.01 tolerance
        decision = decide_promotion(_balanced(200, accuracy, version="v-cand"), production)
        assert decision.promote, decision.reasons
        assert decision.production_version == "v-prod" and decision.candidate_version == "v-cand"


def test_candidate_worse_than_production_is_not_promoted() -> None:
    production = _balanced(200, 0.90)
    worse = decide_promotion(_balanced(200, 0.85), production)
    assert not worse.promote and "worse" in worse.reasons[0]
    # Same accuracy, but much more confident than it should be.
    overconfident = decide_promotion(
        _balanced(200, 0.90, confidence=0.999), _balanced(200, 0.90, confidence=0.9)
    )
    assert not overconfident.promote and "ECE" in overconfident.reasons[1]
    lenient = PromotionPolicy(max_balanced_accuracy_drop=0.1)
    assert decide_promotion(_balanced(200, 0.85), production, lenient).promote


def test_no_automatic_promotion_without_a_fair_comparison() -> None:
    candidate = _balanced(200, 0.95)
    other_items = _evaluation([True] * 200, [0] * 100 + [1] * 100, items="elsewhere")
    assert not decide_promotion(candidate, other_items).promote
    assert not decide_promotion(candidate, None, production_error="manifest.json is missing").promote
    assert not decide_promotion(_balanced(10, 1.0), None).promote  # too few test items to tell
    relabelled = evaluate_probabilities(np.array([[0.9, 0.1]] * 200), np.zeros(200, int), ("A", "B"), ["x"])
    assert not decide_promotion(candidate, relabelled).promote
