"""A model version's report plots on the training page are big enough to read (headless Chromium): at
least 640 px wide on a 1920 px screen at their own aspect ratio, each a link to the full-size picture,
and the width of the column on a phone without widening the page."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from cloud.app.db.models import Role
from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import DESKTOP, PHONE, log_in, overflow_px

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow

# The sizes training/reports.py draws at 110 dpi: learning curves and reliability 10 x 4 and 10 x 4.5
# inches, a BINARY detector's confusion matrix 4.9 x 3.9 (the smallest there is).
PLOTS = {
    "learning_curves.png": (1100, 440),
    "confusion_matrix.png": (539, 429),
    "reliability.png": (1100, 495),
}


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (240, 244, 250)).save(out, format="PNG")
    return out.getvalue()


def boxes(page: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.locator(".plots img").evaluate_all(
        "imgs => imgs.map((i) => ({src: i.getAttribute('src'), href: i.closest('a').getAttribute('href'),"
        " width: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height,"
        " column: i.closest('.plots').getBoundingClientRect().width}))"
    )
    return found


def test_report_plots_are_readable_on_a_wide_screen_and_a_phone(
    cloud: CloudServer, factory: CloudFactory, admin: httpx.Client
) -> None:
    who = factory.reviewer(Role.REVIEWER)
    detector_id = factory.detector(name=f"plotted-{who.username}")
    model_id = factory.model_version(detector_id, "v1", "production", {"accuracy": 0.9}, current=True)
    for name, size in PLOTS.items():
        resp = admin.post(
            f"/api/v1/models/{model_id}/reports/{name}",
            content=png(size),
            headers={"content-type": "image/png"},
        )
        assert resp.status_code == 201, resp.text
    with chromium() as browser:
        shown: dict[str, list[dict[str, Any]]] = {}
        for screen, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page = browser.new_page(viewport=viewport, device_scale_factor=1)
            log_in(page, cloud.url, who)
            page.goto(f"{cloud.url}/ui/detectors/{detector_id}/training")
            expect(page.locator(".plots img")).to_have_count(len(PLOTS))
            for img in page.locator(".plots img").all():
                img.scroll_into_view_if_needed()  # they load lazily
                natural_w = PLOTS[(img.get_attribute("src") or "").rsplit("/", 1)[1]][0]
                expect(img).to_have_js_property("naturalWidth", natural_w)
            shown[screen] = boxes(page)
            page.screenshot(path=str(artifact(f"version-plots-{screen}.png")), full_page=True)
            assert overflow_px(page) == 0, screen
            page.close()
    for plot in shown["desktop"]:
        natural_w, natural_h = PLOTS[plot["src"].rsplit("/", 1)[1]]
        assert plot["width"] >= 640, plot
        assert abs(plot["width"] / plot["height"] - natural_w / natural_h) < 0.02, plot
        assert plot["href"] == plot["src"]  # a click opens the picture itself
    for plot in shown["phone"]:
        assert abs(plot["width"] - plot["column"]) < 1, plot
