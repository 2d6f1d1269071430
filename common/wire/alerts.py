"""Alert rules and their firings (docs/alerts.md).

An admin sets rules on a detector in the cloud ("answer is YES 3 times in a row, at most once per 10
minutes"). Edges get the rules with the detector's prior (common.wire.priors) and watch their own
answers; the cloud watches the answers it gives itself. Both feed `common.alerts.observe`. A firing on
an edge is kept in its store and sent to `POST /edge-api/v1/alerts/firings` until the cloud acks it;
the cloud records each `firing_id` once and turns it into signed webhook deliveries.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, model_validator

from common.wire.fields import ID_PATTERN, StorableStr, UtcDatetime


class AlertConditionKind(StrEnum):
    ANSWER_IS = "answer_is"  # the answer's label equals `label`
    COUNT_ABOVE = "count_above"  # a COUNT detector's count is greater than `count`
    COUNT_BELOW = "count_below"  # a COUNT detector's count is less than `count`


class AlertCondition(BaseModel):
    kind: AlertConditionKind
    label: StorableStr | None = Field(default=None, min_length=1, max_length=100, description="for answer_is")
    count: int | None = Field(default=None, ge=0, le=100_000, description="for count_above / count_below")

    @model_validator(mode="after")
    def _operand(self) -> Self:
        if self.kind is AlertConditionKind.ANSWER_IS:
            if self.label is None or self.count is not None:
                raise ValueError("answer_is takes a label (and no count)")
        elif self.count is None or self.label is not None:
            raise ValueError(f"{self.kind.value} takes a count (and no label)")
        return self

    def describe(self) -> str:
        if self.kind is AlertConditionKind.ANSWER_IS:
            return f"answer is {self.label}"
        word = "above" if self.kind is AlertConditionKind.COUNT_ABOVE else "below"
        return f"count {word} {self.count}"


MAX_CONSECUTIVE = 1000
MAX_COOLDOWN_S = 7 * 86_400.0
MAX_RULE_WEBHOOKS = 20


class AlertRuleSpec(BaseModel):
    """What an admin sets. `webhook_ids` empty: every enabled webhook that takes `alert` events."""

    name: StorableStr = Field(min_length=1, max_length=100)
    condition: AlertCondition
    consecutive: int = Field(default=1, ge=1, le=MAX_CONSECUTIVE, description="confident answers in a row")
    cooldown_s: float = Field(default=300.0, ge=0, le=MAX_COOLDOWN_S, description="quiet time after a firing")
    enabled: bool = True
    webhook_ids: list[str] = Field(default_factory=list, max_length=MAX_RULE_WEBHOOKS)


class AlertRule(AlertRuleSpec):
    id: str
    detector_id: str
    created_at: datetime


FIRING_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"


class AlertFiring(BaseModel):
    """One firing, made where the answer was given; `firing_id` is unique per firing, so a resend
    after a lost ack is recorded once."""

    firing_id: str = Field(pattern=FIRING_ID_PATTERN)
    rule_id: str = Field(max_length=40, pattern=ID_PATTERN)
    detector_id: str = Field(max_length=40, pattern=ID_PATTERN)
    image_query_id: str = Field(max_length=100, description="the query that completed the streak")
    label: StorableStr = Field(max_length=100)
    count: int | None = None
    confidence: float = Field(ge=0, le=1)
    streak: int = Field(ge=1)
    fired_at: UtcDatetime


MAX_BATCH_FIRINGS = 64


class AlertFiringBatch(BaseModel):
    edge_id: str = Field(default="", max_length=100)
    firings: list[AlertFiring] = Field(min_length=1, max_length=MAX_BATCH_FIRINGS)


class FiringRefusal(BaseModel):
    firing_id: str
    error: str


class AlertFiringAck(BaseModel):
    """`recorded`: stored now or before (a resend); `refused`: will never be stored (its rule is gone,
    or names another detector), so the edge drops it rather than sending it again."""

    recorded: list[str] = Field(default_factory=list)
    refused: list[FiringRefusal] = Field(default_factory=list)
