"""The labeling page's box editor (COUNT and BOUNDING_BOX items) in headless Chromium: the model's boxes
over the image, drawing, moving, resizing, nudging, deleting, undo, and the answer saved with exactly the
boxes drawn. A BINARY item's page has no box layer at all."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page

from common.wire.device_api import EdgeDiagnostics, ImageQuery, Result, ResultType, Roi, utc_now_iso
from common.wire.escalation import EscalationCreate, EscalationReason
from tests.cloud.test_device_api import make_detector
from tests.cloud.test_escalations import post
from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory, Reviewer

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow

Box = tuple[float, float, float, float]  # left, top, right, bottom, normalised
TOLERANCE = 0.012  # normalised; a few pixels of the displayed image

# What the model found: two bolts.
MODEL_A: Box = (0.10, 0.10, 0.30, 0.40)
MODEL_B: Box = (0.60, 0.50, 0.85, 0.90)


@pytest.fixture(scope="module")
def http(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


def photo(width: int = 960, height: int = 720) -> bytes:
    image = Image.new("RGB", (width, height), (70, 80, 95))
    draw = ImageDraw.Draw(image)
    for left, top, right, bottom in (MODEL_A, MODEL_B):
        draw.rectangle((left * width, top * height, right * width, bottom * height), fill=(190, 190, 200))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def escalate(
    http: httpx.Client,
    detector_id: str,
    result: Result,
    result_type: ResultType,
    rois: list[Roi] | None,
    patience_s: float = 30.0,
) -> str:
    """Put one image query into review the way an edge does: its escalation, with the model's boxes."""
    iq_id = "iq_" + secrets.token_hex(13)
    iq = ImageQuery(
        id=iq_id,
        created_at=utc_now_iso(),
        query="How many bolts?",
        detector_id=detector_id,
        result_type=result_type,
        result=result,
        patience_time=patience_s,
        confidence_threshold=0.9,
        rois=rois,
        intellioptics=EdgeDiagnostics(
            raw_confidence=0.55,
            in_domain_score=0.9,
            model_version="v1",
            escalated=True,
            escalation_reason=EscalationReason.LOW_CONFIDENCE,
        ),
    )
    payload = EscalationCreate(
        image_query_id=iq_id,
        detector_id=detector_id,
        reason=EscalationReason.LOW_CONFIDENCE,
        image_query=iq,
        image_content_type="image/jpeg",
        edge_id="edge-boxes-test",
        created_at=iq.created_at,
    )
    resp = post(http, payload, photo())
    assert resp.status_code == 201, resp.text
    return iq_id


def open_labeler(page: Page, cloud: CloudServer, who: Reviewer, detector_id: str) -> None:
    page.goto(f"{cloud.url}/login")
    page.fill("input[name=username]", who.username)
    page.fill("input[name=password]", who.password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/queues")
    page.goto(f"{cloud.url}/ui/label?detector_id={detector_id}")


def ready(page: Page) -> None:
    page.wait_for_selector('#labeler[data-state="ready"]', timeout=15_000)


def geometry(roi: dict[str, Any]) -> Box:
    g = roi["geometry"]
    return (g["left"], g["top"], g["right"], g["bottom"])


def drawn(page: Page) -> list[tuple[Box, str]]:
    """The boxes on the layer (normalised from their pixel rects) with their kind, in index order."""
    raw = page.evaluate(
        """() => {
          const layer = document.getElementById("boxes");
          const w = layer.getBoundingClientRect().width, h = layer.getBoundingClientRect().height;
          return [...layer.querySelectorAll("g.box")].map((g) => {
            const r = g.querySelector(".box-rect");
            const x = +r.getAttribute("x"), y = +r.getAttribute("y");
            return { index: +g.dataset.index, kind: g.classList.contains("model") ? "model" : "own",
                     box: [x / w, y / h, (x + +r.getAttribute("width")) / w, (y + +r.getAttribute("height")) / h] };
          }).sort((a, b) => a.index - b.index);
        }"""
    )
    return [(tuple(b["box"]), b["kind"]) for b in raw]


def near(got: Box, want: Box, tol: float = TOLERANCE) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


def assert_boxes(got: list[Box], want: list[Box]) -> None:
    assert len(got) == len(want), (got, want)
    for w in want:
        assert any(near(g, w) for g in got), (w, got)


class Layer:
    """Page coordinates of normalised points on the box layer (read afresh after a resize)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        box = page.locator("#boxes").bounding_box()
        assert box is not None
        self.x, self.y, self.w, self.h = box["x"], box["y"], box["width"], box["height"]

    def at(self, nx: float, ny: float) -> tuple[float, float]:
        return self.x + nx * self.w, self.y + ny * self.h

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        mouse = self.page.mouse
        mouse.move(*self.at(*start))
        mouse.down()
        mouse.move(*self.at(*end), steps=steps)
        mouse.up()

    def click(self, nx: float, ny: float) -> None:
        self.page.mouse.click(*self.at(nx, ny))


def labels_of(factory: CloudFactory, detector_id: str) -> list[dict[str, Any]]:
    """factory.labels from a thread: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(factory.labels, detector_id).result()


def box_count(page: Page) -> str:
    return page.inner_text("#box-count")


def layer_width_becomes(page: Page, ok: Callable[[float], bool], timeout_s: float = 10.0) -> None:
    """Poll from here: the page's Content-Security-Policy forbids the eval that wait_for_function uses."""
    deadline = time.monotonic() + timeout_s
    while True:
        box = page.locator("#boxes").bounding_box()
        if box is not None and ok(box["width"]):
            return
        assert time.monotonic() < deadline, f"layer width stayed {box and box['width']}"
        page.wait_for_timeout(50)


def assert_layer_over_image(page: Page) -> None:
    """The layer covers the image's shown content exactly (object-fit: contain may letterbox it)."""
    content = page.evaluate(
        """() => {
          const img = document.getElementById("image"), r = img.getBoundingClientRect();
          const s = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
          const w = img.naturalWidth * s, h = img.naturalHeight * s;
          return { x: r.left + (img.clientWidth - w) / 2, y: r.top + (img.clientHeight - h) / 2, w, h };
        }"""
    )
    layer = page.locator("#boxes").bounding_box()
    assert layer is not None
    for key, got in (("x", layer["x"]), ("y", layer["y"]), ("w", layer["width"]), ("h", layer["height"])):
        assert abs(got - content[key]) <= 1.0, (key, layer, content)


def test_reviewer_edits_the_models_boxes_and_the_answer_keeps_exactly_those(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory
) -> None:
    det = make_detector(
        http,
        name=f"bolts-{datetime.now(UTC):%H%M%S%f}",
        query="How many bolts?",
        mode="COUNT",
        mode_configuration={"class_name": "bolt", "max_count": 10},
    )
    rois = [Roi.from_box("bolt", 0.81, *MODEL_A), Roi.from_box("bolt", 0.64, *MODEL_B)]
    result = Result(result_type=ResultType.COUNTING, count=2, label="2", confidence=0.55, from_edge=True)
    iq_id = escalate(http, det["id"], result, ResultType.COUNTING, rois)
    who = factory.reviewer()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, cloud, who, det["id"])
        ready(page)
        page.wait_for_selector("#boxes", state="visible")

        # The model's two boxes, dashed, where the model put them, and the count follows them.
        assert page.inner_text("#question") == "How many bolts?"
        assert_layer_over_image(page)
        shown = drawn(page)
        assert [kind for _, kind in shown] == ["model", "model"]
        assert_boxes([b for b, _ in shown], [MODEL_A, MODEL_B])
        assert box_count(page) == "2 boxes"
        assert page.locator("#boxes .box.model .box-rect").first.evaluate(
            "(r) => getComputedStyle(r).strokeDasharray"
        ) not in ("", "none")
        assert "Submit 2 boxes" in page.inner_text("#submit-boxes")
        layer = Layer(page)

        # A tiny accidental drag on empty image draws nothing.
        layer.drag((0.45, 0.70), (0.452, 0.702), steps=2)
        assert box_count(page) == "2 boxes"

        # Draw a third box on empty image; it is the reviewer's (solid) and selected.
        drawn_c: Box = (0.40, 0.10, 0.55, 0.30)
        layer.drag(drawn_c[:2], drawn_c[2:])
        assert box_count(page) == "3 boxes"
        assert page.locator("#boxes .box.own.selected").count() == 1
        assert_boxes([b for b, _ in drawn(page)], [MODEL_A, MODEL_B, drawn_c])

        # Resize it by its bottom-right corner, then nudge it down 10 px with Shift+ArrowDown.
        layer.drag((drawn_c[2], drawn_c[3]), (0.60, 0.35))
        resized_c: Box = (0.40, 0.10, 0.60, 0.35)
        assert_boxes([b for b, _ in drawn(page)], [MODEL_A, MODEL_B, resized_c])
        page.keyboard.press("Shift+ArrowDown")
        dy = 10 / layer.h
        final_c: Box = (0.40, 0.10 + dy, 0.60, 0.35 + dy)
        assert_boxes([b for b, _ in drawn(page)], [MODEL_A, MODEL_B, final_c])

        # Move the model's first box by dragging inside it: it becomes the reviewer's (solid).
        layer.drag((0.20, 0.25), (0.25, 0.30))
        moved_a: Box = (0.15, 0.15, 0.35, 0.45)
        shown = drawn(page)
        assert_boxes([b for b, _ in shown], [moved_a, MODEL_B, final_c])
        assert sorted(kind for _, kind in shown) == ["model", "own", "own"]

        # Delete the model's second box (click selects it, D deletes), then undo the delete.
        layer.click(0.72, 0.70)
        assert page.locator("#boxes .box.model.selected").count() == 1
        page.keyboard.press("d")
        assert box_count(page) == "2 boxes"
        assert_boxes([b for b, _ in drawn(page)], [moved_a, final_c])
        page.keyboard.press("z")
        assert box_count(page) == "3 boxes"
        assert "Undid a box edit" in page.inner_text("#status")
        assert_boxes([b for b, _ in drawn(page)], [moved_a, MODEL_B, final_c])

        # A number key that disagrees with the boxes submits nothing.
        page.keyboard.press("2")
        assert "there are 3 boxes" in page.inner_text("#status")
        assert page.get_attribute("#labeler", "data-state") == "ready"

        # The boxes follow the image when the window is resized.
        page.set_viewport_size({"width": 1000, "height": 640})
        layer_width_becomes(page, lambda w: abs(w - layer.w) > 5)
        assert_layer_over_image(page)
        assert_boxes([b for b, _ in drawn(page)], [moved_a, MODEL_B, final_c])
        page.screenshot(path=str(artifact("review-boxes-page.png")), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 800})
        layer_width_becomes(page, lambda w: abs(w - layer.w) < 1)
        assert_layer_over_image(page)

        # Enter accepts the boxes as they are: label "3", those three boxes.
        page.keyboard.press("Enter")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        assert "Answered 3 (3 boxes)" in page.inner_text("#status")
        assert page.locator("#box-count").is_hidden()

        iq = http.get(f"/device-api/v1/image-queries/{iq_id}").json()
        assert iq["result"]["source"] == "HUMAN" and iq["result"]["count"] == 3
        assert_boxes([geometry(r) for r in iq["rois"]], [moved_a, MODEL_B, final_c])
        labels = labels_of(factory, det["id"])
        assert [(lab["label"], lab["undone_at"]) for lab in labels] == [("3", None)]
        assert_boxes([geometry(r) for r in labels[0]["rois"]], [moved_a, MODEL_B, final_c])
        assert all(r["label"] == "bolt" for r in labels[0]["rois"])
        assert all(0 <= v <= 1 for r in labels[0]["rois"] for v in geometry(r))

        # With no box edit left (the queue is empty), Z undoes the answer: the item is back with the
        # reviewer's boxes, solid. Deleting one and pressing 2 (now the count) answers again.
        page.keyboard.press("z")
        ready(page)
        page.wait_for_selector("#boxes", state="visible")
        assert "Undid 3" in page.inner_text("#status")
        shown = drawn(page)
        assert [kind for _, kind in shown] == ["own", "own", "own"]
        assert_boxes([b for b, _ in shown], [moved_a, MODEL_B, final_c])
        layer = Layer(page)
        layer.click(0.72, 0.70)
        page.keyboard.press("Delete")
        assert box_count(page) == "2 boxes"
        page.keyboard.press("2")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        page.close()

    labels = factory.labels(det["id"])
    assert [(lab["label"], lab["undone_at"] is None) for lab in labels] == [("3", False), ("2", True)]
    assert_boxes([geometry(r) for r in labels[1]["rois"]], [moved_a, final_c])
    iq = http.get(f"/device-api/v1/image-queries/{iq_id}").json()
    assert iq["result"]["count"] == 2
    assert_boxes([geometry(r) for r in iq["rois"]], [moved_a, final_c])


def test_bounding_box_items_answer_no_objects_and_more_than_max(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory
) -> None:
    det = make_detector(
        http,
        name=f"parcels-{datetime.now(UTC):%H%M%S%f}",
        query="Box every parcel",
        mode="BOUNDING_BOX",
        mode_configuration={"class_name": "parcel", "max_num_bboxes": 2},
    )
    result = Result(result_type=ResultType.BOUNDING_BOX, label="BOUNDING_BOX", confidence=0.5, from_edge=True)
    # The first (earlier deadline) has one false box; the second has more parcels than the detector takes.
    first = escalate(
        http, det["id"], result, ResultType.BOUNDING_BOX, [Roi.from_box("parcel", 0.4, *MODEL_A)], 20.0
    )
    second = escalate(
        http,
        det["id"],
        result,
        ResultType.BOUNDING_BOX,
        [Roi.from_box("parcel", 0.7, *MODEL_A), Roi.from_box("parcel", 0.7, *MODEL_B)],
        40.0,
    )
    who = factory.reviewer()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, cloud, who, det["id"])
        ready(page)
        page.wait_for_selector("#boxes", state="visible")
        assert box_count(page) == "1 box"
        assert [b.inner_text().split()[0] for b in page.locator("#answers button").all()] == [
            "Enter",
            "M",
            "U",
        ]
        # Tab selects the box, Backspace deletes it (with a box selected it is not the page's undo).
        page.keyboard.press("Tab")
        assert page.locator("#boxes .box.selected").count() == 1
        page.keyboard.press("Backspace")
        assert box_count(page) == "0 boxes"
        page.keyboard.press("0")  # the number of boxes: submits them, as NO_OBJECTS
        page.wait_for_selector('#labeler[data-state="ready"][data-box-count="2"]', timeout=15_000)
        page.wait_for_selector("#boxes", state="visible")
        # Draw a third parcel: more than the detector takes, so Enter refuses and M answers.
        Layer(page).drag((0.40, 0.10), (0.55, 0.30))
        assert box_count(page) == "3 boxes"
        page.keyboard.press("Enter")
        assert "press M" in page.inner_text("#status")
        assert page.get_attribute("#labeler", "data-state") == "ready"
        page.keyboard.press("m")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        page.close()

    done = http.get(f"/device-api/v1/image-queries/{first}").json()
    assert done["result"]["label"] == "NO_OBJECTS" and not done["rois"]
    more = http.get(f"/device-api/v1/image-queries/{second}").json()
    assert more["result"]["label"] == "GREATER_THAN_MAX"
    assert_boxes([geometry(r) for r in more["rois"]], [MODEL_A, MODEL_B, (0.40, 0.10, 0.55, 0.30)])
    assert [lab["label"] for lab in factory.labels(det["id"])] == ["NO_OBJECTS", "GREATER_THAN_MAX"]


def test_a_binary_item_has_no_box_layer_and_keeps_its_keys(
    cloud: CloudServer, http: httpx.Client, factory: CloudFactory
) -> None:
    det = make_detector(http, name=f"doors-{datetime.now(UTC):%H%M%S%f}", query="Is the door open?")
    result = Result(result_type=ResultType.BINARY, label="YES", confidence=0.6, from_edge=True)
    iq_id = escalate(http, det["id"], result, ResultType.BINARY, None)
    who = factory.reviewer()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, cloud, who, det["id"])
        ready(page)
        assert page.locator("#boxes").count() == 0
        assert page.locator("#box-count").is_hidden()
        assert page.get_attribute("#labeler", "data-box-count") == ""
        assert [b.inner_text().split() for b in page.locator("#answers button").all()] == [
            ["Y", "YES"],
            ["N", "NO"],
            ["U", "UNCLEAR"],
        ]
        # Enter and number keys mean nothing here; Y answers, Ctrl+Z undoes it like Z.
        page.keyboard.press("Enter")
        page.keyboard.press("1")
        assert page.get_attribute("#labeler", "data-state") == "ready"
        page.keyboard.press("y")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        page.keyboard.press("Control+z")
        ready(page)
        assert "Undid YES" in page.inner_text("#status")
        assert page.locator("#boxes").count() == 0
        page.keyboard.press("n")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        page.close()

    labels = factory.labels(det["id"])
    assert [(lab["label"], lab["undone_at"] is None, lab["rois"]) for lab in labels] == [
        ("YES", False, None),
        ("NO", True, None),
    ]
    assert http.get(f"/device-api/v1/image-queries/{iq_id}").json()["result"]["label"] == "NO"
