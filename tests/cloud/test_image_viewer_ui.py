"""The labeling page's image viewer in headless Chromium: fitted and smooth by default, zoom by keys
and wheel about the pointer, drag to pan, 0 back to fit, pixels shown as they are only past 100 %, the
image's size and capture time with a full-size link; on a box detector the boxes stay over the image
when it is zoomed."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect

from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import open_labeler, showing

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow


def big_png(width: int = 1600, height: int = 1200) -> bytes:
    img = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(img)
    for x in range(0, width, 100):
        draw.line((x, 0, x, height), fill=(240, 240, 240), width=3)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def rect(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box


def test_zoom_pan_and_reset_keep_the_image_sharp_and_the_point_under_the_pointer(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"viewer-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    refs = factory.review_items(
        detector_id, 2, deadlines=[now + timedelta(minutes=5, seconds=i) for i in range(2)], with_images=True
    )
    for ref in refs:
        (cloud.data_dir / "blobs" / f"images/{detector_id}/{ref.image_query_id}.png").write_bytes(big_png())
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        open_labeler(page, cloud.url, who, detector_id)
        showing(page, refs[0].item_id)
        expect(page.locator("#image-size")).to_contain_text("1600 × 1200 px · taken ")
        assert (
            page.get_attribute("#full-size", "href")
            == f"{cloud.url}/api/v1/review/items/{refs[0].item_id}/image"
        )
        expect(page.locator("#zoom")).to_contain_text("fit, ")
        fit = rect(page, "#image")
        assert page.eval_on_selector("#image", "img => getComputedStyle(img).imageRendering") == "auto"

        page.keyboard.press("+")
        expect(page.locator(".stage")).to_have_class("stage zoomed")
        zoomed = rect(page, "#image")
        assert zoomed["width"] > fit["width"] * 1.3

        # The wheel zooms about the pointer: the image point under it stays under it.
        x, y = fit["x"] + fit["width"] * 0.3, fit["y"] + fit["height"] * 0.4
        page.mouse.move(x, y)
        before = rect(page, "#image")
        fx, fy = (x - before["x"]) / before["width"], (y - before["y"]) / before["height"]
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(100)
        after = rect(page, "#image")
        assert after["width"] > before["width"]
        assert abs((x - after["x"]) / after["width"] - fx) < 0.02
        assert abs((y - after["y"]) / after["height"] - fy) < 0.02

        # A drag pans.
        scroll = page.eval_on_selector(".stage", "s => [s.scrollLeft, s.scrollTop]")
        page.mouse.down()
        page.mouse.move(x - 120, y - 80, steps=5)
        page.mouse.up()
        moved = page.eval_on_selector(".stage", "s => [s.scrollLeft, s.scrollTop]")
        assert moved[0] > scroll[0] + 60 and moved[1] > scroll[1] + 40

        # Past 100 % the pixels show as they are.
        for _ in range(8):
            page.keyboard.press("+")
        assert rect(page, "#image")["width"] > 1600
        assert page.eval_on_selector("#image", "img => getComputedStyle(img).imageRendering") == "pixelated"

        page.keyboard.press("0")
        expect(page.locator("#zoom")).to_contain_text("fit, ")
        assert abs(rect(page, "#image")["width"] - fit["width"]) < 1

        # Answering still works, and the next item starts fitted.
        page.keyboard.press("+")
        page.keyboard.press("y")
        showing(page, refs[1].item_id)
        expect(page.locator("#zoom")).to_contain_text("fit, ")
        page.close()
    assert [label["label"] for label in factory.labels(detector_id)] == ["YES"]


def test_on_a_count_detector_the_boxes_stay_over_the_zoomed_image(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(mode="COUNT", name=f"viewer-count-{datetime.now(UTC):%H%M%S%f}")
    (ref,) = factory.review_items(detector_id, 1, with_images=True, mode="COUNT", query="How many?")
    (cloud.data_dir / "blobs" / f"images/{detector_id}/{ref.image_query_id}.png").write_bytes(big_png())
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        open_labeler(page, cloud.url, who, detector_id)
        showing(page, ref.item_id)
        for presses in (0, 2):
            for _ in range(presses):
                page.keyboard.press("+")
            page.wait_for_timeout(100)
            image, layer = rect(page, "#image"), rect(page, "#boxes")
            for key in ("x", "y", "width", "height"):
                assert abs(image[key] - layer[key]) < 1.5, (presses, key, image, layer)
        page.close()
