"""The edge decision tree after inference (docs/architecture.md §3 steps 5–6), and for a detector without a model
(answered with its label prior), as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from common.confidence import is_out_of_domain
from common.edge_config import InferenceConfig
from common.wire.device_api import HumanReview
from common.wire.escalation import EscalationReason


@dataclass(frozen=True)
class Decision:
    escalate: EscalationReason | None
    done_processing: bool
    audit: bool = False
    not_escalated_because: str | None = None


def decide(
    confidence: float,
    in_domain: float,
    threshold: float,
    config: InferenceConfig,
    human_review: HumanReview,
    audit_draw: float,
    audit_rate: float,
    seconds_since_last_escalation: float | None,
) -> Decision:
    """`audit_draw` is a uniform [0, 1) sample, passed in so the function stays deterministic."""
    cloud_allowed = not config.disable_cloud_escalation and human_review is not HumanReview.NEVER
    if confidence >= threshold:
        audit = cloud_allowed and audit_draw < audit_rate
        return Decision(EscalationReason.AUDIT if audit else None, done_processing=True, audit=audit)
    blocked = _not_escalated_because(config, human_review, seconds_since_last_escalation)
    if blocked is not None:
        return Decision(None, done_processing=True, not_escalated_because=blocked)
    reason = (
        EscalationReason.OUT_OF_DOMAIN if is_out_of_domain(in_domain) else EscalationReason.LOW_CONFIDENCE
    )
    return Decision(reason, done_processing=config.always_return_edge_prediction)


def decide_without_model(
    config: InferenceConfig, human_review: HumanReview, seconds_since_last_escalation: float | None
) -> Decision:
    """A detector without a model answers with its label prior, which never stands alone whatever the
    threshold: it escalates (reason no_model) whenever a low-confidence answer would."""
    blocked = _not_escalated_because(config, human_review, seconds_since_last_escalation)
    if blocked is not None:
        return Decision(None, done_processing=True, not_escalated_because=blocked)
    return Decision(EscalationReason.NO_MODEL, done_processing=config.always_return_edge_prediction)


def _not_escalated_because(
    config: InferenceConfig, human_review: HumanReview, seconds_since_last_escalation: float | None
) -> str | None:
    """Why an answer the edge is unsure of stays on the edge (it is final then); None: escalate it."""
    if config.disable_cloud_escalation:
        return "cloud_escalation_disabled"
    if human_review is HumanReview.NEVER:
        return "human_review_never"
    if (
        seconds_since_last_escalation is not None
        and seconds_since_last_escalation < config.min_time_between_escalations
    ):
        return "rate_limited"
    return None
