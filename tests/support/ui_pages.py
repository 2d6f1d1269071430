"""Every page of the review UI with something on it: one detector with items to review, reviewers'
answers and two model versions, and a reviewer who can open them all. Shared by the layout tests and
`make screenshots` (bench/screenshots.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Page, ViewportSize

from cloud.app.db.models import Role
from tests.support.cloud_factories import CloudFactory, Reviewer

DESKTOP: ViewportSize = {"width": 1920, "height": 1080}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass(frozen=True)
class UiPages:
    detector_id: str
    reviewer: Reviewer
    # name -> path, in the order a person would visit them
    paths: dict[str, str]


def seed_ui_pages(factory: CloudFactory) -> UiPages:
    name = f"dock-door-{datetime.now(UTC):%H%M%S%f}"
    detector_id = factory.detector(name=name, query="Is the loading dock door open?")
    now = datetime.now(UTC)
    factory.review_items(
        detector_id,
        6,
        deadlines=[now + timedelta(seconds=40 + 60 * i) for i in range(6)],
        result={
            "result_type": "binary_classification",
            "label": "NO",
            "confidence": 0.62,
            "source": "ALGORITHM",
            "from_edge": True,
        },
        diagnostics={"in_domain_score": 0.81, "out_of_domain": False},
        with_images=True,
        query="Is the loading dock door open?",
    )
    metrics = {"accuracy": 0.931, "balanced_accuracy": 0.925, "ece": 0.021, "per_class": {}}
    factory.model_version(detector_id, "v1", "retired", metrics)
    factory.model_version(detector_id, "v2", "production", {**metrics, "accuracy": 0.952}, current=True)
    stamp = f"{now:%H%M%S%f}"
    factory.hub(f"edge-line-1-{stamp}", {detector_id: "v2"}, 0, name="Line 1, dock door")
    factory.hub(f"edge-line-2-{stamp}", {detector_id: "v1"}, 12, name="Line 2, dock door")
    factory.alerting(detector_id, name, "Line 1, dock door")
    paths = {
        "login": "/login",
        "queues": "/ui/queues",
        "label": f"/ui/label?detector_id={detector_id}",
        "detector": f"/ui/detectors/{detector_id}",
        "training": f"/ui/detectors/{detector_id}/training",
        "compare": f"/ui/detectors/{detector_id}/compare",
        "stats": "/ui/stats",
        "edges": "/ui/edges",
        "users": "/ui/users",
        "alerts": "/ui/alerts",
    }
    # An administrator sees every page (the edges dashboard and the users page are theirs alone).
    return UiPages(detector_id, factory.reviewer(Role.ADMIN), paths)


def log_in(page: Page, base_url: str, who: Reviewer) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", who.username)
    page.fill("input[name=password]", who.password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/queues")


def open_labeler(page: Page, base_url: str, who: Reviewer, detector_id: str) -> None:
    log_in(page, base_url, who)
    page.goto(f"{base_url}/ui/label?detector_id={detector_id}")


def showing(page: Page, item_id: int) -> None:
    """Wait until the labeling page shows this item, ready for an answer."""
    page.wait_for_selector(f'#labeler[data-state="ready"][data-item-id="{item_id}"]', timeout=15_000)


def settle(page: Page, name: str) -> None:
    """Wait for what the page loads after it arrives (the labeling page's first item)."""
    if name == "label":
        page.wait_for_selector('#labeler[data-state="ready"]', timeout=15_000)
    else:
        page.wait_for_load_state("networkidle")


def overflow_px(page: Page) -> int:
    """How far the page is wider than the window (0: no horizontal scrolling)."""
    width: int = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    return width
