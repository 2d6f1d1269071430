"""When an alert rule fires (docs/alerts.md): one pure function, used by the edge for the answers it
gives and by the cloud for its own, so a rule means the same thing in both places.

Only confident answers are watched (confidence at or above the query's threshold, and in domain): an
unsure answer goes to a person and neither extends nor breaks a streak. A confident answer that does
not match breaks it. When the streak reaches the rule's `consecutive` and the rule's cooldown has
passed since its last firing, the rule fires and the streak starts again from zero; a streak that
completes inside the cooldown keeps growing and fires on the first matching answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.confidence import is_out_of_domain
from common.wire.alerts import AlertCondition, AlertConditionKind, AlertRuleSpec


def is_confident(confidence: float, in_domain: float, threshold: float) -> bool:
    """What alert rules watch: the model sure enough, and the image like its training images."""
    return confidence >= threshold and not is_out_of_domain(in_domain)


@dataclass
class Streak:
    length: int = 0
    last_fired_at: float | None = None  # seconds, on the caller's clock


def matches(condition: AlertCondition, label: str, count: int | None) -> bool:
    if condition.kind is AlertConditionKind.ANSWER_IS:
        return label == condition.label
    if count is None or condition.count is None:
        return False
    if condition.kind is AlertConditionKind.COUNT_ABOVE:
        return count > condition.count
    return count < condition.count


def observe(rule: AlertRuleSpec, streak: Streak, *, label: str, count: int | None, now: float) -> int | None:
    """Feeds one confident answer to `streak` (updated in place). When the rule fires now: the length
    of the streak that fired it; else None."""
    if not rule.enabled:
        return None
    if not matches(rule.condition, label, count):
        streak.length = 0
        return None
    streak.length += 1
    if streak.length < rule.consecutive:
        return None
    if streak.last_fired_at is not None and now - streak.last_fired_at < rule.cooldown_s:
        return None
    fired = streak.length
    streak.length = 0
    streak.last_fired_at = now
    return fired
