"""Watches this edge's confident answers for its detectors' alert rules (docs/architecture.md §12).

The rules come with each detector's prior (common.wire.priors.DetectorPrior.alert_rules), so the
watcher reads what the PriorBook holds and never asks the cloud itself. Streaks live in memory, one
per rule id and streak-defining spec (condition, consecutive): an edited condition starts afresh, a
renamed rule or a new cooldown keeps its streak. A restart forgets streaks and cooldowns, so a rule
may fire again soon after one. A firing is on disk (fsync) before the answer that fired it is
returned, so a crash cannot lose it; edge.api.alerts.firing_sender delivers it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydantic import ValidationError

from common.alerts import Streak, observe
from common.wire.alerts import AlertFiring, AlertRule
from common.wire.device_api import ImageQuery
from common.wire.priors import DetectorPrior
from edge.api.core.store import EdgeStore, StoredFiring
from edge.api.metrics import EdgeMetrics

log = logging.getLogger("edge.alerts")


class RuleSource(Protocol):
    """edge.api.core.priors.PriorBook: the prior at hand, never waiting for the cloud."""

    def known(self, detector_id: str) -> DetectorPrior | None: ...


def new_firing_id() -> str:
    """22 url-safe characters (128 random bits): unique without asking anyone."""
    return secrets.token_urlsafe(16)


def streak_key(rule: AlertRule) -> str:
    """Rule id plus what a streak counts towards; other fields may change under a running streak."""
    spec = f"{rule.condition.model_dump_json()}|{rule.consecutive}"
    return f"{rule.id}:{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


@dataclass
class _Watched:
    """One detector's rules as last seen; rebuilt only when its prior object changes."""

    source: list[AlertRule]
    rules: list[tuple[AlertRule, str]]
    streaks: dict[str, Streak] = field(default_factory=dict)


class AlertWatcher:
    def __init__(
        self,
        store: EdgeStore,
        rules: RuleSource,
        metrics: EdgeMetrics,
        on_firing: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._rules = rules
        self._metrics = metrics
        self._on_firing = on_firing
        self._clock = clock  # cooldowns: monotonic, so a wall-clock step neither holds nor frees them
        self._watched: dict[str, _Watched] = {}

    async def watch(self, iq: ImageQuery, *, confident: bool) -> list[AlertFiring]:
        """The firings of one answered query, stored before this returns."""
        result = iq.result
        if result is None or result.label is None:
            return []
        return await self.observe(
            iq.detector_id,
            iq.id,
            label=result.label,
            count=result.count,
            confidence=result.confidence or 0.0,
            confident=confident,
        )

    async def observe(
        self,
        detector_id: str,
        image_query_id: str,
        *,
        label: str,
        count: int | None,
        confidence: float,
        confident: bool,
    ) -> list[AlertFiring]:
        """Feed one answer to the detector's rules. Unsure answers (the caller's judgement: below the
        threshold, or out of domain) are left out entirely, as common.alerts requires."""
        if not confident:
            return []
        prior = self._rules.known(detector_id)
        source = prior.alert_rules if prior is not None else None
        if not source:
            if self._watched:
                self._watched.pop(detector_id, None)
            return []
        watched = self._watched.get(detector_id)
        if watched is None or watched.source is not source:
            watched = self._rebuild(detector_id, source, watched)
        now = self._clock()
        fired: list[AlertFiring] = []
        for rule, key in watched.rules:
            length = observe(rule, watched.streaks[key], label=label, count=count, now=now)
            if length is None:
                continue
            try:
                firing = AlertFiring(
                    firing_id=new_firing_id(),
                    rule_id=rule.id,
                    detector_id=detector_id,
                    image_query_id=image_query_id,
                    label=label,
                    count=count,
                    confidence=confidence,
                    streak=length,
                    fired_at=datetime.now(UTC),
                )
            except ValidationError as exc:  # a rule id or label the wire refuses: the cloud would too
                log.warning(
                    "alert firing not representable; dropped",
                    extra={"fields": {"rule_id": rule.id, "error": exc.errors()[0]["msg"]}},
                )
                continue
            fired.append(firing)
        if fired:
            await self._keep(fired)
        return fired

    def _rebuild(self, detector_id: str, source: list[AlertRule], old: _Watched | None) -> _Watched:
        """Keep the streaks of rules still present with the same spec; drop the rest."""
        rules = [(rule, streak_key(rule)) for rule in source if rule.detector_id == detector_id]
        kept = old.streaks if old is not None else {}
        watched = _Watched(source, rules, {key: kept.get(key, Streak()) for _, key in rules})
        self._watched[detector_id] = watched
        return watched

    async def _keep(self, fired: list[AlertFiring]) -> None:
        now = time.time()
        rows = [StoredFiring(f.firing_id, f.detector_id, f.model_dump_json(), now) for f in fired]
        try:
            await self._store.run(lambda: self._store.add_firings(rows))
        except sqlite3.Error:
            # The answer is recorded already and must still be given; this firing is lost, loudly.
            log.exception(
                "alert firings not stored", extra={"fields": {"firing_ids": [f.firing_id for f in fired]}}
            )
            return
        for f in fired:
            self._metrics.alert_firings.labels(f.detector_id, f.rule_id).inc()
            log.info(
                "alert fired",
                extra={
                    "fields": {
                        "firing_id": f.firing_id,
                        "rule_id": f.rule_id,
                        "detector_id": f.detector_id,
                        "image_query_id": f.image_query_id,
                        "label": f.label,
                        "count": f.count,
                        "streak": f.streak,
                    }
                },
            )
        self._on_firing()
