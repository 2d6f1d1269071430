"""Every review page on a 390 px phone without horizontal scrolling, and in dark mode when the system
asks for it (headless Chromium)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import PHONE, log_in, overflow_px, seed_ui_pages, settle

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow


def test_every_page_fits_a_phone_and_the_bar_stays_inside(cloud: CloudServer, factory: CloudFactory) -> None:
    pages = seed_ui_pages(factory)
    wide: dict[str, int] = {}
    with chromium() as browser:
        page = browser.new_page(viewport=PHONE, device_scale_factor=1)
        log_in(page, cloud.url, pages.reviewer)
        for name, path in pages.paths.items():
            if name == "login":
                continue
            page.goto(cloud.url + path)
            settle(page, name)
            if overflow_px(page) > 0:
                wide[name] = overflow_px(page)
            # The bar's items are inside the window, not past its right edge.
            right = page.evaluate(
                "Math.max(...[...document.querySelectorAll('.topbar a, .topbar button')]"
                ".map((e) => e.getBoundingClientRect().right))"
            )
            assert right <= PHONE["width"], (name, right)
        page.screenshot(path=str(artifact("review-phone-stats.png")))
        page.close()
    assert wide == {}, f"pages wider than {PHONE['width']} px: {wide}"


def test_dark_mode_follows_the_system_setting(cloud: CloudServer, factory: CloudFactory) -> None:
    pages = seed_ui_pages(factory)
    with chromium() as browser:
        colours = {}
        for scheme in ("light", "dark"):
            page = browser.new_page(color_scheme=scheme)
            log_in(page, cloud.url, pages.reviewer)
            page.goto(cloud.url + pages.paths["label"])
            settle(page, "label")
            colours[scheme] = page.evaluate(
                "[getComputedStyle(document.documentElement).backgroundColor,"
                " getComputedStyle(document.querySelector('.panel')).backgroundColor,"
                " getComputedStyle(document.querySelector('#question')).color]"
            )
            page.close()
    assert colours["light"] == ["rgb(244, 245, 247)", "rgb(255, 255, 255)", "rgb(29, 35, 48)"]
    assert colours["dark"] == ["rgb(15, 19, 27)", "rgb(23, 28, 38)", "rgb(230, 233, 239)"]
