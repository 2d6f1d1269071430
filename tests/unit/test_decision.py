"""Each branch of the post-inference decision tree (docs/architecture.md §3 steps 5–6)."""

from __future__ import annotations

from common.edge_config import PRESETS, InferenceConfig
from common.wire.device_api import HumanReview
from common.wire.escalation import EscalationReason
from edge.api.core.decision import decide

DEFAULT = PRESETS["default"]


def run(confidence: float = 0.99, in_domain: float = 1.0, **kw):  # type: ignore[no-untyped-def]
    args = dict(
        threshold=0.9,
        config=DEFAULT,
        human_review=HumanReview.DEFAULT,
        audit_draw=0.5,
        audit_rate=0.0,
        seconds_since_last_escalation=None,
    )
    args.update(kw)
    return decide(confidence, in_domain, **args)  # type: ignore[arg-type]


def test_confident_answer_is_final_and_not_escalated() -> None:
    d = run(0.95)
    assert d.escalate is None and d.done_processing and not d.audit


def test_confident_answer_is_audited_when_the_draw_falls_under_the_rate() -> None:
    d = run(0.95, audit_draw=0.3, audit_rate=0.5)
    assert d.escalate is EscalationReason.AUDIT and d.audit and d.done_processing


def test_audit_rate_one_audits_every_confident_answer() -> None:
    assert all(run(0.95, audit_draw=x / 10, audit_rate=1.0).audit for x in range(10))


def test_low_confidence_escalates_and_stays_pending() -> None:
    d = run(0.6)
    assert d.escalate is EscalationReason.LOW_CONFIDENCE and not d.done_processing


def test_out_of_domain_escalates_with_its_own_reason() -> None:
    d = run(0.55, in_domain=0.1)
    assert d.escalate is EscalationReason.OUT_OF_DOMAIN


def test_always_return_edge_prediction_escalates_but_answers_final() -> None:
    d = run(0.6, config=PRESETS["edge_answers_with_escalation"])
    assert d.escalate is EscalationReason.LOW_CONFIDENCE and d.done_processing


def test_disable_cloud_escalation_never_escalates_not_even_audits() -> None:
    cfg = PRESETS["no_cloud"]
    assert run(0.6, config=cfg).escalate is None
    assert run(0.99, config=cfg, audit_draw=0.0, audit_rate=1.0).escalate is None


def test_min_time_between_escalations_rate_limits_per_detector() -> None:
    cfg = InferenceConfig(min_time_between_escalations=10)
    limited = run(0.6, config=cfg, seconds_since_last_escalation=3.0)
    assert (
        limited.escalate is None
        and limited.not_escalated_because == "rate_limited"
        and limited.done_processing
    )
    assert (
        run(0.6, config=cfg, seconds_since_last_escalation=11.0).escalate is EscalationReason.LOW_CONFIDENCE
    )


def test_human_review_never_keeps_low_confidence_on_the_edge() -> None:
    d = run(0.6, human_review=HumanReview.NEVER)
    assert d.escalate is None and d.not_escalated_because == "human_review_never"


def test_threshold_is_inclusive() -> None:
    assert run(0.9).escalate is None
