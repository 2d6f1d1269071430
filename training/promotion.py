"""When a freshly trained candidate may replace production without a person looking at it.

The rule (`decide_promotion`), applied to evaluations on the shared test split, which is the same
items for every version of a detector because splits are a hash of each item's id:

* No production version yet: promote when the candidate is better than guessing with 95 %
  confidence, i.e. the lower Clopper–Pearson bound of its balanced accuracy is above chance
  (1 / classes present in the test set).
* A production version that can be compared (same labels, evaluated on the very same items):
  promote when BOTH
    - balanced accuracy: candidate ≥ production − `max_balanced_accuracy_drop` (default 0.01), and
    - calibration: candidate ECE ≤ production ECE + `max_ece_increase` (default 0.02).
  Balanced accuracy rather than accuracy, so a model that gives up on a rare class is not
  promoted for doing well on the common one; the tolerances keep test-set noise from blocking
  every retrain. The confidence intervals are reported next to the decision.
* Production exists but cannot be compared (labels changed, different item set, bundle failed to
  load or verify): no automatic promotion; a person decides.
* Always: a test set with fewer than `min_test_items` items promotes nothing automatically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.evaluation import Evaluation, OperatingPoint, chance_level


@dataclass(frozen=True)
class PromotionPolicy:
    max_balanced_accuracy_drop: float = 0.01
    max_ece_increase: float = 0.02
    min_test_items: int = 20


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reasons: tuple[str, ...]
    policy: PromotionPolicy
    candidate_version: str = ""
    production_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "policy": asdict(self.policy),
            "candidate_version": self.candidate_version,
            "production_version": self.production_version,
        }


def decide_promotion(
    candidate: Evaluation,
    production: Evaluation | None,
    policy: PromotionPolicy | None = None,
    production_error: str | None = None,
) -> PromotionDecision:
    """Apply the module's rule; `production_error` says why an existing production version has no evaluation."""
    pol = policy or PromotionPolicy()
    prod_version = production.model_version if production is not None else None

    def decide(promote: bool, *reasons: str) -> PromotionDecision:
        return PromotionDecision(promote, reasons, pol, candidate.model_version, prod_version)

    if candidate.n < pol.min_test_items:
        return decide(
            False, f"only {candidate.n} test items; at least {pol.min_test_items} are needed to decide"
        )
    if production_error is not None:
        return decide(False, f"production could not be evaluated ({production_error}); a person decides")
    cand_ba, (cand_lo, cand_hi) = candidate.balanced_accuracy, candidate.balanced_accuracy_ci95
    if production is None:
        chance = chance_level(candidate)
        if cand_lo > chance:
            return decide(
                True,
                f"first version: balanced accuracy {cand_ba:.4f} (95% CI {cand_lo:.4f}-{cand_hi:.4f}) "
                f"is above chance {chance:.4f}",
            )
        return decide(
            False,
            f"first version: balanced accuracy lower bound {cand_lo:.4f} is not above chance {chance:.4f}",
        )
    if list(production.labels) != list(candidate.labels):
        return decide(False, "production answers different labels; a person decides")
    if not candidate.items_sha256 or production.items_sha256 != candidate.items_sha256:
        return decide(False, "candidate and production were not evaluated on the same items")
    reasons: list[str] = []
    ba_floor = production.balanced_accuracy - pol.max_balanced_accuracy_drop
    ba_ok = cand_ba >= ba_floor
    reasons.append(
        f"balanced accuracy {cand_ba:.4f} (95% CI {cand_lo:.4f}-{cand_hi:.4f}) vs production "
        f"{production.balanced_accuracy:.4f}: {'ok' if ba_ok else 'worse'} (floor {ba_floor:.4f})"
    )
    ece_ceiling = production.ece + pol.max_ece_increase
    ece_ok = candidate.ece <= ece_ceiling
    reasons.append(
        f"ECE {candidate.ece:.4f} vs production {production.ece:.4f}: "
        f"{'ok' if ece_ok else 'worse'} (ceiling {ece_ceiling:.4f})"
    )
    return decide(ba_ok and ece_ok, *reasons)


# --- the rule for versions judged by what cameras get ---------------------------------------------------


@dataclass(frozen=True)
class OperatingPolicy:
    """Tolerances of `decide_at_threshold` (see its docstring)."""

    # Confident answers may be this far below the threshold's promise (point estimate) before a
    # version is held back; beyond the exact interval's reach it is held back whatever the tolerance.
    promise_tolerance: float = 0.02
    # A version may escalate this much more than production and still replace it.
    max_escalation_increase: float = 0.02
    # A comparison with production needs this many shared evaluation items; fewer: newer data wins.
    min_compare_items: int = 20


def promise_kept(point: OperatingPoint, policy: OperatingPolicy) -> tuple[bool, str]:
    """Whether the confident answers keep the threshold's promise (accuracy ≥ threshold)."""
    t = point.threshold
    if point.confident == 0:
        return True, f"no confident answers at threshold {t:.2f} (everything escalates)"
    acc = point.confident_accuracy or 0.0
    lo, hi = point.confident_accuracy_ci95
    text = (
        f"confident answers {point.confident_correct}/{point.confident} right ({acc:.4f}, "
        f"95% CI {lo:.4f}-{hi:.4f}) at threshold {t:.2f}"
    )
    if hi < t:
        return False, text + ": below the promise beyond doubt"
    if acc < t - policy.promise_tolerance:
        return False, text + f": more than {policy.promise_tolerance:.2f} below the promise"
    return True, text


def decide_at_threshold(
    candidate: OperatingPoint,
    production: OperatingPoint | None,
    policy: OperatingPolicy | None = None,
    *,
    production_error: str | None = None,
    candidate_labels: int = 0,
    production_labels: int | None = None,
    require_win: bool = False,
) -> PromotionDecision:
    """Promote a candidate judged on the same held-out items as production, by what cameras get:

    * Its confident answers must keep the threshold's promise (`promise_kept`), first version
      included: a version that is confidently wrong more often than promised is never promoted.
    * No production version: promote.
    * Production evaluated on the same items (at least `min_compare_items`): promote when production
      breaks the promise, or the candidate escalates `max_escalation_increase` less, or escalates
      about as much (within that margin) with confident accuracy no more than the tolerance below
      production's.
    * Production not comparable on enough shared items (small data, cross-validated candidate):
      promote when the candidate learnt from more labels than production did.
    * Production exists but could not be evaluated at all: a person decides.
    * `require_win` (a slower second candidate against the head it would replace): it must escalate
      at least `max_escalation_increase` less, without losing more than that in accuracy.
    """
    pol = policy or OperatingPolicy()
    legacy = PromotionPolicy()

    def decide(promote: bool, *reasons: str) -> PromotionDecision:
        return PromotionDecision(
            promote,
            reasons,
            legacy,
            candidate.model_version,
            production.model_version if production else None,
        )

    kept, why = promise_kept(candidate, pol)
    esc = f"escalation {candidate.escalation_rate:.4f} on {candidate.n} items ({candidate.method})"
    if not kept:
        return decide(False, why, esc)
    if production_error is not None:
        return decide(
            False, why, esc, f"production could not be evaluated ({production_error}); a person decides"
        )
    if production is None:
        promote, reason = _without_production(candidate_labels, production_labels)
    elif not _comparable(candidate, production, pol):
        promote, reason = _by_labels(candidate_labels, production_labels)
    else:
        promote, reason = _against_production(candidate, production, pol, require_win)
    return decide(promote, why, esc, reason)


def _without_production(candidate_labels: int, production_labels: int | None) -> tuple[bool, str]:
    """No production version to evaluate: the first version goes in, a later one needs more labels."""
    if production_labels is None:
        return True, "first version"
    if candidate_labels > production_labels:
        return True, f"learnt from {candidate_labels} labels, production from {production_labels}"
    return False, f"not more labels than production ({candidate_labels} vs {production_labels})"


def _comparable(candidate: OperatingPoint, production: OperatingPoint, pol: OperatingPolicy) -> bool:
    """Only scores on the very same (and enough) items say which version cameras would do better with."""
    return (
        production.items_sha256 == candidate.items_sha256
        and bool(candidate.items_sha256)
        and production.n >= pol.min_compare_items
    )


def _by_labels(candidate_labels: int, production_labels: int | None) -> tuple[bool, str]:
    """Production not comparable on the same items: newer data (more labels) is the only evidence."""
    if production_labels is not None and candidate_labels > production_labels:
        return True, f"learnt from {candidate_labels} labels, production from {production_labels}"
    return (
        False,
        "production could not be compared on the same items, and the candidate learnt from no more "
        f"labels ({candidate_labels} vs {production_labels if production_labels is not None else 'unknown'})",
    )


def _against_production(
    candidate: OperatingPoint, production: OperatingPoint, pol: OperatingPolicy, require_win: bool
) -> tuple[bool, str]:
    """Both evaluated on the same items: a production that breaks its promise loses outright."""
    prod_kept, prod_why = promise_kept(production, pol)
    prod_esc = f"production escalation {production.escalation_rate:.4f}"
    if not prod_kept:
        return True, f"production breaks the promise: {prod_why}"
    if require_win:
        return _clear_win(candidate, production, pol, prod_esc)
    return _not_worse(candidate, production, pol, prod_esc)


def _clear_win(
    candidate: OperatingPoint, production: OperatingPoint, pol: OperatingPolicy, prod_esc: str
) -> tuple[bool, str]:
    """A slower second candidate must pay for its cost: clearly fewer escalations, no real accuracy loss."""
    margin = pol.max_escalation_increase
    if candidate.escalation_rate > production.escalation_rate - margin:
        return False, prod_esc + f": not {margin:.2f} lower"
    if candidate.accuracy < production.accuracy - margin:
        return False, f"accuracy {candidate.accuracy:.4f} below production's {production.accuracy:.4f}"
    return True, prod_esc + ": the candidate wins"


def _not_worse(
    candidate: OperatingPoint, production: OperatingPoint, pol: OperatingPolicy, prod_esc: str
) -> tuple[bool, str]:
    """The candidate (newer labels) replaces production unless it is worse beyond the noise."""
    # On a few dozen shared items one item is several points: differences within a standard error
    # of the two rates are noise, and the candidate (which learnt from more labels) gets the benefit.
    noise = _difference_se(candidate.escalation_rate, production.escalation_rate, candidate.n)
    if candidate.escalation_rate > production.escalation_rate + pol.max_escalation_increase + noise:
        return False, prod_esc + ": the candidate escalates more"
    if candidate.escalation_rate < production.escalation_rate - pol.max_escalation_increase:
        # Both keep the promise and the candidate answers more itself: cameras get more confident
        # answers that are as right as promised (production's higher accuracy on its few confident
        # answers is no reason to keep escalating the rest).
        return True, prod_esc + ": the candidate escalates less"
    cand_acc, prod_acc = candidate.confident_accuracy, production.confident_accuracy
    if cand_acc is not None and prod_acc is not None:
        acc_noise = _difference_se(cand_acc, prod_acc, min(candidate.confident, production.confident))
        if cand_acc < prod_acc - pol.promise_tolerance - acc_noise:
            return False, f"confident accuracy {cand_acc:.4f} below production's {prod_acc:.4f}"
    return True, prod_esc + ": not worse"


def _difference_se(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two rates measured on the same `n` items (pooled)."""
    if n <= 0:
        return 1.0
    p = min(1.0, max(0.0, (a + b) / 2))
    return float((2 * p * (1 - p) / n) ** 0.5)
