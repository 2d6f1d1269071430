"""The labeling page when its lease runs out (heartbeats blocked, as in a sleeping tab or on a lost
network), in headless Chromium: it warns, an answer given afterwards takes the item back and is
recorded once; when another reviewer holds the item by then, the page says the answer was not
recorded instead of dropping it silently."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, Route, expect

from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import open_labeler, showing

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.support.cloud import TestDatabase

pytestmark = pytest.mark.slow

LEASE_S = 3


@pytest.fixture(scope="module")
def short_lease_cloud(
    cloud_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudServer]:
    server = CloudServer(
        cloud_db.url,
        Path(tmp_path_factory.mktemp("cloud-lease-ui")),
        env={"CLOUD_REVIEW_LEASE_S": str(LEASE_S)},
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def factory(short_lease_cloud: CloudServer, cloud_db: TestDatabase) -> CloudFactory:
    return CloudFactory(cloud_db.url, short_lease_cloud.data_dir / "blobs")


def lapse(page: Page) -> None:
    """Heartbeats fail from now on; wait until the page says the lease ran out."""
    page.route("**/heartbeat", lambda route: route.abort())
    expect(page.locator("#lease")).to_contain_text("ran out", timeout=(LEASE_S + 5) * 1000)


def seed(factory: CloudFactory, n: int) -> tuple[str, list[int]]:
    detector_id = factory.detector(query="Is the bin full?", name=f"lease-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    items = factory.review_items(
        detector_id, n, deadlines=[now + timedelta(minutes=5, seconds=i) for i in range(n)], with_images=True
    )
    return detector_id, [ref.item_id for ref in items]


def test_an_answer_after_the_lease_ran_out_takes_the_item_back_and_is_recorded_once(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id, order = seed(factory, 2)
    who = factory.reviewer()
    claims: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, short_lease_cloud.url, who, detector_id)
        showing(page, order[0])
        assert page.get_attribute("#lease", "class") != "late"
        page.wait_for_function(
            "document.getElementById('left').textContent === '2 left (1 you can take now)'"
        )
        # "?" shows the keys; behind the sheet no key answers; Esc closes it.
        page.keyboard.press("?")
        assert page.locator("#keys").is_visible() and "UNCLEAR" in page.inner_text("#keys")
        page.keyboard.press("n")
        page.keyboard.press("Escape")
        assert not page.locator("#keys").is_visible()
        assert page.get_attribute("#labeler", "data-item-id") == str(order[0])
        lapse(page)
        assert page.get_attribute("#lease", "class") == "late"
        assert "lease on this item" in page.inner_text("#status")

        def seen(route: Route) -> None:
            claims.append(route.request.url)
            route.continue_()

        page.route("**/items/*/claim", seen)
        page.keyboard.press("y")
        showing(page, order[1])
        assert page.inner_text("#status").startswith("Answered YES")
        assert page.inner_text("#count") == "1"
        page.close()
    assert len(claims) == 1 and f"/items/{order[0]}/claim" in claims[0]
    labels = factory.labels(detector_id)
    assert [(label["review_item_id"], label["label"], label["user_id"]) for label in labels] == [
        (order[0], "YES", who.user_id)
    ]


def test_an_answer_for_an_item_someone_else_took_meanwhile_is_reported_not_recorded(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id, order = seed(factory, 2)
    who, rival = factory.reviewer(), factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, short_lease_cloud.url, who, detector_id)
        showing(page, order[0])
        lapse(page)
        with short_lease_cloud.client(token=rival.token) as http:
            taken = http.post("/api/v1/review/claim", params={"detector_id": detector_id})
            assert taken.status_code == 200 and taken.json()["id"] == order[0]
            page.keyboard.press("n")
            showing(page, order[1])
            status = page.inner_text("#status")
            assert "Your answer NO was not recorded" in status and "another reviewer holds" in status
            assert page.inner_text("#count") == "0"
            assert (
                http.post(f"/api/v1/review/items/{order[0]}/answer", json={"label": "YES"}).status_code == 200
            )
        page.close()
    labels = factory.labels(detector_id)
    assert [(label["review_item_id"], label["label"], label["user_id"]) for label in labels] == [
        (order[0], "YES", rival.user_id)
    ]


def test_deadlines_are_coloured_only_while_they_need_attention(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"deadlines-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    deadlines = [now - timedelta(minutes=10), now + timedelta(seconds=40), now + timedelta(minutes=10)]
    order = [
        ref.item_id for ref in factory.review_items(detector_id, 3, deadlines=deadlines, with_images=True)
    ]
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, short_lease_cloud.url, who, detector_id)
        seen = []
        for item_id in order:
            showing(page, item_id)
            seen.append((page.inner_text("#deadline").split()[0], page.get_attribute("#deadline", "class")))
            page.keyboard.press("y")
        page.close()
    # Long passed: muted (the camera has its answer); within the minute: amber; later: plain.
    assert seen == [("passed", "muted"), ("in", "soon"), ("in", "")]
