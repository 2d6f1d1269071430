"""Rows made through the cloud's own API, as its clients make them: a detector with image queries (a
device's calls), and the trainer's uploads made small (a tiny backbone, tiny split bundles on it as
versions of a detector, embeddings, a metrics report). Each works with any token its routes accept."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.backbone import BackboneRef
from common.bundle_archive import pack_bundle
from tests.support.cloud_factories import png
from tests.support.split_bundles import TINY_DIM, export_tiny_backbone, write_tiny_split_bundle

DETECTORS = "/device-api/v1/detectors"


def new_detector(http: httpx.Client, images: int = 0, name: str | None = None) -> tuple[str, list[str]]:
    """A BINARY detector and `images` image queries on it (answered later: want_async), as a camera
    script makes them; (detector id, image query ids)."""
    resp = http.post(DETECTORS, json={"name": name or f"det-{secrets.token_hex(4)}", "query": "Is it there?"})
    assert resp.status_code == 201, resp.text
    detector_id: str = resp.json()["id"]
    queries = []
    for seed in range(images):
        submitted = http.post(
            "/device-api/v1/image-queries",
            params={"detector_id": detector_id, "want_async": "true"},
            content=png(seed),
            headers={"Content-Type": "image/png"},
        )
        assert submitted.status_code == 200, submitted.text
        queries.append(submitted.json()["id"])
    return detector_id, queries


def register_tiny_backbone(http: httpx.Client, work: Path, seed: int = 7) -> BackboneRef:
    path = work / f"backbone-{seed}.onnx"
    ref = export_tiny_backbone(path, seed)
    resp = http.put(
        f"/api/v1/backbones/{ref.sha256}",
        data={"ref": ref.model_dump_json()},
        files={"file": ("backbone.onnx", path.read_bytes(), "application/octet-stream")},
    )
    assert resp.status_code in (200, 201), resp.text
    return ref


def store_embeddings(http: httpx.Client, backbone: BackboneRef, image_query_ids: list[str]) -> int:
    out = io.BytesIO()
    np.save(out, np.zeros((len(image_query_ids), TINY_DIM), dtype=np.float16), allow_pickle=False)
    resp = http.post(
        f"/api/v1/backbones/{backbone.sha256}/embeddings",
        data={"image_query_ids": json.dumps(image_query_ids)},
        files={"vectors": ("vectors.npy", out.getvalue(), "application/octet-stream")},
    )
    assert resp.status_code == 200, resp.text
    stored: int = resp.json()["stored"]
    return stored


def upload_tiny_version(
    http: httpx.Client,
    detector_id: str,
    backbone: BackboneRef,
    work: Path,
    version: str = "v1-tinyhead0001",
    *,
    promote: bool = False,
) -> dict[str, Any]:
    """A tiny split bundle registered as `version` of a BINARY detector; the model version's JSON."""
    bundle = write_tiny_split_bundle(work / version, detector_id, backbone, version=version)
    archive = work / f"{version}.tar.gz"
    pack_bundle(bundle, archive)
    resp = http.post(
        f"/api/v1/detectors/{detector_id}/models",
        files={"bundle": (archive.name, archive.read_bytes(), "application/gzip")},
        data={"promote": "true" if promote else "false", "lineage": json.dumps({"from": "tests"})},
    )
    assert resp.status_code == 201, resp.text
    model: dict[str, Any] = resp.json()
    return model


def upload_metrics_report(http: httpx.Client, model_id: str) -> None:
    resp = http.post(
        f"/api/v1/models/{model_id}/reports/metrics.json",
        content=b'{"accuracy": 1.0}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 201, resp.text
