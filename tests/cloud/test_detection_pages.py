"""The training pages for a detection head (COUNT, BOUNDING_BOX): a real cloud process on PostgreSQL, the
versions registered and their reports uploaded through the API with a trainer's token, as the trainer
does; the pages fetched with a reviewer's browser session.

A detection version shows its held-out mAP@0.5, mAP@0.5:0.95, count accuracy, count MAE and image count
(from its registered metrics) and its detections.png as a full-width picture that links to itself; the
compare view puts those figures first, marks the better side and shows both pictures. A classifier
version's page keeps its accuracy headline and thumbnails and has no detection block.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cloud.app.core.model_reports import PNG_SIGNATURE
from common.backbone import BackboneRef
from common.bundle import (
    DetectionSpec,
    DetectorMode,
    OoddCalibration,
    PredictorMetadata,
    write_split_bundle,
)
from common.bundle_archive import pack_bundle
from tests.support import cloud as support
from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import png
from tests.support.cloud_factories_http import register_tiny_backbone
from tests.support.cloud_factories_worker import Tokens, seed_tokens
from tests.support.split_bundles import TINY_DIM, TINY_SIDE, LinearHead, tiny_pipeline
from training.export import _export
from training.oodd import OoddModule
from training.reports import plot_detections

MAX_COUNT = 3
MAX_BOXES = 4
HOSTILE = '<script>alert("x")</script>'


class TinyDetectionHead(nn.Module):
    """feature map (N, 8, 8, 8) → logits over the count buckets, features for the OODD, and
    `max_boxes` boxes with scores, as a detection head's head.onnx answers."""

    def __init__(self, num_classes: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(TINY_DIM, num_classes)
        self.score = nn.Linear(TINY_DIM, MAX_BOXES)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=gen))
        self.corners: Tensor = torch.tensor(
            [[0.1 + 0.2 * i, 0.1, 0.25 + 0.2 * i, 0.4] for i in range(MAX_BOXES)]
        )

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pooled = fmap.mean(dim=(2, 3))
        boxes = self.corners.unsqueeze(0) + pooled[:, :1].unsqueeze(-1) * 0.0
        return self.fc(pooled), pooled * 1.0, boxes, torch.sigmoid(self.score(pooled))


def write_bundle(
    out: Path,
    detector_id: str,
    backbone: BackboneRef,
    version: str,
    mode: DetectorMode,
    labels: list[str],
    metrics: dict[str, Any],
) -> Path:
    """A split bundle on the tiny backbone with `metrics` in its predictor metadata: a detection head
    (reading the feature map) for COUNT, a linear classifier head (reading the embedding) otherwise."""
    detection = mode is DetectorMode.COUNT
    if detection:
        head_onnx = _export(
            TinyDetectionHead(len(labels), seed=3),
            torch.zeros((1, TINY_DIM, TINY_SIDE // 4, TINY_SIDE // 4)),
            "feature_map",
            ["logits", "features", "boxes", "scores"],
        )
    else:
        head_onnx = _export(
            LinearHead(len(labels), 1), torch.zeros((1, TINY_DIM)), "embedding", ["logits", "features"]
        )
    oodd = OoddModule(means=np.zeros((1, TINY_DIM)), precision=np.eye(TINY_DIM), threshold=100.0, scale=1.0)
    cal = OoddCalibration(threshold=100.0, scale=1.0)
    oodd_onnx = _export(oodd, torch.zeros((1, TINY_DIM)), cal.input_name, [cal.output_name])
    meta = PredictorMetadata(
        detector_id=detector_id,
        version=version,
        mode=mode,
        labels=labels,
        oodd=cal,
        metrics=metrics,
        backbone=backbone,
        head_input="feature_map" if detection else "embedding",
        detection=DetectionSpec(class_name="bolt", max_boxes=MAX_BOXES) if detection else None,
    )
    write_split_bundle(out / version, head_onnx, oodd_onnx, tiny_pipeline(), meta)
    return out / version


def detections_png(out: Path, seed: int) -> bytes:
    """A detections.png as training.detection.judging draws it: eight held-out images with their true
    and predicted boxes."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(8):
        pixels = np.full((96, 128, 3), 60 + 20 * i, dtype=np.uint8)
        truth = [(0.1 + 0.3 * k, 0.2, 0.3 + 0.3 * k, 0.6) for k in range(i % 3 + 1)]
        predicted = [
            (left + rng.uniform(-0.03, 0.03), top, right, bottom) for left, top, right, bottom in truth
        ]
        examples.append((pixels, truth, predicted, f"true {len(truth)}, answered {len(predicted)} (90 %)"))
    return plot_detections(examples, out / f"detections-{seed}.png").read_bytes()


def register(http: httpx.Client, detector_id: str, bundle: Path, lineage: dict[str, Any]) -> dict[str, Any]:
    archive = bundle.with_suffix(".tar.gz")
    pack_bundle(bundle, archive)
    resp = http.post(
        f"/api/v1/detectors/{detector_id}/models",
        files={"bundle": (archive.name, archive.read_bytes(), "application/gzip")},
        data={"promote": "false", "lineage": json.dumps(lineage)},
    )
    assert resp.status_code == 201, resp.text
    model: dict[str, Any] = resp.json()
    return model


def upload_report(http: httpx.Client, model_id: str, name: str, data: bytes, content_type: str) -> None:
    resp = http.post(
        f"/api/v1/models/{model_id}/reports/{name}", content=data, headers={"content-type": content_type}
    )
    assert resp.status_code == 201, resp.text


def detection_metrics(
    map50: float, map50_95: float, accuracy: float, mae: float, images: int
) -> dict[str, Any]:
    """What training.detection.train puts in a detection bundle's predictor metadata."""
    return {
        "engine": "detection",
        "map50": map50,
        "map50_95": map50_95,
        "count_accuracy": accuracy,
        "count_mae": mae,
        "images": images,
        "objects": 2 * images,
        "evaluation": "held-out (also where the box scores and the count temperature were calibrated)",
        "count_ece": 0.0412,
        "threshold": 0.75,
        "escalation_rate": 0.2,
        "platt": {"scale": 1.0, "bias": 0.0},
    }


def metrics_report(version: str, metrics: dict[str, Any], promote: bool, reason: str) -> bytes:
    """metrics.json as training.detection.judging writes it (evaluation nested, with the verdict)."""
    keys = ("map50", "map50_95", "count_accuracy", "count_mae", "images", "objects")
    return json.dumps(
        {
            "engine": "detection",
            "version": version,
            "evaluation": {key: metrics[key] for key in keys},
            "operating_point": {"threshold": 0.75},
            "production_operating_point": None,
            "promotion": {"promote": promote, "reasons": [reason]},
            "data": {"n_heldout": metrics["images"]},
        }
    ).encode()


@dataclass(frozen=True)
class Fixture:
    count_detector: str
    binary_detector: str
    strong: dict[str, Any]  # detection version, the better one
    weak: dict[str, Any]  # detection version, registered first
    classifier: dict[str, Any]
    classifier_2: dict[str, Any]


STRONG = detection_metrics(0.9134, 0.6271, 0.8667, 0.1333, 30)
WEAK = detection_metrics(0.5012, 0.2508, 0.6, 0.5, 30)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture(scope="module")
def reviewer(cloud: CloudServer) -> Iterator[httpx.Client]:
    browser = cloud.login("reviewer", support.REVIEWER_PASSWORD)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def made(cloud: CloudServer, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    work = tmp_path_factory.mktemp("detection-pages")
    with cloud.client() as device, cloud.client(tokens.trainer) as trainer:
        tag = secrets.token_hex(4)
        resp = device.post(
            "/device-api/v1/detectors",
            json={
                "name": f"bolts {HOSTILE} {tag}",
                "query": "How many bolts?",
                "mode": "COUNT",
                "mode_configuration": {"class_name": "bolt", "max_count": MAX_COUNT},
            },
        )
        assert resp.status_code == 201, resp.text
        count_id: str = resp.json()["id"]
        resp = device.post("/device-api/v1/detectors", json={"name": f"door {tag}", "query": "Is it open?"})
        assert resp.status_code == 201, resp.text
        binary_id: str = resp.json()["id"]
        backbone = register_tiny_backbone(trainer, work)
        buckets = [str(i) for i in range(MAX_COUNT + 1)]

        versions: dict[str, dict[str, Any]] = {}
        for name, metrics, promote, reason in (
            ("v1-detweak0001", WEAK, False, "first version: " + HOSTILE),
            ("v2-detstrong01", STRONG, True, "count accuracy 0.867 beats production's 0.600"),
        ):
            bundle = write_bundle(work, count_id, backbone, name, DetectorMode.COUNT, buckets, metrics)
            model = register(trainer, count_id, bundle, {"trainer": HOSTILE, "training_job_id": "job_x"})
            picture = detections_png(work, len(versions))
            upload_report(trainer, model["id"], "detections.png", picture, "image/png")
            report = metrics_report(name, metrics, promote, reason)
            upload_report(trainer, model["id"], "metrics.json", report, "application/json")
            versions[name] = model

        classifiers = []
        for i, accuracy in enumerate((0.8125, 0.9375)):
            version = f"v{i + 1}-classhead{i:02d}"
            metrics = {
                "engine": "head",
                "test_accuracy": accuracy,
                "test_balanced_accuracy": accuracy - 0.0625,
                "test_ece_after_temperature": 0.031,
                "n_test": 16,
                "evaluation": {"split": "test", "candidate": {"accuracy": accuracy}},
                "promotion": {"promote": True, "reasons": ["no production version"]},
            }
            labels = ["NO", "YES"]
            bundle = write_bundle(work, binary_id, backbone, version, DetectorMode.BINARY, labels, metrics)
            model = register(trainer, binary_id, bundle, {"training_job_id": "job_y"})
            for plot in ("learning_curves.png", "confusion_matrix.png", "reliability.png"):
                upload_report(trainer, model["id"], plot, png(10 + i), "image/png")
            classifiers.append(model)
    return Fixture(
        count_id,
        binary_id,
        versions["v2-detstrong01"],
        versions["v1-detweak0001"],
        classifiers[0],
        classifiers[1],
    )


class Images(HTMLParser):
    """Every <img> of a page with the href of the link around it and the classes of its figure."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self._href = ""
        self._figure = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "figure":
            self._figure = values.get("class", "")
        elif tag == "a":
            self._href = values.get("href", "")
        elif tag == "img":
            self.images.append({**values, "href": self._href, "figure": self._figure})

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = ""
        elif tag == "a":
            self._href = ""


def images_of(html: str) -> list[dict[str, str]]:
    parser = Images()
    parser.feed(html)
    return parser.images


def article(html: str, model_id: str) -> str:
    found = re.search(rf'<article class="version" id="version-{model_id}".*?</article>', html, re.S)
    assert found is not None, f"no version {model_id} on the page"
    return found.group(0)


def figures(html: str) -> dict[str, tuple[str, str]]:
    """data-metric key → (label, value) of a version's figures."""
    return {
        key: (label.strip(), value)
        for key, label, value in re.findall(r'<span data-metric="([^"]+)">([^<]*)<b>([^<]*)</b></span>', html)
    }


def compare_rows(html: str) -> dict[str, tuple[str, tuple[str, str], tuple[str, str]]]:
    """data-metric key → (label, (A value, A class), (B value, B class)) of the compare table."""
    rows = {}
    pattern = (
        r'<tr data-metric="([^"]+)">\s*<td>([^<]*)</td>\s*'
        r'<td class="num ([^"]*)">([^<]*)</td>\s*<td class="num ([^"]*)">([^<]*)</td>'
    )
    for key, label, class_a, a, class_b, b in re.findall(pattern, html):
        rows[key] = (label, (a, class_a.strip()), (b, class_b.strip()))
    return rows


def assert_serves_png(browser: httpx.Client, url: str) -> None:
    image = browser.get(url)
    assert image.status_code == 200, url
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(PNG_SIGNATURE)


def test_a_detection_version_shows_its_held_out_figures_and_picture(
    made: Fixture, reviewer: httpx.Client
) -> None:
    page = reviewer.get(f"/ui/detectors/{made.count_detector}/training")
    assert page.status_code == 200
    html = page.text
    strong = article(html, made.strong["id"])
    assert 'data-engine="detection"' in strong
    assert figures(strong) == {
        "map50": ("mAP@0.5", "0.913"),
        "map50_95": ("mAP@0.5:0.95", "0.627"),
        "count_accuracy": ("count accuracy", "0.867"),
        "count_mae": ("count MAE", "0.133"),
        "images": ("held-out images", "30"),
    }
    assert figures(article(html, made.weak["id"]))["count_mae"] == ("count MAE", "0.500")
    # No classifier headline for a detection head, and no "no reports" either: it has its picture.
    assert "no metrics" not in strong and "No reports" not in strong and "test images" not in strong

    # The picture: one <img> per version, in the full-width figure, linking to itself full size.
    url = f"/api/v1/models/{made.strong['id']}/reports/detections.png"
    (shown,) = images_of(strong)
    assert shown["src"] == url and shown["href"] == url and shown["figure"] == "detections"
    assert 'target="_blank"' in strong and "green, solid" in strong and "orange, dashed" in strong
    assert_serves_png(reviewer, shown["src"])

    # The promotion verdict, which only metrics.json holds for a detection head.
    assert "automatic promotion: <b>yes</b>" in strong
    assert "count accuracy 0.867 beats production&#39;s 0.600" in strong


def test_the_detection_pages_escape_what_they_show(made: Fixture, reviewer: httpx.Client) -> None:
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
    html = reviewer.get(f"/ui/detectors/{made.count_detector}/training").text
    compare = reviewer.get(f"/ui/detectors/{made.count_detector}/compare").text
    for page in (html, compare):
        assert HOSTILE not in page and "<script>alert" not in page
        assert escaped in page  # the detector's name (and the version's lineage)
    weak = article(html, made.weak["id"])
    assert f"first version: {escaped}" in weak and f"trainer <b>{escaped}</b>" in weak


def test_the_compare_view_puts_the_detection_figures_first_and_shows_both_pictures(
    made: Fixture, reviewer: httpx.Client
) -> None:
    a, b = made.weak["id"], made.strong["id"]
    page = reviewer.get(f"/ui/detectors/{made.count_detector}/compare", params={"a": a, "b": b})
    assert page.status_code == 200
    rows = compare_rows(page.text)
    assert list(rows)[:5] == ["map50", "map50_95", "count_accuracy", "count_mae", "images"]
    assert rows["map50"] == ("mAP@0.5", ("0.5012", ""), ("0.9134", "better"))
    assert rows["map50_95"] == ("mAP@0.5:0.95", ("0.2508", ""), ("0.6271", "better"))
    assert rows["count_accuracy"] == ("count accuracy", ("0.6000", ""), ("0.8667", "better"))
    assert rows["count_mae"] == ("count MAE", ("0.5000", ""), ("0.1333", "better"))  # lower is better
    assert rows["images"] == ("held-out images", ("30", ""), ("30", ""))
    assert rows["count_ece"][0] == "count_ece"

    assert 'id="compare-detections"' in page.text
    pictures = [img for img in images_of(page.text) if img["figure"] == "detections"]
    assert [img["src"] for img in pictures] == [
        f"/api/v1/models/{model_id}/reports/detections.png" for model_id in (a, b)
    ]
    for img in pictures:
        assert img["href"] == img["src"]
        assert_serves_png(reviewer, img["src"])
    # Detection heads have no classifier plots: no empty sections for them.
    assert "learning curves" not in page.text and "No reliability.png" not in page.text


def test_a_classifier_version_has_no_detection_block(made: Fixture, reviewer: httpx.Client) -> None:
    html = reviewer.get(f"/ui/detectors/{made.binary_detector}/training").text
    version = article(html, made.classifier["id"])
    assert (
        '<p class="metrics"><span>accuracy <b>0.812</b></span><span>balanced accuracy <b>0.750</b></span>'
        "<span>ECE <b>0.031</b></span><span>test images <b>16</b></span></p>"
    ) in version
    for marker in ("data-engine", "data-metric", "mAP", "count MAE", "detections.png", 'class="detections"'):
        assert marker not in html
    assert [img["figure"] for img in images_of(version)] == ["plot", "plot", "plot"]  # none "detections"
    assert '<div class="plots">' in version

    compare = reviewer.get(
        f"/ui/detectors/{made.binary_detector}/compare",
        params={"a": made.classifier["id"], "b": made.classifier_2["id"]},
    ).text
    rows = compare_rows(compare)
    assert rows["test_accuracy"] == ("test_accuracy", ("0.8125", ""), ("0.9375", "better"))
    assert "compare-detections" not in compare and "detections.png" not in compare
    for name in ("learning curves", "confusion matrix", "reliability"):
        assert f"<h2>{name}</h2>" in compare
    assert len([img for img in images_of(compare) if img["figure"] == ""]) == 6


def test_in_a_browser_the_picture_fills_the_content_column(made: Fixture, cloud: CloudServer) -> None:
    with chromium() as chrome:
        tab = chrome.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(f"{cloud.url}/login")
        tab.fill("input[name=username]", "reviewer")
        tab.fill("input[name=password]", support.REVIEWER_PASSWORD)
        tab.keyboard.press("Enter")
        tab.wait_for_url("**/ui/queues")
        tab.goto(f"{cloud.url}/ui/detectors/{made.count_detector}/training")
        picture = tab.locator(f"#version-{made.strong['id']} figure.detections img")
        picture.scroll_into_view_if_needed()
        tab.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
        width = picture.evaluate("(img) => img.getBoundingClientRect().width")
        column = tab.locator(f"#version-{made.strong['id']}").evaluate(
            "(el) => el.getBoundingClientRect().width"
        )
        assert width >= column - 4 and width > 1000, (width, column)
        tab.screenshot(path=str(artifact("training-detection-version.png")), full_page=True)
        tab.goto(
            f"{cloud.url}/ui/detectors/{made.count_detector}/compare"
            f"?a={made.weak['id']}&b={made.strong['id']}"
        )
        stacked = tab.locator("#compare-detections figure.detections img")
        assert stacked.count() == 2
        for i in range(2):
            stacked.nth(i).scroll_into_view_if_needed()
            assert stacked.nth(i).evaluate("(img) => img.getBoundingClientRect().width") > 1000
        tab.screenshot(path=str(artifact("training-detection-compare.png")), full_page=True)
        tab.close()


def test_in_a_browser_an_admin_sees_cancel_only_for_an_active_job_and_is_asked_first(
    made: Fixture, cloud: CloudServer, tokens: Tokens
) -> None:
    page = f"{cloud.url}/ui/detectors/{made.binary_detector}/training"
    with chromium() as chrome, cloud.client(tokens.admin) as admin:
        tab = chrome.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(f"{cloud.url}/login")
        tab.fill("input[name=username]", "admin")
        tab.fill("input[name=password]", support.ADMIN_PASSWORD)
        tab.keyboard.press("Enter")
        tab.wait_for_url("**/ui/queues")
        tab.goto(page)
        tab.wait_for_function(
            "() => document.getElementById('live-empty') && !document.getElementById('live-empty').hidden"
        )
        assert not tab.locator("#cancel-job").is_visible()

        started = admin.post("/api/v1/training-jobs", json={"detector_id": made.binary_detector})
        assert started.status_code == 201, started.text
        job_id = started.json()["id"]
        try:
            tab.goto(page)
            cancel = tab.locator("#cancel-job")
            cancel.wait_for(state="visible")
            # Dismissed: nothing happens to the job.
            tab.once("dialog", lambda dialog: dialog.dismiss())
            cancel.click()
            assert admin.get(f"/api/v1/training-jobs/{job_id}").json()["cancel_requested"] is False
            # Accepted: the cancel is requested and the button goes.
            tab.once("dialog", lambda dialog: dialog.accept())
            cancel.click()
            cancel.wait_for(state="hidden")
            assert admin.get(f"/api/v1/training-jobs/{job_id}").json()["cancel_requested"] is True
        finally:
            admin.post(f"/api/v1/training-jobs/{job_id}/cancel")
            tab.close()
