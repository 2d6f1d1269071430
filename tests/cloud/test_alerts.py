"""Alert rules, notifications and webhook deliveries against a real cloud process and a real receiver:
edge firings recorded once per firing id, the cloud's own answers watched, ops events recorded once
per occurrence, deliveries signed, retried after a 500, redelivered after a lost claim with the same
Idempotency-Key, and kept across a cloud-api restart. The worker's two steps run in this process
(not a whole tick: the session database holds other modules' detectors)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from cloud.app.core.webhook_delivery import verify_signature
from cloud.app.db.models import Hub, JobStatus, TrainingJob, WebhookDelivery
from tests.cloud.test_sdk_cloud import upload_production_model
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.cloud_factories_worker import sessions_for
from tests.support.webhooks import WebhookReceiver, run_worker, worker_settings


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def deliver_until(cloud_db: support.TestDatabase, data_dir: Path, done: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries did not settle"
        run_worker(cloud_db.url, data_dir)
        time.sleep(0.1)


def make_webhook(admin: httpx.Client, receiver: WebhookReceiver, events: list[str]) -> dict[str, Any]:
    resp = admin.post(
        "/api/v1/webhooks",
        json={"name": f"hook-{secrets.token_hex(4)}", "url": receiver.url, "events": events},
    )
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


def firing(rule: dict[str, Any], firing_id: str, label: str = "YES", streak: int = 3) -> dict[str, Any]:
    return {
        "firing_id": firing_id,
        "rule_id": rule["id"],
        "detector_id": rule["detector_id"],
        "image_query_id": f"iq_{secrets.token_hex(8)}",
        "label": label,
        "count": None,
        "confidence": 0.97,
        "streak": streak,
        "fired_at": datetime.now(UTC).isoformat(),
    }


def events_of(admin: httpx.Client, **params: str) -> list[dict[str, Any]]:
    resp = admin.get("/api/v1/notifications", params={"limit": "200", **params})
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()
    return events


def test_rules_are_checked_against_their_detector(admin: httpx.Client, factory: CloudFactory) -> None:
    detector = factory.detector(name=f"gate-{secrets.token_hex(3)}")
    path = f"/api/v1/detectors/{detector}/alert-rules"
    wrong_label = {"name": "r", "condition": {"kind": "answer_is", "label": "MAYBE"}}
    assert admin.post(path, json=wrong_label).status_code == 400
    counting = {"name": "r", "condition": {"kind": "count_above", "count": 3}}
    assert "COUNT" in admin.post(path, json=counting).json()["detail"]
    both = {"name": "r", "condition": {"kind": "answer_is", "label": "YES", "count": 2}}
    assert admin.post(path, json=both).status_code == 400
    ghost = {"name": "r", "condition": {"kind": "answer_is", "label": "YES"}, "webhook_ids": ["whk_nope"]}
    assert admin.post(path, json=ghost).status_code == 400
    assert admin.post(path, json={**wrong_label, "consecutive": 0}).status_code in (400, 422)
    ok = admin.post(path, json={"name": "open", "condition": {"kind": "answer_is", "label": "YES"}})
    assert ok.status_code == 201 and ok.json()["consecutive"] == 1
    assert admin.post("/api/v1/detectors/det_missing/alert-rules", json=ok.json()).status_code in (404, 422)


def test_the_prior_gives_edges_the_enabled_rules(
    cloud: CloudServer, admin: httpx.Client, factory: CloudFactory
) -> None:
    detector = factory.detector(name=f"prior-rules-{secrets.token_hex(3)}")
    path = f"/api/v1/detectors/{detector}/alert-rules"
    on = admin.post(path, json={"name": "on", "condition": {"kind": "answer_is", "label": "NO"}}).json()
    off = {"name": "off", "condition": {"kind": "answer_is", "label": "YES"}, "enabled": False}
    assert admin.post(path, json=off).status_code == 201
    with cloud.client() as device:
        prior = device.get(f"/edge-api/v1/detectors/{detector}/prior").json()
    assert [rule["id"] for rule in prior["alert_rules"]] == [on["id"]]


def test_an_edge_firing_is_delivered_once_signed_and_retried_after_a_500(
    cloud: CloudServer,
    cloud_db: support.TestDatabase,
    admin: httpx.Client,
    factory: CloudFactory,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    hook = make_webhook(admin, receiver, ["alert"])
    detector = factory.detector(name=f"doors-{secrets.token_hex(3)}")
    rule = admin.post(
        f"/api/v1/detectors/{detector}/alert-rules",
        json={
            "name": "door open",
            "condition": {"kind": "answer_is", "label": "YES"},
            "consecutive": 3,
            "webhook_ids": [hook["id"]],
        },
    ).json()
    fired = firing(rule, "edge1-" + secrets.token_hex(8))
    with cloud.client() as device:
        for _ in range(2):  # the edge lost the first ack and sends again
            ack = device.post("/edge-api/v1/alerts/firings", json={"edge_id": "edge-1", "firings": [fired]})
            assert ack.status_code == 200 and ack.json() == {"recorded": [fired["firing_id"]], "refused": []}
    events = events_of(admin, detector_id=detector)
    assert len(events) == 1 and events[0]["kind"] == "alert" and events[0]["rule_id"] == rule["id"]
    assert "door open" in events[0]["title"] and "3 times in a row" in events[0]["title"]
    assert [d["status"] for d in events[0]["deliveries"]] == ["pending"]

    receiver.answers.extend([500])
    before = len(receiver.requests)
    run_worker(cloud_db.url, tmp_path)
    delivery = events_of(admin, detector_id=detector)[0]["deliveries"][0]
    assert delivery["status"] == "pending" and delivery["attempts"] == 1 and delivery["last_status"] == 500
    deliver_until(
        cloud_db,
        tmp_path,
        lambda: events_of(admin, detector_id=detector)[0]["deliveries"][0]["status"] == "delivered",
    )
    attempts = [r for r in receiver.requests[before:] if r.headers.get("idempotency-key") == delivery["id"]]
    assert [r.status for r in attempts] == [500, 200]
    assert attempts[0].body == attempts[1].body
    assert [r.headers["x-intellioptics-attempt"] for r in attempts] == ["1", "2"]
    for req in attempts:
        assert verify_signature(hook["secret"], req.headers["x-intellioptics-signature"], req.body)
        assert not verify_signature("whsec_wrong", req.headers["x-intellioptics-signature"], req.body)
        assert not verify_signature(hook["secret"], req.headers["x-intellioptics-signature"], req.body + b" ")
    body = attempts[1].json
    assert body["kind"] == "alert" and body["rule_id"] == rule["id"] and body["detector_id"] == detector
    assert (
        body["data"]["streak"] == 3 and body["data"]["label"] == "YES" and body["data"]["edge_id"] == "edge-1"
    )
    assert body["data"]["image_query_id"] == fired["image_query_id"]
    # Delivered means done: more rounds send nothing more.
    run_worker(cloud_db.url, tmp_path)
    assert len([r for r in receiver.requests if r.headers.get("idempotency-key") == delivery["id"]]) == 2


def test_firings_that_can_never_count_are_refused(
    cloud: CloudServer, admin: httpx.Client, factory: CloudFactory
) -> None:
    one = factory.detector(name=f"one-{secrets.token_hex(3)}")
    other = factory.detector(name=f"other-{secrets.token_hex(3)}")
    rule = admin.post(
        f"/api/v1/detectors/{one}/alert-rules",
        json={"name": "r", "condition": {"kind": "answer_is", "label": "NO"}},
    ).json()
    paused = admin.post(
        f"/api/v1/detectors/{one}/alert-rules",
        json={"name": "p", "condition": {"kind": "answer_is", "label": "NO"}, "enabled": False},
    ).json()
    misplaced = {**firing(rule, "f-" + secrets.token_hex(8)), "detector_id": other}
    ghost = {**firing(rule, "f-" + secrets.token_hex(8)), "rule_id": "alr_gone"}
    disabled = firing(paused, "f-" + secrets.token_hex(8))
    with cloud.client() as device:
        ack = device.post(
            "/edge-api/v1/alerts/firings", json={"firings": [misplaced, ghost, disabled]}
        ).json()
        assert ack["recorded"] == [] and len(ack["refused"]) == 3
        bad = {**firing(rule, "short"), "confidence": 2}
        assert device.post("/edge-api/v1/alerts/firings", json={"firings": [bad]}).status_code in (400, 422)
        assert device.post("/edge-api/v1/alerts/firings", json={"firings": []}).status_code in (400, 422)
    assert events_of(admin, detector_id=one) == [] and events_of(admin, detector_id=other) == []


def test_the_cloud_watches_its_own_confident_answers(
    cloud: CloudServer,
    admin: httpx.Client,
    factory: CloudFactory,
    demo_models: Path,
    digits: list[tuple[bytes, int]],
    tmp_path: Path,
) -> None:
    detector = factory.detector(name=f"sevens-{secrets.token_hex(3)}")
    upload_production_model(admin, demo_models, detector, tmp_path)
    path = f"/api/v1/detectors/{detector}/alert-rules"
    for label in ("YES", "NO"):
        spec = {"name": f"is {label}", "condition": {"kind": "answer_is", "label": label}, "consecutive": 2}
        assert admin.post(path, json={**spec, "cooldown_s": 0}).status_code == 201
    seven = next(image for image, digit in digits if digit == 7)
    with cloud.client() as device:
        answers = [
            device.post(
                "/device-api/v1/image-queries",
                params={"detector_id": detector, "confidence_threshold": "0.01"},
                content=seven,
            ).json()
            for _ in range(5)
        ]
    labels = {a["result"]["label"] for a in answers}
    assert len(labels) == 1 and all(a["done_processing"] for a in answers)
    events = [e for e in events_of(admin, detector_id=detector) if e["kind"] == "alert"]
    # Five answers in a row: fired after the 2nd and the 4th; the 5th starts a new streak.
    assert len(events) == 2 and all(e["data"]["source"] == "cloud" for e in events)
    assert {e["data"]["label"] for e in events} == labels
    assert {e["data"]["image_query_id"] for e in events} == {answers[1]["id"], answers[3]["id"]}


def test_ops_events_are_recorded_once_each(
    cloud: CloudServer,
    cloud_db: support.TestDatabase,
    admin: httpx.Client,
    factory: CloudFactory,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    make_webhook(admin, receiver, ["edge_offline", "training_failed", "escalations_waiting"])
    edge_id = f"quiet-{secrets.token_hex(3)}"
    factory.hub(edge_id, {})
    detector = factory.detector(name=f"late-{secrets.token_hex(3)}")
    factory.review_items(detector, 2)
    job_id = f"tj_{secrets.token_hex(6)}"

    async def age(session: Any) -> None:
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        await session.execute(update(Hub).where(Hub.id == edge_id).values(last_seen_at=long_ago))
        from cloud.app.db.models import ReviewItem

        await session.execute(
            update(ReviewItem).where(ReviewItem.detector_id == detector).values(deadline=long_ago)
        )
        session.add(
            TrainingJob(
                id=job_id,
                detector_id=detector,
                status=JobStatus.FAILED,
                error="CUDA out of memory\ntraceback…",
                finished_at=datetime.now(UTC),
            )
        )
        await session.commit()

    async def prepare() -> None:
        async with sessions_for(cloud_db.url) as sessions, sessions() as session:
            await age(session)

    asyncio.run(prepare())
    for _ in range(2):  # the second scan sees the same state: nothing new
        run_worker(cloud_db.url, tmp_path, notify=True)
    mine = [
        e for e in events_of(admin) if e["detector_id"] == detector or e["data"].get("edge_id") == edge_id
    ]
    kinds = sorted(e["kind"] for e in mine)
    assert kinds == ["edge_offline", "escalations_waiting", "training_failed"], kinds
    failed = next(e for e in mine if e["kind"] == "training_failed")
    assert "CUDA out of memory" in failed["title"] and "traceback" not in failed["title"]
    waiting = next(e for e in mine if e["kind"] == "escalations_waiting")
    assert waiting["data"]["waiting"] == 2
    deliver_until(
        cloud_db,
        tmp_path,
        lambda: all(
            d["status"] == "delivered" for e in events_of(admin) if e in mine for d in e["deliveries"]
        ),
    )
    # The edge comes back and goes quiet again: a new silence is a new event.
    factory_now = datetime.now(UTC) - timedelta(minutes=30)

    async def back_and_quiet(session: Any) -> None:
        await session.execute(update(Hub).where(Hub.id == edge_id).values(last_seen_at=factory_now))
        await session.commit()

    async def again() -> None:
        async with sessions_for(cloud_db.url) as sessions, sessions() as session:
            await back_and_quiet(session)

    asyncio.run(again())
    run_worker(cloud_db.url, tmp_path, notify=True)
    offline = [e for e in events_of(admin) if e["kind"] == "edge_offline" and e["data"]["edge_id"] == edge_id]
    assert len(offline) == 2


def test_a_promotion_notifies(
    cloud: CloudServer, admin: httpx.Client, factory: CloudFactory, demo_models: Path, tmp_path: Path
) -> None:
    detector = factory.detector(name=f"promoted-{secrets.token_hex(3)}")
    upload_production_model(admin, demo_models, detector, tmp_path)
    events = events_of(admin, detector_id=detector)
    assert [e["kind"] for e in events] == ["model_promoted"]
    assert "promoted" in events[0]["title"] and events[0]["data"]["action"] == "model.promote"


def test_deliveries_outlive_a_restart_and_a_lost_claim(
    cloud: CloudServer,
    cloud_db: support.TestDatabase,
    admin: httpx.Client,
    factory: CloudFactory,
    tmp_path: Path,
) -> None:
    down = WebhookReceiver()  # not started: its port refuses connections
    hook = make_webhook(admin, down, ["alert"])
    detector = factory.detector(name=f"restart-{secrets.token_hex(3)}")
    rule = admin.post(
        f"/api/v1/detectors/{detector}/alert-rules",
        json={"name": "r", "condition": {"kind": "answer_is", "label": "YES"}, "webhook_ids": [hook["id"]]},
    ).json()
    with cloud.client() as device:
        fired = firing(rule, "restart-" + secrets.token_hex(8))
        assert device.post("/edge-api/v1/alerts/firings", json={"firings": [fired]}).status_code == 200
    run_worker(cloud_db.url, tmp_path)  # refused connection: attempt 1 fails
    delivery = events_of(admin, detector_id=detector)[0]["deliveries"][0]
    assert (
        delivery["status"] == "pending" and delivery["attempts"] == 1 and "Connect" in delivery["last_error"]
    )

    cloud.stop()
    cloud.start()
    down.start()
    try:
        # A worker claims it and dies before recording: its claim runs out and another sends again.
        async def lose_claim() -> None:
            async with sessions_for(cloud_db.url) as sessions, sessions() as session:
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery["id"])
                    .values(next_attempt_at=datetime.now(UTC))
                )
                await session.commit()
                from cloud.app.core.webhook_delivery import claim_due, send
                from cloud.worker.loop import retry_policy

                retry = retry_policy(worker_settings(cloud_db.url, tmp_path))
                claimed = [
                    c
                    for c in await claim_due(session, "doomed-worker", 50, retry)
                    if c.delivery_id == delivery["id"]
                ]
                async with httpx.AsyncClient() as http:
                    await send(http, claimed[0], 5)  # delivered, but the outcome is never recorded
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery["id"])
                    .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
                await session.commit()

        asyncio.run(lose_claim())
        deliver_until(
            cloud_db,
            tmp_path,
            lambda: events_of(admin, detector_id=detector)[0]["deliveries"][0]["status"] == "delivered",
        )
        sent = [r for r in down.requests if r.headers["idempotency-key"] == delivery["id"]]
        assert len(sent) == 2 and sent[0].body == sent[1].body
        assert list(down.delivered()) == [delivery["id"]]  # one delivery for a deduping receiver
    finally:
        down.stop()

    async def attempts() -> int:
        async with sessions_for(cloud_db.url) as sessions, sessions() as session:
            row = (
                await session.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery["id"]))
            ).scalar_one()
            return row.attempts

    assert asyncio.run(attempts()) == 3
