"""When an alert rule fires (common.alerts), how the edge's watcher feeds it and keeps its firings
(edge.api.alerts.watcher), and what the edge's sender does with each answer of the cloud
(edge.api.alerts.firing_sender)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from common.alerts import Streak, observe
from common.bundle import DetectorMode
from common.wire.alerts import AlertCondition, AlertConditionKind, AlertFiring, AlertRule
from common.wire.device_api import ImageQuery, ResultSource, ResultType, make_result
from common.wire.priors import DetectorPrior
from edge.api.alerts.firing_sender import FIRINGS_PATH, FiringSender
from edge.api.alerts.watcher import AlertWatcher
from edge.api.core.store import EdgeStore
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.sending_loop import Backoff
from edge.api.metrics import EdgeMetrics

DETECTOR = "det_alerts"
YES = AlertCondition(kind=AlertConditionKind.ANSWER_IS, label="YES")


def rule(
    condition: AlertCondition = YES,
    *,
    rule_id: str = "alr_1",
    consecutive: int = 1,
    cooldown_s: float = 0.0,
    enabled: bool = True,
    name: str = "door open",
) -> AlertRule:
    return AlertRule(
        id=rule_id,
        detector_id=DETECTOR,
        created_at=datetime.now(UTC),
        name=name,
        condition=condition,
        consecutive=consecutive,
        cooldown_s=cooldown_s,
        enabled=enabled,
    )


def feed(r: AlertRule, streak: Streak, answers: list[str | int], start: float = 0.0) -> list[int | None]:
    """observe() once per answer, one second apart; an int is a COUNT answer (its label is the digits)."""
    return [
        observe(
            r,
            streak,
            label=str(a),
            count=a if isinstance(a, int) else None,
            now=start + i,
        )
        for i, a in enumerate(answers)
    ]


# -- common.alerts ---------------------------------------------------------------------------------


def test_n_in_a_row_fires_once_then_starts_again() -> None:
    r, streak = rule(consecutive=3), Streak()
    assert feed(r, streak, ["YES"] * 7) == [None, None, 3, None, None, 3, None]
    assert streak.length == 1 and streak.last_fired_at == 5


def test_a_mismatch_resets_the_streak() -> None:
    r, streak = rule(consecutive=2), Streak()
    assert feed(r, streak, ["YES", "NO", "YES", "YES"]) == [None, None, None, 2]
    assert feed(rule(), Streak(), ["yes", "NO"]) == [None, None]  # labels match exactly


def test_the_cooldown_holds_then_fires_on_the_next_match() -> None:
    r, streak = rule(consecutive=2, cooldown_s=60.0), Streak()
    assert feed(r, streak, ["YES", "YES"]) == [None, 2]  # fired at t=1
    # Complete again inside the cooldown: held, and the streak keeps growing.
    assert feed(r, streak, ["YES", "YES", "YES"], start=2.0) == [None, None, None]
    assert streak.length == 3
    assert observe(r, streak, label="YES", count=None, now=61.0) == 4  # 60 s after the firing
    # A mismatch inside the next cooldown still resets.
    assert feed(r, streak, ["YES", "NO", "YES"], start=62.0) == [None, None, None]
    assert streak.length == 1


def test_a_disabled_rule_never_fires_nor_counts() -> None:
    streak = Streak()
    assert feed(rule(enabled=False), streak, ["YES"] * 3) == [None] * 3
    assert streak == Streak()


def test_count_above_and_below() -> None:
    above = rule(AlertCondition(kind=AlertConditionKind.COUNT_ABOVE, count=3), consecutive=2)
    assert feed(above, Streak(), [4, 3, 5, 9]) == [None, None, None, 2]
    below = rule(AlertCondition(kind=AlertConditionKind.COUNT_BELOW, count=1))
    assert feed(below, Streak(), [1, 0]) == [None, 1]
    # No count (another kind of detector): never a match, and it breaks a streak.
    streak = Streak()
    assert feed(above, streak, [5]) == [None]
    assert observe(above, streak, label="YES", count=None, now=9.0) is None and streak.length == 0


def test_answer_is_on_a_count_detector_compares_the_label() -> None:
    three = rule(AlertCondition(kind=AlertConditionKind.ANSWER_IS, label="3"), consecutive=2)
    assert feed(three, Streak(), [3, 2, 3, 3]) == [None, None, None, 2]


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "answer_is"},
        {"kind": "answer_is", "label": "YES", "count": 1},
        {"kind": "count_above"},
        {"kind": "count_below", "count": 1, "label": "YES"},
    ],
)
def test_a_condition_takes_its_own_operand_only(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertCondition.model_validate(fields)


# -- edge.api.alerts.watcher ----------------------------------------------------------------------


class Rules:
    """A PriorBook stand-in: the prior at hand per detector."""

    def __init__(self) -> None:
        self.priors: dict[str, DetectorPrior] = {}

    def set(self, *rules: AlertRule) -> None:
        self.priors[DETECTOR] = DetectorPrior(
            detector_id=DETECTOR, mode=DetectorMode.BINARY, labels=["YES", "NO"], counts=[0, 0],
            alert_rules=list(rules),
        )  # fmt: skip

    def known(self, detector_id: str) -> DetectorPrior | None:
        return self.priors.get(detector_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EdgeStore]:
    s = EdgeStore(tmp_path / "edge.sqlite3")
    await s.open()
    yield s
    await s.close()


def answer(label: str, iq_id: str = "iq_1") -> ImageQuery:
    return ImageQuery(
        id=iq_id,
        created_at="2024-01-01T00:00:00Z",
        query="Is the door open?",
        detector_id=DETECTOR,
        result_type=ResultType.BINARY,
        result=make_result(DetectorMode.BINARY, label, 0.97, ResultSource.ALGORITHM, True),
        patience_time=30.0,
        confidence_threshold=0.9,
        done_processing=True,
    )


async def test_the_watcher_feeds_confident_answers_and_stores_each_firing_before_it_returns(
    store: EdgeStore,
) -> None:
    rules, woken = Rules(), []
    metrics = EdgeMetrics()
    watcher = AlertWatcher(store, rules, metrics, on_firing=lambda: woken.append(1))
    assert await watcher.watch(answer("YES"), confident=True) == []  # no rules: nothing kept
    rules.set(rule(consecutive=2, cooldown_s=300.0))

    assert await watcher.watch(answer("YES", "iq_a"), confident=True) == []
    assert await watcher.watch(answer("NO", "iq_b"), confident=False) == []  # unsure: not fed
    (firing,) = await watcher.watch(answer("YES", "iq_c"), confident=True)

    assert (firing.rule_id, firing.image_query_id, firing.label, firing.streak) == ("alr_1", "iq_c", "YES", 2)
    assert firing.confidence == 0.97 and firing.count is None and firing.fired_at.tzinfo is not None
    assert len(firing.firing_id) >= 22 and woken == [1]
    (kept,) = await store.run(lambda: store.pending_firings(10))
    assert (kept.firing_id, AlertFiring.model_validate_json(kept.body)) == (firing.firing_id, firing)
    assert metrics.alert_firings.labels(DETECTOR, "alr_1")._value.get() == 1


async def test_a_streak_survives_a_rename_but_not_a_new_condition_and_goes_with_its_rule(
    store: EdgeStore,
) -> None:
    rules = Rules()
    watcher = AlertWatcher(store, rules, EdgeMetrics(), on_firing=lambda: None)

    async def fired(label: str = "YES") -> int:
        return len(await watcher.watch(answer(label), confident=True))

    rules.set(rule(consecutive=2))
    assert await fired() == 0
    rules.set(rule(consecutive=2, name="renamed", cooldown_s=5.0))  # a new prior, same streak
    assert await fired() == 1
    assert await fired() == 0
    rules.set(rule(AlertCondition(kind=AlertConditionKind.ANSWER_IS, label="NO"), consecutive=2))
    assert await fired("NO") == 0  # the edited rule counts from zero
    rules.set()  # the rule is gone: so is its streak
    assert await fired("NO") == 0
    rules.set(rule(AlertCondition(kind=AlertConditionKind.ANSWER_IS, label="NO"), consecutive=2))
    assert await fired("NO") == 0 and await fired("NO") == 1


async def test_a_firing_the_store_cannot_keep_does_not_fail_the_answer(
    store: EdgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, woken = Rules(), []
    rules.set(rule())
    watcher = AlertWatcher(store, rules, EdgeMetrics(), on_firing=lambda: woken.append(1))

    def broken(_: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "add_firings", broken)
    assert len(await watcher.watch(answer("YES"), confident=True)) == 1
    assert woken == []


# -- edge.api.alerts.firing_sender ----------------------------------------------------------------


async def sender_for(
    store: EdgeStore, reply: Callable[[dict[str, Any]], httpx.Response], count: int = 3
) -> tuple[FiringSender, list[str], CloudLink]:
    """A sender whose cloud answers with `reply(batch JSON)`, and the ids of `count` stored firings."""
    rules = Rules()
    rules.set(rule())
    watcher = AlertWatcher(store, rules, EdgeMetrics(), on_firing=lambda: None)
    ids = [(await watcher.watch(answer("YES", f"iq_{i}"), confident=True))[0].firing_id for i in range(count)]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == FIRINGS_PATH and request.headers["x-api-token"] == "tok"
        return reply(json.loads(request.content))

    http = httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(handler))
    link = CloudLink("http://cloud")
    sender = FiringSender(
        store,
        http,
        link,
        EdgeMetrics(),
        api_token="tok",
        edge_id="edge-1",
        retry_base_s=0.01,
        retry_max_s=0.1,
    )
    return sender, ids, link


def states(store: EdgeStore) -> dict[str, str]:
    return {str(i): str(s) for i, s in store.fast.execute("SELECT firing_id, state FROM alert_firings")}


async def test_recorded_firings_leave_refused_ones_die_and_unnamed_ones_stay(store: EdgeStore) -> None:
    seen: list[dict[str, Any]] = []

    def reply(batch: dict[str, Any]) -> httpx.Response:
        seen.append(batch)
        a, b, _ = (f["firing_id"] for f in batch["firings"])
        return httpx.Response(
            200, json={"recorded": [a], "refused": [{"firing_id": b, "error": "rule gone"}]}
        )

    sender, (a, b, c), _ = await sender_for(store, reply)
    with pytest.raises(Backoff):  # c was not acknowledged: it goes again, later
        await sender.send_once()
    assert [f["firing_id"] for f in seen[0]["firings"]] == [a, b, c] and seen[0]["edge_id"] == "edge-1"
    assert states(store) == {b: "dead", c: "pending"}
    assert sender.last_error == "the cloud's ack did not name it"


@pytest.mark.parametrize(("status", "dead"), [(503, False), (429, False), (401, False), (422, True)])
async def test_what_a_batch_refused_whole_does_to_its_firings(
    store: EdgeStore, status: int, dead: bool
) -> None:
    sender, ids, _ = await sender_for(store, lambda _: httpx.Response(status, json={"detail": "no"}))
    if dead:
        assert await sender.send_once() is True
    else:
        with pytest.raises(Backoff):
            await sender.send_once()
    assert states(store) == dict.fromkeys(ids, "dead" if dead else "pending")
    assert str(status) in (sender.last_error or "")


async def test_an_unreachable_cloud_keeps_everything_and_marks_the_link_down(store: EdgeStore) -> None:
    def reply(_: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    sender, ids, link = await sender_for(store, reply, count=1)
    with pytest.raises(Backoff) as caught:
        await sender.send_once()
    assert caught.value.unreachable and link.reachable is False
    assert states(store) == {ids[0]: "pending"}
