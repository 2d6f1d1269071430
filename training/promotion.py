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

from training.evaluation import Evaluation, chance_level


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
