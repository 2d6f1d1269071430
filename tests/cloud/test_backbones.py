"""Shared backbones against a real cloud process: the backbone registry (upload, refusals, download),
split bundles in the model registry (refused without their backbone, warmed up, served to edges with
the backbone's URL), the cloud answering with a split bundle through one shared backbone session,
the embedding store, and dataset exports that carry embeddings instead of images."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import LocalBlobStore
from cloud.app.core import backbones as core_backbones
from cloud.app.core import model_answers
from cloud.app.core.exports import run_export
from cloud.app.core.registry import InstalledBundles, fetch_etag
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import Detector
from cloud.app.settings import CloudSettings, to_async_url
from common.backbone import MAX_BACKBONE_BYTES, BackboneRef, BackboneStore
from common.bundle import HEAD_FILE, OODD_FILE, DetectorMode, read_metadata, read_pipeline, write_split_bundle
from common.bundle_archive import pack_bundle
from common.ids import new_detector_id
from common.imaging import ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from common.wire.dataset_export import ExportManifest
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_registry import (
    add_image_query,
    add_label,
    ensure_detector,
    run_in_db,
    token_for,
)
from tests.support.cloud_factories_worker import purge_deleted_detectors
from tests.support.split_bundles import TINY_DIM, export_tiny_backbone, write_tiny_split_bundle

pytestmark = pytest.mark.in_process

# Small, so that "too big" costs a few hundred kilobytes; the tiny test backbone is a few kilobytes.
BACKBONE_LIMIT = 256 * 1024
FETCH = "/edge-api/v1/fetch-model-urls/{}/"


@pytest.fixture(scope="module")
def cloud(
    request: pytest.FixtureRequest, cloud_db: support.TestDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudServer]:
    env = {"CLOUD_MAX_BACKBONE_BYTES": str(BACKBONE_LIMIT)}
    server = support.cloud_kind(request.node)(
        cloud_db.url, Path(tmp_path_factory.mktemp("cloud")), env=env
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer) -> dict[str, str]:
    return {
        "admin": run_in_db(cloud.database_url, lambda s: token_for(s, "admin")),
        "reviewer": run_in_db(cloud.database_url, lambda s: token_for(s, "reviewer")),
    }


@pytest.fixture(scope="module")
def admin(cloud: CloudServer, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with cloud.client(token=tokens["admin"]) as http:
        yield http


@pytest.fixture(scope="module")
def device(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as http:
        yield http


@pytest.fixture(scope="module")
def reviewer(cloud: CloudServer, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with cloud.client(token=tokens["reviewer"]) as http:
        yield http


class Tiny:
    """A tiny backbone file (distinct bytes per seed) and its ref."""

    def __init__(self, root: Path, seed: int) -> None:
        self.path = root / f"backbone-{seed}.onnx"
        self.ref = export_tiny_backbone(self.path, seed)
        self.data = self.path.read_bytes()

    @property
    def sha(self) -> str:
        return self.ref.sha256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = Path(tmp_path_factory.mktemp("backbones"))
    made: dict[int, Tiny] = {}

    def make(seed: int) -> Tiny:
        if seed not in made:
            made[seed] = Tiny(root, seed)
        return made[seed]

    return make


def put_backbone(http: httpx.Client, sha: str, ref: BackboneRef | str, data: bytes) -> httpx.Response:
    text = ref if isinstance(ref, str) else ref.model_dump_json()
    return http.put(
        f"/api/v1/backbones/{sha}",
        data={"ref": text},
        files={"file": ("backbone.onnx", data, "application/octet-stream")},
    )


def registered(http: httpx.Client, backbone: Tiny) -> Tiny:
    resp = put_backbone(http, backbone.sha, backbone.ref, backbone.data)
    assert resp.status_code in (200, 201), resp.text
    return backbone


def upload_bundle(
    http: httpx.Client, detector_id: str, bundle: Path, work: Path, **form: str
) -> httpx.Response:
    archive = work / f"{bundle.name}.tar.gz"
    pack_bundle(bundle, archive)
    return http.post(
        f"/api/v1/detectors/{detector_id}/models",
        files={"bundle": (archive.name, archive.read_bytes(), "application/gzip")},
        data=form,
    )


def new_binary_detector(cloud: CloudServer) -> str:
    detector_id = new_detector_id()
    run_in_db(cloud.database_url, lambda s: ensure_detector(s, detector_id))
    return detector_id


def png_bytes(seed: int) -> bytes:
    from tests.support.cloud_factories import png

    return png(seed, size=40)


# --- the backbone registry ------------------------------------------------------------------------


def test_a_backbone_is_registered_once_and_read_back(
    admin: httpx.Client, reviewer: httpx.Client, device: httpx.Client, tiny: Any, cloud: CloudServer
) -> None:
    backbone = tiny(11)
    first = put_backbone(admin, backbone.sha, backbone.ref, backbone.data)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["sha256"] == backbone.sha and body["id"] == backbone.ref.id
    assert body["size_bytes"] == len(backbone.data)
    assert BackboneRef.model_validate(body["ref"]) == backbone.ref
    assert body["download_url"] == f"{cloud.url}/api/v1/backbones/{backbone.sha}/download"

    again = put_backbone(admin, backbone.sha, backbone.ref, backbone.data)
    assert again.status_code == 200
    assert again.json() == body

    assert reviewer.get(f"/api/v1/backbones/{backbone.sha}").json() == body
    download = device.get(body["download_url"])
    assert download.status_code == 200
    assert download.headers["x-content-sha256"] == backbone.sha
    assert hashlib.sha256(download.content).hexdigest() == backbone.sha
    assert download.content == backbone.data

    assert admin.get(f"/api/v1/backbones/{'0' * 64}").status_code == 404
    assert admin.get(f"/api/v1/backbones/{'0' * 64}/download").status_code == 404
    assert admin.get("/api/v1/backbones/not-a-sha").status_code == 400


def test_the_same_bytes_described_otherwise_are_a_conflict(admin: httpx.Client, tiny: Any) -> None:
    backbone = registered(admin, tiny(12))
    other = backbone.ref.model_copy(update={"embedding_dim": TINY_DIM * 2})
    resp = put_backbone(admin, backbone.sha, other, backbone.data)
    assert resp.status_code == 409
    assert "other inputs or outputs" in resp.json()["detail"]
    # A new description of provenance alone is fine: the stored ref stays.
    relabelled = backbone.ref.model_copy(update={"source": "rebuilt elsewhere"})
    kept = put_backbone(admin, backbone.sha, relabelled, backbone.data)
    assert kept.status_code == 200 and kept.json()["ref"]["source"] == backbone.ref.source


def test_uploads_that_do_not_match_or_do_not_load_are_refused(
    admin: httpx.Client, tiny: Any, tmp_path: Path
) -> None:
    good, other = tiny(13), tiny(14)
    cases: dict[str, tuple[str, BackboneRef | str, bytes, int, str]] = {
        "bytes hash to another name": (good.sha, good.ref, other.data, 422, "hash to"),
        "ref names other bytes": (other.sha, good.ref, other.data, 422, "ref.sha256"),
        "ref has the wrong size": (
            good.sha,
            good.ref.model_copy(update={"bytes": len(good.data) + 1}),
            good.data,
            422,
            "ref.bytes",
        ),
        "outputs it lacks": (
            good.sha,
            good.ref.model_copy(update={"embedding_output": "pooled"}),
            good.data,
            422,
            "lacks outputs",
        ),
        "ref is not JSON": (good.sha, "{not json", good.data, 400, "BackboneRef"),
        "ref over the format's limit": (
            good.sha,
            good.ref.model_dump_json().replace(
                f'"bytes":{len(good.data)}', f'"bytes":{MAX_BACKBONE_BYTES + 1}'
            ),
            good.data,
            400,
            "bytes",
        ),
    }
    junk = os.urandom(4096)
    junk_sha = hashlib.sha256(junk).hexdigest()
    junk_ref = good.ref.model_copy(update={"sha256": junk_sha, "bytes": len(junk)})
    cases["not ONNX"] = (junk_sha, junk_ref, junk, 422, "does not load")
    big = os.urandom(BACKBONE_LIMIT + 1)
    big_sha = hashlib.sha256(big).hexdigest()
    big_ref = good.ref.model_copy(update={"sha256": big_sha, "bytes": len(big)})
    cases["over the size limit"] = (big_sha, big_ref, big, 413, "limit")

    for case, (sha, ref, data, status, words) in cases.items():
        resp = put_backbone(admin, sha, ref, data)
        assert resp.status_code == status, (case, resp.text)
        assert words in resp.json()["detail"], (case, resp.json())
    for sha in (good.sha, other.sha, junk_sha, big_sha):
        assert admin.get(f"/api/v1/backbones/{sha}").status_code == 404

    no_file = admin.put(f"/api/v1/backbones/{good.sha}", data={"ref": good.ref.model_dump_json()})
    assert no_file.status_code == 400
    not_multipart = admin.put(f"/api/v1/backbones/{good.sha}", content=good.data)
    assert not_multipart.status_code == 400
    bad_name = put_backbone(admin, "ABC", good.ref, good.data)
    assert bad_name.status_code == 400


def test_only_admins_register_and_only_devices_download(
    admin: httpx.Client, reviewer: httpx.Client, device: httpx.Client, cloud: CloudServer, tiny: Any
) -> None:
    backbone = tiny(15)
    assert put_backbone(device, backbone.sha, backbone.ref, backbone.data).status_code == 403
    assert put_backbone(reviewer, backbone.sha, backbone.ref, backbone.data).status_code == 403
    registered(admin, backbone)
    assert reviewer.get(f"/api/v1/backbones/{backbone.sha}/download").status_code == 403
    assert device.get(f"/api/v1/backbones/{backbone.sha}/download").status_code == 200
    with cloud.client(token=None) as anonymous:
        assert anonymous.get(f"/api/v1/backbones/{backbone.sha}").status_code == 401


# --- split bundles in the model registry ------------------------------------------------------------


def test_a_split_bundle_needs_its_backbone_registered_first(
    admin: httpx.Client, device: httpx.Client, cloud: CloudServer, tiny: Any, tmp_path: Path
) -> None:
    backbone = tiny(21)
    detector_id = new_binary_detector(cloud)
    bundle = write_tiny_split_bundle(tmp_path / "v1", detector_id, backbone.ref, version="v1")

    refused = upload_bundle(admin, detector_id, bundle, tmp_path)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert backbone.sha in detail and "not registered" in detail
    assert admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"] == []

    registered(admin, backbone)
    accepted = upload_bundle(admin, detector_id, bundle, tmp_path, promote="true")
    assert accepted.status_code == 201, accepted.text
    model = accepted.json()
    assert model["predictor"]["backbone"]["sha256"] == backbone.sha
    assert BackboneRef.model_validate(model["predictor"]["backbone"]) == backbone.ref
    assert model["predictor"]["head_input"] == "embedding"
    assert model["manifest"]["backbone"]["sha256"] == backbone.sha

    first = device.get(FETCH.format(detector_id))
    assert first.status_code == 200
    info = first.json()
    assert info["backbone"] == {
        "id": backbone.ref.id,
        "sha256": backbone.sha,
        "size_bytes": len(backbone.data),
        "download_url": f"{cloud.url}/api/v1/backbones/{backbone.sha}/download",
    }
    etag = first.headers["etag"]
    assert etag == fetch_etag(model["id"], model["sha256"], backbone.sha)
    assert device.get(FETCH.format(detector_id), headers={"If-None-Match": etag}).status_code == 304
    got = device.get(info["backbone"]["download_url"])
    assert got.headers["x-content-sha256"] == backbone.sha and got.content == backbone.data

    # A new version on another backbone: another ETag and another backbone for the edge to fetch.
    second_backbone = registered(admin, tiny(22))
    v2 = write_tiny_split_bundle(tmp_path / "v2", detector_id, second_backbone.ref, version="v2")
    assert upload_bundle(admin, detector_id, v2, tmp_path, promote="true").status_code == 201
    changed = device.get(FETCH.format(detector_id), headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["backbone"]["sha256"] == second_backbone.sha
    assert changed.headers["etag"] != etag


def test_the_etag_names_the_backbone() -> None:
    a, b = "a" * 64, "b" * 64
    assert fetch_etag("mdl_x", "0" * 64, a) != fetch_etag("mdl_x", "0" * 64, b)
    assert fetch_etag("mdl_x", "0" * 64, a) != fetch_etag("mdl_x", "0" * 64)


def test_single_file_bundles_have_no_backbone_in_fetch_model_urls(
    admin: httpx.Client, device: httpx.Client, cloud: CloudServer, demo_models: Path, tmp_path: Path
) -> None:
    from tests.support.models import clone_bundle
    from training.demo_bundles import DEMO_SEVEN_ID

    detector_id = new_binary_detector(cloud)
    bundle = clone_bundle(demo_models / DEMO_SEVEN_ID / "current", detector_id, tmp_path / "models")
    assert upload_bundle(admin, detector_id, bundle, tmp_path, promote="true").status_code == 201
    info = device.get(FETCH.format(detector_id)).json()
    assert info["backbone"] is None
    model_id = info["model_version_id"]
    assert admin.get(f"/api/v1/models/{model_id}").json()["predictor"]["backbone"] is None


def test_a_bundle_whose_graphs_do_not_run_is_refused(
    admin: httpx.Client, cloud: CloudServer, tiny: Any, tmp_path: Path
) -> None:
    backbone = registered(admin, tiny(23))
    detector_id = new_binary_detector(cloud)
    good = write_tiny_split_bundle(tmp_path / "good", detector_id, backbone.ref, version="v1")
    meta = read_metadata(good).model_copy(update={"version": "v2-garbage"})
    garbage = tmp_path / "garbage"
    # Hashes in the manifest are right: only loading the graph can tell that it is not ONNX.
    write_split_bundle(
        garbage, b"this is not an onnx graph", (good / OODD_FILE).read_bytes(), read_pipeline(good), meta
    )
    resp = upload_bundle(admin, detector_id, garbage, tmp_path)
    assert resp.status_code == 422, resp.text
    assert "does not run" in resp.json()["detail"]
    assert str(tmp_path) not in resp.json()["detail"]

    # A head with three outputs under a two-label detector runs, but not as the metadata says.
    three = write_tiny_split_bundle(
        tmp_path / "three",
        detector_id,
        backbone.ref,
        version="v3",
        labels=("a", "b", "c"),
        mode=DetectorMode.MULTI_CLASS,
    )
    wrong = tmp_path / "wrong"
    write_split_bundle(
        wrong,
        (three / HEAD_FILE).read_bytes(),
        (three / OODD_FILE).read_bytes(),
        read_pipeline(good),
        read_metadata(good).model_copy(update={"version": "v4-wrong"}),
    )
    resp = upload_bundle(admin, detector_id, wrong, tmp_path)
    assert resp.status_code == 422 and "classes" in resp.json()["detail"]
    assert admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"] == []
    # The good one is still welcome.
    assert upload_bundle(admin, detector_id, good, tmp_path).status_code == 201


# --- the cloud answers with split bundles ----------------------------------------------------------


def test_the_cloud_answers_with_a_split_bundle_as_the_runtime_does(
    admin: httpx.Client, device: httpx.Client, cloud: CloudServer, tiny: Any, tmp_path: Path
) -> None:
    backbone = registered(admin, tiny(31))
    detector_id = new_binary_detector(cloud)
    bundle = write_tiny_split_bundle(tmp_path / "v1", detector_id, backbone.ref, version="v1", threshold=0.5)
    assert upload_bundle(admin, detector_id, bundle, tmp_path, promote="true").status_code == 201

    store = BackboneStore(tmp_path / "local-backbones")
    store.install_file(backbone.path, backbone.ref)
    runtime = ModelRuntime(bundle, backbone_store=store, backbones=BackbonePool())
    for seed in range(3):
        image = png_bytes(seed)
        expected = runtime.predict(image, ImageLimits())
        resp = device.post("/device-api/v1/image-queries", params={"detector_id": detector_id}, content=image)
        assert resp.status_code == 200, resp.text
        iq = resp.json()
        assert iq["result"]["source"] == "ALGORITHM" and iq["result"]["from_edge"] is False
        assert iq["result"]["label"] == expected.label
        assert iq["result"]["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert iq["intellioptics"]["model_version"] == "v1"
    installed = cloud.data_dir / "models" / "backbones" / backbone.sha / "backbone.onnx"
    assert installed.read_bytes() == backbone.data


def test_detectors_on_one_backbone_share_one_session_in_the_cloud(
    admin: httpx.Client, cloud: CloudServer, tiny: Any, tmp_path: Path
) -> None:
    backbone = registered(admin, tiny(32))
    detectors = [new_binary_detector(cloud) for _ in range(2)]
    for i, detector_id in enumerate(detectors):
        bundle = write_tiny_split_bundle(
            tmp_path / f"b{i}", detector_id, backbone.ref, version="v1", seed=i + 5
        )
        assert upload_bundle(admin, detector_id, bundle, tmp_path, promote="true").status_code == 201

    async def scenario() -> None:
        settings = CloudSettings(data_dir=tmp_path / "cloud", database_url=cloud.database_url)
        engine = make_engine(to_async_url(cloud.database_url), pool_size=2)
        local = core_backbones.LocalBackbones.for_settings(settings)
        models = model_answers.ProductionModels(
            LocalBlobStore(cloud.data_dir / "blobs"),
            InstalledBundles(core_backbones.model_root(settings), local),
            model_answers.CloudModelCache(settings.model_cache_size, local.store, local.pool),
        )
        try:
            async with make_sessionmaker(engine)() as session:
                for detector_id in detectors:
                    prediction = await model_answers.predict(
                        models, session, detector_id, png_bytes(1), ImageLimits()
                    )
                    assert prediction is not None and prediction.detector_id == detector_id
            assert local.pool.loaded() == {backbone.sha: 2}
            assert local.store.list() == [backbone.sha]
            models.cache.clear()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# --- embeddings and exports -----------------------------------------------------------------------


def npy(matrix: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, matrix, allow_pickle=False)
    return out.getvalue()


def post_embeddings(http: httpx.Client, sha: str, ids: Any, vectors: bytes) -> httpx.Response:
    return http.post(
        f"/api/v1/backbones/{sha}/embeddings",
        data={"image_query_ids": ids if isinstance(ids, str) else json.dumps(ids)},
        files={"vectors": ("vectors.npy", vectors, "application/octet-stream")},
    )


def vectors_for(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).normal(size=(n, TINY_DIM)).astype(np.float16)


def labelled_queries(cloud: CloudServer, spec: list[tuple[str | None, bool]]) -> tuple[str, list[str]]:
    """A BINARY detector and one image query per (label or None, image stored?)."""

    async def work(session: AsyncSession) -> tuple[str, list[str]]:
        blobs = LocalBlobStore(cloud.data_dir / "blobs")
        detector = await ensure_detector(session)
        ids = []
        for i, (label, stored) in enumerate(spec):
            iq_id = await add_image_query(session, blobs, detector.id, png_bytes(100 + i), store_image=stored)
            if label is not None:
                await add_label(session, detector.id, iq_id, label)
            ids.append(iq_id)
        return detector.id, ids

    return run_in_db(cloud.database_url, work)


def test_embeddings_are_stored_once_and_validated(
    admin: httpx.Client, device: httpx.Client, cloud: CloudServer, tiny: Any
) -> None:
    backbone = registered(admin, tiny(41))
    _, ids = labelled_queries(cloud, [("YES", True)] * 4)
    vectors = vectors_for(4)

    first = post_embeddings(admin, backbone.sha, ids[:3], npy(vectors[:3]))
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 3, "already": 0, "unknown": []}
    # Again with one new id and one this cloud does not know: existing rows stay, the stranger is named.
    stranger = "iq_" + "z" * 27
    again = post_embeddings(
        admin,
        backbone.sha,
        [ids[1], ids[2], ids[3], stranger],
        npy(np.concatenate([vectors[1:], vectors[:1]])),
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"stored": 1, "already": 2, "unknown": [stranger]}
    float32 = post_embeddings(admin, backbone.sha, ids[:1], npy(vectors[:1].astype(np.float32)))
    assert float32.json() == {"stored": 0, "already": 1, "unknown": []}

    refusals = {
        "rows and ids differ": (ids[:2], npy(vectors[:3]), 400, "shape"),
        "wrong dim": (ids[:1], npy(np.zeros((1, TINY_DIM + 1), np.float16)), 400, "shape"),
        "not finite": (ids[:1], npy(np.full((1, TINY_DIM), np.nan, np.float16)), 400, "finite"),
        "too large for float16": (ids[:1], npy(np.full((1, TINY_DIM), 1e6, np.float32)), 400, "finite"),
        "integers": (ids[:1], npy(np.zeros((1, TINY_DIM), np.int32)), 400, "float16"),
        "not npy": (ids[:1], b"\x93NUMPY garbage", 400, ".npy"),
        "ids not a list": ('{"a": 1}', npy(vectors[:1]), 400, "JSON array"),
        "ids not JSON": ("iq_x,iq_y", npy(vectors[:1]), 400, "JSON array"),
        "an id twice": ([ids[0], ids[0]], npy(vectors[:2]), 400, "more than once"),
    }
    for case, (case_ids, data, status, words) in refusals.items():
        resp = post_embeddings(admin, backbone.sha, case_ids, data)
        assert resp.status_code == status, (case, resp.text)
        assert words in resp.json()["detail"], (case, resp.json())
    assert post_embeddings(admin, "0" * 64, ids[:1], npy(vectors[:1])).status_code == 404
    assert post_embeddings(device, backbone.sha, ids[:1], npy(vectors[:1])).status_code == 403
    missing_part = admin.post(
        f"/api/v1/backbones/{backbone.sha}/embeddings", data={"image_query_ids": json.dumps(ids[:1])}
    )
    assert missing_part.status_code == 400


def read_export(data: bytes) -> tuple[list[str], ExportManifest, dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        files = {}
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            assert fh is not None
            files[member.name] = fh.read()
    return names, ExportManifest.model_validate_json(files.pop("manifest.json")), files


def build_export(cloud: CloudServer, admin: httpx.Client, detector_id: str, body: Any, work: Path) -> bytes:
    """Queue through the API, build in-process as the worker does, download through the API."""
    created = admin.post(f"/api/v1/detectors/{detector_id}/exports", json=body)
    assert created.status_code == 202, created.text
    job = created.json()
    blobs = LocalBlobStore(cloud.data_dir / "blobs")

    async def build() -> None:
        engine = make_engine(to_async_url(cloud.database_url), pool_size=2)
        try:
            await run_export(make_sessionmaker(engine), blobs, job["id"], work)
        finally:
            await engine.dispose()

    asyncio.run(build())
    status = admin.get(f"/api/v1/exports/{job['id']}").json()
    assert status["status"] == "succeeded", status
    download = admin.get(status["download_url"])
    assert download.status_code == 200
    return download.content


def test_an_export_with_images_missing_carries_embeddings_instead_of_images(
    admin: httpx.Client, cloud: CloudServer, tiny: Any, tmp_path: Path
) -> None:
    backbone = registered(admin, tiny(42))
    other = registered(admin, tiny(43))
    detector_id, ids = labelled_queries(
        cloud,
        [
            ("YES", True),  # 0: embedded
            ("NO", True),  # 1: embedded
            ("NO", True),  # 2: only its image
            ("YES", False),  # 3: embedded, image gone: still usable
            ("NO", False),  # 4: neither: left out
            ("UNCLEAR", True),  # 5: an out-of-domain example, with its image
            (None, True),  # 6: never labelled
        ],
    )
    vectors = vectors_for(3, seed=7)
    embedded = [ids[0], ids[1], ids[3]]
    assert post_embeddings(admin, backbone.sha, embedded, npy(vectors)).json()["stored"] == 3
    # Another backbone's embeddings of item 2 do not count for this backbone.
    assert post_embeddings(admin, other.sha, [ids[2]], npy(vectors[:1])).json()["stored"] == 1

    data = build_export(
        cloud, admin, detector_id, {"backbone_sha256": backbone.sha, "images": "missing"}, tmp_path
    )
    assert data[:2] == b"\x1f\x8b" and data[8] == 4  # gzip, XFL=4: the fastest level
    names, manifest, files = read_export(data)
    assert names[0] == "manifest.json"
    assert manifest.format_version == 3
    items = {item.image_query_id: item for item in manifest.items}
    assert sorted(items) == sorted([ids[0], ids[1], ids[2], ids[3], ids[5]])
    assert {i: items[i].label for i in items} == {
        ids[0]: "YES",
        ids[1]: "NO",
        ids[2]: "NO",
        ids[3]: "YES",
        ids[5]: "UNCLEAR",
    }
    assert {i for i in items if items[i].image is None} == set(embedded)
    assert items[ids[2]].image == f"images/{ids[2]}.png"
    assert sorted(n for n in names if n.startswith("images/")) == sorted(
        [f"images/{ids[2]}.png", f"images/{ids[5]}.png"]
    )
    assert files[f"images/{ids[2]}.png"] == png_bytes(102)
    assert manifest.excluded == {"missing_image": 1}

    assert list(manifest.embeddings) == [backbone.sha]
    entry = manifest.embeddings[backbone.sha]
    assert (
        entry.file == f"embeddings/{backbone.sha}.npy" and entry.dim == TINY_DIM and entry.dtype == "float16"
    )
    assert sorted(entry.image_query_ids) == sorted(embedded)
    matrix = np.load(io.BytesIO(files[entry.file]), allow_pickle=False)
    assert matrix.dtype == np.float16 and matrix.shape == (3, TINY_DIM)
    by_id = dict(zip(embedded, vectors, strict=True))
    for row, iq_id in zip(matrix, entry.image_query_ids, strict=True):
        assert np.array_equal(row, by_id[iq_id])

    # images="all": the same embeddings, and every image that exists.
    _, full, full_files = read_export(
        build_export(cloud, admin, detector_id, {"backbone_sha256": backbone.sha}, tmp_path)
    )
    full_items = {item.image_query_id: item for item in full.items}
    assert full_items[ids[0]].image is not None and full_items[ids[3]].image is None
    assert sorted(full.embeddings[backbone.sha].image_query_ids) == sorted(embedded)
    assert sum(name.startswith("images/") for name in full_files) == 4  # 0, 1, 2 and the UNCLEAR 5

    # No body: format 2 without embeddings, every image that exists (as format 1 held).
    _, plain, _ = read_export(build_export(cloud, admin, detector_id, None, tmp_path))
    assert plain.embeddings == {} and sorted(i.image_query_id for i in plain.items) == sorted(
        [*ids[:3], ids[5]]
    )
    job = admin.get(f"/api/v1/exports/{plain.export_id}").json()
    assert job["backbone_sha256"] is None and job["images"] == "all"


def test_export_requests_are_checked(admin: httpx.Client, cloud: CloudServer) -> None:
    detector_id, _ = labelled_queries(cloud, [("YES", True)])
    path = f"/api/v1/detectors/{detector_id}/exports"
    assert admin.post(path, json={"images": "missing"}).status_code == 400
    assert admin.post(path, json={"backbone_sha256": "xyz"}).status_code == 400
    assert admin.post(path, json={"images": "some"}).status_code == 400
    queued = admin.post(path, json={"backbone_sha256": "a" * 64, "images": "missing"})
    assert queued.status_code == 202
    assert queued.json()["backbone_sha256"] == "a" * 64 and queued.json()["images"] == "missing"


def test_embeddings_go_with_their_image_query(admin: httpx.Client, cloud: CloudServer, tiny: Any) -> None:
    """ON DELETE CASCADE: purging a deleted detector removes its queries' embeddings; until the purge,
    a restore would bring them back."""
    backbone = registered(admin, tiny(44))
    detector_id, ids = labelled_queries(cloud, [("YES", True)] * 2)
    assert post_embeddings(admin, backbone.sha, ids, npy(vectors_for(2))).json()["stored"] == 2
    assert admin.delete(f"/device-api/v1/detectors/{detector_id}").status_code == 204

    async def count(session: AsyncSession) -> tuple[int, bool]:
        from sqlalchemy import func, select

        from cloud.app.db.models import ImageEmbedding

        n: int = (
            await session.execute(
                select(func.count()).select_from(ImageEmbedding).where(ImageEmbedding.image_query_id.in_(ids))
            )
        ).scalar_one()
        return n, await session.get(Detector, detector_id) is not None

    assert run_in_db(cloud.database_url, count) == (2, True)
    later = datetime.now(UTC) + timedelta(days=31)
    assert detector_id in purge_deleted_detectors(cloud.database_url, cloud.data_dir, later)
    assert run_in_db(cloud.database_url, count) == (0, False)
