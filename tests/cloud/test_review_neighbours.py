"""Why the model was unsure, shown to the reviewer: the labelled images of the item's detector most like
it, found in the production model's own embedding space (its shared backbone), against a real cloud
process with a tiny split bundle, the embeddings a trainer would store, and labels given through the
device API."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from playwright.sync_api import expect

from common.backbone import BackboneRef
from common.imaging import ImageLimits
from common.runtime import BackboneRuntime, Preprocessor
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory, png
from tests.support.cloud_factories_http import new_detector, register_tiny_backbone, upload_tiny_version
from tests.support.split_bundles import tiny_pipeline
from tests.support.ui_pages import log_in

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass


def embeddings(path: Path, ref: BackboneRef, images: list[bytes]) -> np.ndarray:
    """What the trainer computes and stores: the backbone's embedding of each image."""
    backbone = BackboneRuntime(path, ref, ["CPUExecutionProvider"])
    pre = Preprocessor(tiny_pipeline())
    try:
        batch = np.concatenate([pre.tensor(image, ImageLimits()) for image in images])
        return backbone.run(batch, [ref.embedding_output])[ref.embedding_output]
    finally:
        backbone.close()


def store(admin: httpx.Client, ref: BackboneRef, ids: list[str], vectors: np.ndarray) -> None:
    out = io.BytesIO()
    np.save(out, vectors.astype(np.float16), allow_pickle=False)
    resp = admin.post(
        f"/api/v1/backbones/{ref.sha256}/embeddings",
        data={"image_query_ids": json.dumps(ids)},
        files={"vectors": ("vectors.npy", out.getvalue(), "application/octet-stream")},
    )
    assert resp.status_code == 200 and resp.json()["stored"] == len(ids), resp.text


def test_the_most_similar_labelled_images_come_with_their_labels(
    cloud: CloudServer, factory: CloudFactory, admin: httpx.Client, tmp_path: Path
) -> None:
    # A seed no other module registers: the backbone row is shared by the session database, its blob is not.
    ref = register_tiny_backbone(admin, tmp_path, seed=1041)
    with cloud.client() as device:
        detector_id, ids = new_detector(device, images=8)
        labels = ["YES" if i % 2 == 0 else "NO" for i in range(len(ids))]
        for iq, label in zip(ids, labels, strict=True):
            assert (
                device.post("/device-api/v1/labels", json={"image_query_id": iq, "label": label}).status_code
                == 201
            )
        store(
            admin,
            ref,
            ids,
            embeddings(tmp_path / "backbone-1041.onnx", ref, [png(i) for i in range(len(ids))]),
        )
        who = factory.reviewer()
        with cloud.client(token=who.token) as reviewer:
            # Before the detector has a production model there is nothing to compare in, and it says so.
            _, (unmodelled,) = new_detector(device, images=1)
            early = reviewer.post(
                "/api/v1/review/claim", params={"detector_id": _detector_of(device, unmodelled)}
            )
            assert early.status_code == 200
            none = reviewer.get(f"/api/v1/review/items/{early.json()['id']}/neighbours").json()
            assert (
                none["available"] is False
                and "no production model" in none["why"]
                and none["neighbours"] == []
            )

            upload_tiny_version(admin, detector_id, ref, tmp_path, promote=True)
            # The item under review is the same picture as labelled image 3, sent again by a camera.
            again = device.post(
                "/device-api/v1/image-queries",
                params={"detector_id": detector_id, "want_async": "true"},
                content=png(3),
                headers={"Content-Type": "image/png"},
            )
            assert again.status_code == 200, again.text
            claimed = reviewer.post("/api/v1/review/claim", params={"detector_id": detector_id})
            assert claimed.status_code == 200 and claimed.json()["image_query_id"] == again.json()["id"]
            resp = reviewer.get(f"/api/v1/review/items/{claimed.json()['id']}/neighbours")
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["available"] is True and body["backbone"] == ref.id and body["compared"] == len(ids)
            found = body["neighbours"]
            assert len(found) == 6
            assert found[0]["image_query_id"] == ids[3] and found[0]["label"] == "NO"
            assert found[0]["similarity"] > 0.999
            sims = [n["similarity"] for n in found]
            assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
            assert {n["label"] for n in found} <= {"YES", "NO"}
            assert [n["label"] for n in found] == [labels[ids.index(n["image_query_id"])] for n in found]
            # Each neighbour's picture, for the reviewer's eyes; an unlabelled query's is not offered.
            picture = reviewer.get(found[0]["image_url"])
            assert picture.status_code == 200 and picture.content == png(3)
            assert reviewer.get(f"/api/v1/review/images/{again.json()['id']}").status_code == 404
            assert (
                reviewer.get(f"/api/v1/review/items/{claimed.json()['id']}/neighbours?k=2").json()[
                    "neighbours"
                ][0]["image_query_id"]
                == ids[3]
            )
            assert reviewer.get("/api/v1/review/items/999999999/neighbours").status_code == 404
            item_id = claimed.json()["id"]
            assert reviewer.post(f"/api/v1/review/items/{item_id}/release").status_code == 204

    # On the labeling page: the six pictures with their labels, the same one first.
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in(page, cloud.url, who)
        page.goto(f"{cloud.url}/ui/label?detector_id={detector_id}")
        page.wait_for_selector(f'#labeler[data-state="ready"][data-item-id="{item_id}"]', timeout=15_000)
        expect(page.locator("#neighbours-list li")).to_have_count(6)
        expect(page.locator("#neighbours-why")).to_have_text(
            f"Of {len(ids)} labelled images of this detector:"
        )
        first = page.locator("#neighbours-list li").first
        assert first.get_attribute("data-label") == "NO" and "100 % alike" in first.inner_text()
        assert (
            page.locator("#neighbours-list img").first.evaluate(
                "img => img.decode().then(() => img.naturalWidth)"
            )
            > 0
        )
        page.close()


def _detector_of(device: httpx.Client, image_query_id: str) -> str:
    detector_id: str = device.get(f"/device-api/v1/image-queries/{image_query_id}").json()["detector_id"]
    return detector_id
