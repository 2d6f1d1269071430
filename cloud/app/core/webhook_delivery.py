"""Sending webhook deliveries, signed, at least once (docs/alerts.md).

The worker claims due pending deliveries with a lease (`QUEUE`, a cloud.app.core.lease_queue: one
UPDATE picking them `FOR UPDATE SKIP LOCKED`, so several workers never send one delivery at the same
time), sends each, and records the outcome (only while its claim is still its own): 2xx is delivered;
anything else (a refused connection, a timeout, a 3xx, 4xx or 5xx) is retried after a wait that doubles
from `webhook_retry_base_s` up to `webhook_retry_max_s`, until `webhook_max_attempts`, then dead. A
worker that dies while sending leaves its claim to expire and the delivery is sent again: receivers
dedupe on the `Idempotency-Key` header, the delivery id, which every attempt of a delivery repeats.

Each request is a JSON POST signed the way receivers check it (`verify_signature`):
`X-IntelliOptics-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed by the
webhook's secret>`. The timestamp lets a receiver refuse replays older than a few minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import httpx
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.core.detectors import iso_utc
from cloud.app.core.lease_queue import LeaseQueue
from cloud.app.db.models import DeliveryStatus, NotificationEvent, Webhook, WebhookDelivery
from cloud.app.errors import NotFoundError

log = logging.getLogger("cloud.webhooks")

SIGNATURE_HEADER = "X-IntelliOptics-Signature"
EVENT_HEADER = "X-IntelliOptics-Event"
DELIVERY_HEADER = "X-IntelliOptics-Delivery"
ATTEMPT_HEADER = "X-IntelliOptics-Attempt"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A claim outlives one attempt's timeout by this much before another worker may send it again.
LEASE_SLACK_S = 30.0
MAX_ERROR_CHARS = 500
# Deliveries stay pending while a worker sends them: the lease columns say who does.
QUEUE = LeaseQueue(
    cast(Table, WebhookDelivery.__table__),
    waiting=DeliveryStatus.PENDING.value,
    leased=DeliveryStatus.PENDING.value,
    order=("next_attempt_at", "id"),
)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """What a receiver runs: the signature is ours, over these bytes, and recent."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def payload(event: NotificationEvent, delivery_id: str) -> bytes:
    """The body every attempt of a delivery repeats, byte for byte."""
    return json.dumps(
        {
            "delivery_id": delivery_id,
            "event_id": event.id,
            "kind": event.kind,
            "title": event.title,
            "detector_id": event.detector_id,
            "rule_id": event.rule_id,
            "created_at": iso_utc(event.created_at),
            "data": event.data,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


@dataclass(frozen=True)
class Retry:
    base_s: float
    max_s: float
    max_attempts: int
    timeout_s: float

    def wait_s(self, attempts: int, draw: float) -> float:
        """Before attempt `attempts + 1`: doubling, capped, with ±10 % jitter so that a receiver that
        comes back is not hit by every delivery in the same second."""
        doubled: float = self.base_s * 2.0 ** max(0, attempts - 1)
        return min(self.max_s, doubled) * (0.9 + 0.2 * draw)


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    attempt: int
    url: str
    secret: str
    kind: str
    body: bytes


async def claim_due(session: AsyncSession, owner: str, limit: int, retry: Retry) -> list[Claimed]:
    """Up to `limit` due deliveries of enabled webhooks, leased to `owner`, their attempt counted."""
    now = datetime.now(UTC)
    lease_until = now + timedelta(seconds=retry.timeout_s + LEASE_SLACK_S)
    lease = QUEUE.claim(
        owner,
        lease_until,
        now,
        WebhookDelivery.next_attempt_at <= now,
        WebhookDelivery.webhook_id.in_(select(Webhook.id).where(Webhook.enabled.is_(True))),
        limit=limit,
        attempts=WebhookDelivery.attempts + 1,
        last_attempt_at=now,
    ).returning(WebhookDelivery.id, WebhookDelivery.attempts)
    taken: dict[str, int] = {row.id: row.attempts for row in await session.execute(lease)}
    claimed = []
    if taken:
        rows = await session.execute(
            select(WebhookDelivery.id, Webhook.url, Webhook.secret, NotificationEvent)
            .join_from(WebhookDelivery, Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .join(NotificationEvent, NotificationEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id.in_(list(taken)))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        )
        for delivery_id, url, secret, event in rows:
            body = payload(event, delivery_id)
            claimed.append(Claimed(delivery_id, taken[delivery_id], url, secret, event.kind, body))
    await session.commit()
    return claimed


@dataclass(frozen=True)
class Attempt:
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def send(http: httpx.AsyncClient, claimed: Claimed, timeout_s: float) -> Attempt:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "IntelliOptics-Webhooks/1",
        SIGNATURE_HEADER: sign(claimed.secret, claimed.body, int(time.time())),
        EVENT_HEADER: claimed.kind,
        DELIVERY_HEADER: claimed.delivery_id,
        IDEMPOTENCY_HEADER: claimed.delivery_id,
        ATTEMPT_HEADER: str(claimed.attempt),
    }
    try:
        resp = await http.post(
            claimed.url, content=claimed.body, headers=headers, timeout=timeout_s, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
    if 200 <= resp.status_code < 300:
        return Attempt(resp.status_code, None)
    return Attempt(resp.status_code, f"receiver answered {resp.status_code}: {resp.text[:200]}")


async def record_attempt(
    session: AsyncSession, claimed: Claimed, owner: str, attempt: Attempt, retry: Retry
) -> DeliveryStatus:
    """Only the claim's owner records (a claim that expired and was taken over is the new owner's)."""
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "last_status": attempt.status,
        "last_error": attempt.error,
    }
    if attempt.delivered:
        outcome = DeliveryStatus.DELIVERED
        values.update(status=outcome, delivered_at=now)
    elif claimed.attempt >= retry.max_attempts:
        outcome = DeliveryStatus.DEAD
        values.update(status=outcome)
    else:
        outcome = DeliveryStatus.PENDING
        wait = retry.wait_s(claimed.attempt, random.random())
        values.update(next_attempt_at=now + timedelta(seconds=wait))
    await session.execute(QUEUE.as_holder(claimed.delivery_id, owner).values(values))
    await session.commit()
    return outcome


async def deliver_due(
    sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    owner: str,
    retry: Retry,
    limit: int = 16,
) -> dict[str, int]:
    """One round: claim, send concurrently, record. Returns the outcomes counted."""
    async with sessions() as session:
        claimed = await claim_due(session, owner, limit, retry)
    if not claimed:
        return {}
    attempts = await asyncio.gather(*(send(http, c, retry.timeout_s) for c in claimed))
    counts: dict[str, int] = {}
    async with sessions() as session:
        for item, attempt in zip(claimed, attempts, strict=True):
            outcome = await record_attempt(session, item, owner, attempt, retry)
            counts[outcome.value] = counts.get(outcome.value, 0) + 1
            log.info(
                "webhook delivery attempted",
                extra={
                    "fields": {
                        "delivery_id": item.delivery_id,
                        "attempt": item.attempt,
                        "status": attempt.status,
                        "outcome": outcome.value,
                        "error": attempt.error,
                    }
                },
            )
    return counts


async def redeliver(session: AsyncSession, delivery_id: str) -> WebhookDelivery:
    """An admin sends a dead (or delivered) delivery again: pending now, attempts from zero, same id."""
    row = await session.get(WebhookDelivery, delivery_id)
    if row is None:
        raise NotFoundError(f"webhook delivery {delivery_id} not found")
    row.status = DeliveryStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = datetime.now(UTC)
    row.lease_owner = None
    row.lease_expires_at = None
    row.delivered_at = None
    await session.flush()
    return row
