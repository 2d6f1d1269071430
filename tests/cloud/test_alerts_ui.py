"""The alerts page in headless Chromium: an administrator creates a webhook (its secret shown once)
and an alert rule from the page; a firing from an edge is delivered, signed, after a receiver's 500,
and the page's delivery log shows each step; a dead delivery is sent again from the page. Reviewers
get no alerts page. The page fits a 390 px phone and follows the dark colour scheme."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from cloud.app.core.webhook_delivery import verify_signature
from cloud.app.db.models import Role
from tests.support import cloud as support
from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import log_in, overflow_px
from tests.support.webhooks import WebhookReceiver, run_worker

pytestmark = pytest.mark.slow


def in_thread(work: Callable[[], Any]) -> None:
    """Playwright's sync API holds this thread's event loop; database work runs beside it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]


def deliveries(page: Page) -> list[str]:
    return [el.get_attribute("data-status") or "" for el in page.locator("#events .delivery").all()]


def test_an_admin_sets_up_an_alert_and_follows_its_delivery(
    cloud: CloudServer, cloud_db: support.TestDatabase, factory: CloudFactory, tmp_path: Path
) -> None:
    boss, reader = factory.reviewer(Role.ADMIN), factory.reviewer()
    name = f"doors-{secrets.token_hex(3)}"
    detector = factory.detector(name=name)
    receiver = WebhookReceiver().start()
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())
            log_in(page, cloud.url, boss)
            page.goto(f"{cloud.url}/ui/alerts")
            hook_name = f"ops-{secrets.token_hex(3)}"
            page.locator("#new-webhook").evaluate("el => el.open = true")
            page.fill("#webhook-form input[name=name]", hook_name)
            page.fill("#webhook-form input[name=url]", receiver.url)
            page.click("#webhook-form button[type=submit]")
            expect(page.locator("#webhook-secret")).to_be_visible()
            secret = page.input_value("#webhook-secret-value")
            assert secret.startswith("whsec_")
            page.reload()
            row = page.locator("#webhook-list tr", has_text=hook_name)
            expect(row).to_have_count(1)
            assert secret not in page.content()  # only its first characters from now on
            hook_id = row.get_attribute("data-webhook-id")

            page.locator("#new-rule").evaluate("el => el.open = true")
            page.select_option("#rule-form select[name=detector_id]", detector)
            rule_name = f"door open {secrets.token_hex(3)}"  # the session database has other rules
            page.fill("#rule-form input[name=name]", rule_name)
            page.select_option("#rule-form select[name=label]", "YES")
            page.fill("#rule-form input[name=consecutive]", "3")
            page.check(f"#rule-form input[name=webhook_ids][value={hook_id}]")
            page.click("#rule-form button[type=submit]")
            rule_row = page.locator("#rule-list tr", has_text=rule_name)
            expect(rule_row).to_contain_text("answer is YES, 3 confident answers in a row")
            rule_id = rule_row.get_attribute("data-rule-id")
            assert rule_id

            # An edge saw YES three times in a row: its firing arrives (twice: a lost ack).
            fired = {
                "firing_id": "ui-" + secrets.token_hex(8),
                "rule_id": rule_id,
                "detector_id": detector,
                "image_query_id": "iq_" + secrets.token_hex(8),
                "label": "YES",
                "confidence": 0.99,
                "streak": 3,
                "fired_at": datetime.now(UTC).isoformat(),
            }
            with cloud.client() as device:
                for _ in range(2):
                    assert device.post(
                        "/edge-api/v1/alerts/firings", json={"edge_id": "gate-edge", "firings": [fired]}
                    ).json()["recorded"] == [fired["firing_id"]]
            receiver.answers.append(500)
            in_thread(lambda: run_worker(cloud_db.url, tmp_path))
            page.reload()
            event = page.locator("#events tr", has_text=name)
            expect(event).to_have_count(1)
            expect(event).to_contain_text(f"{rule_name}: answer is YES 3 times in a row")
            expect(event.locator(".delivery")).to_contain_text("pending")
            expect(event.locator(".delivery")).to_contain_text("last answer 500")

            def retry_until_delivered() -> None:
                for _ in range(50):
                    run_worker(cloud_db.url, tmp_path)
                    if receiver.delivered():
                        return
                    threading.Event().wait(0.2)

            in_thread(retry_until_delivered)
            page.reload()
            expect(event.locator(".delivery")).to_contain_text("delivered")
            expect(event.locator(".delivery")).to_contain_text("2 attempts")

            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            assert overflow_px(page) == 0
            page.screenshot(path=str(artifact("alerts-390.png")), full_page=True)
            dark = browser.new_page(viewport={"width": 1440, "height": 900}, color_scheme="dark")
            log_in(dark, cloud.url, boss)
            dark.goto(f"{cloud.url}/ui/alerts")
            colours = dark.evaluate(
                "[getComputedStyle(document.documentElement).backgroundColor,"
                " getComputedStyle(document.querySelector('#notifications')).backgroundColor]"
            )
            assert colours == ["rgb(15, 19, 27)", "rgb(23, 28, 38)"], colours
            dark.close()

            # Pausing the rule: the next firing from an edge is refused, the page says paused.
            page.set_viewport_size({"width": 1440, "height": 900})
            page.locator("#rule-list tr", has_text=rule_name).locator(".toggle-rule").click()
            expect(page.locator("#rule-list tr", has_text=rule_name)).to_contain_text("paused")

            reviewer_page = browser.new_page()
            log_in(reviewer_page, cloud.url, reader)
            response = reviewer_page.goto(f"{cloud.url}/ui/alerts")
            assert response is not None and response.status == 403
            expect(reviewer_page.locator("nav")).not_to_contain_text("Alerts")
            # Reviewers see what was notified about a detector on its page.
            reviewer_page.goto(f"{cloud.url}/ui/detectors/{detector}")
            told = reviewer_page.locator("#detector-notifications li[data-kind=alert]")
            expect(told).to_contain_text(f"{rule_name}: answer is YES 3 times in a row")
            page.close()
    finally:
        receiver.stop()
    requests = [r for r in receiver.requests if r.json.get("rule_id") == rule_id]
    assert [r.status for r in requests] == [500, 200]
    assert all(verify_signature(secret, r.headers["x-intellioptics-signature"], r.body) for r in requests)
    assert requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]
