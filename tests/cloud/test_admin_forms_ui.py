"""Administrators create a detector and change its threshold and patience from the review pages
(headless Chromium), through the device API the SDK uses; reviewers get neither form."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import expect

from cloud.app.db.models import Role
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import log_in

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow


def test_an_administrator_creates_a_detector_and_changes_its_threshold(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    boss, reader = factory.reviewer(Role.ADMIN), factory.reviewer()
    name = f"bolts-{boss.username}"
    taken = f"taken-{boss.username}"
    factory.detector(name=taken)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, cloud.url, boss)
        page.click("#new-detector summary")
        page.fill("#create-form input[name=name]", name)
        page.fill("#create-form input[name=query]", "How many bolts are on the tray?")
        page.select_option("#create-form select[name=mode]", "COUNT")
        page.fill("#create-form input[name=class_name]", "bolt")
        page.fill("#create-form input[name=max_count]", "8")
        page.click("#create-form button[type=submit]")
        page.wait_for_url("**/ui/detectors/det_*")
        detector_id = page.url.rsplit("/", 1)[1]
        expect(page.locator("h1")).to_have_text(name)
        page.fill("#settings-form input[name=confidence_threshold]", "0.75")
        page.fill("#settings-form input[name=patience_time]", "45")
        page.select_option("#settings-form select[name=human_review]", "ALWAYS")
        page.click("#settings-form button[type=submit]")
        expect(page.locator("#settings-status")).to_have_text(
            "Saved: threshold 0.75, patience 45 s, people review every query."
        )
        # A bad value is refused by the API with its reason, and nothing changes.
        page.fill("#settings-form input[name=confidence_threshold]", "0.5")
        page.evaluate(
            "document.querySelector('#settings-form input[name=patience_time]').removeAttribute('max')"
        )
        page.fill("#settings-form input[name=patience_time]", "99999")
        page.click("#settings-form button[type=submit]")
        expect(page.locator("#settings-status")).to_have_class("status error")
        # Renamed and reworded; a name another detector has is refused with the API's reason.
        page.fill("#describe-form input[name=name]", name + "-renamed")
        page.fill("#describe-form input[name=query]", "How many bolts are on the left tray?")
        page.click("#describe-form button[type=submit]")
        expect(page.locator("h1")).to_have_text(name + "-renamed")
        expect(page.locator(".question")).to_have_text("How many bolts are on the left tray?")
        page.fill("#describe-form input[name=name]", taken)
        page.click("#describe-form button[type=submit]")
        expect(page.locator("#describe-status")).to_contain_text("exists already")
        page.close()
    with cloud.client() as device:
        detector = device.get(f"/device-api/v1/detectors/{detector_id}").json()
    assert detector["name"] == name + "-renamed" and detector["mode"] == "COUNT"
    assert (
        detector["mode_configuration"]["class_name"] == "bolt"
        and detector["mode_configuration"]["max_count"] == 8
    )
    assert detector["confidence_threshold"] == 0.75 and detector["patience_time"] == 45
    with cloud.client() as device:  # edges learn the policy with the detector's prior
        assert device.get(f"/edge-api/v1/detectors/{detector_id}/prior").json()["human_review"] == "ALWAYS"

    with httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False) as http:
        assert (
            http.post("/login", data={"username": reader.username, "password": reader.password}).status_code
            == 303
        )
        assert 'id="create-form"' not in http.get("/ui/queues").text
        assert 'id="settings-form"' not in http.get(f"/ui/detectors/{detector_id}").text
