"""Why an item is in the review queue, said the way a reviewer reads it: the reason code the edge or
the cloud recorded (common.wire.escalation.EscalationReason) with the numbers behind it, so "62 % sure
of NO; the threshold is 90 %" instead of `low_confidence`."""

from __future__ import annotations

from common.confidence import OUT_OF_DOMAIN_BELOW
from common.wire.escalation import EscalationReason


def _percent(value: float) -> str:
    """Whole percents, except where rounding would claim certainty (99.96 % is not 100 %)."""
    shown = f"{100 * value:.0f}"
    if shown == "100" and value < 1:
        shown = f"{100 * value:.1f}".rstrip("0").rstrip(".")
        shown = "99.9" if shown == "100" else shown
    return shown + " %"


def why_in_review(
    reason: str,
    *,
    guess: str | None = None,
    confidence: float | None = None,
    threshold: float | None = None,
    in_domain: float | None = None,
    out_of_domain: bool | None = None,
) -> str:
    """One or two sentences for the labeling page; `guess` is the model's answer (label or count)."""
    answer = f" of {guess}" if guess is not None else ""
    sure = f"The model was {_percent(confidence)} sure{answer}" if confidence is not None else ""
    unlike = (
        "The image looks unlike the images this detector learnt from"
        + (
            f" (in-domain score {in_domain:.2f}, below {OUT_OF_DOMAIN_BELOW:.2f})"
            if in_domain is not None
            else ""
        )
        + ", so the model's answer is not trusted."
    )
    try:
        code = EscalationReason(reason)
    except ValueError:
        return f"Sent for review ({reason.replace('_', ' ')})."
    if code is EscalationReason.LOW_CONFIDENCE:
        if not sure:
            return "The model gave no confidence for its answer."
        limit = f"; the threshold is {_percent(threshold)}" if threshold is not None else ""
        extra = f" {unlike}" if out_of_domain else ""
        return f"{sure}{limit}.{extra}"
    if code is EscalationReason.OUT_OF_DOMAIN:
        return unlike + (f" {sure}." if sure else "")
    if code is EscalationReason.WANT_ASYNC:
        return "The camera asked for the answer later (want_async), so a person gives it." + (
            f" {sure}." if sure else ""
        )
    if code is EscalationReason.HUMAN_REVIEW_ALWAYS:
        return "The camera asks a person to look at every image it sends (human_review ALWAYS)." + (
            f" {sure}." if sure else ""
        )
    if code is EscalationReason.AUDIT:
        return (
            "A spot check of a confident answer: "
            + (f"{sure[0].lower()}{sure[1:]}" if sure else "the model was sure")
            + ", and your answer measures how often such answers are right."
        )
    return "This detector has no trained model yet; your answers teach it." + (
        f" The label prior guessed{answer}." if guess is not None else ""
    )
