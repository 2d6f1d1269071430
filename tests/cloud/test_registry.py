"""Model registry against a real cloud process: bundle archives, upload and verification, the
production alias (promote, rollback, delete), the edge's fetch-model-urls poll with ETags, downloads,
roles, and the cloud's own installed copy of production bundles."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore, LocalBlobStore
from cloud.app.core.backbones import LocalBackbones, model_root
from cloud.app.core.registry import InstalledBundles, production_bundle_dir
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.settings import CloudSettings, to_async_url
from common.bundle import (
    MANIFEST_FILE,
    OODD_FILE,
    PRIMARY_FILE,
    BundleError,
    read_metadata,
    read_pipeline,
    verify_bundle,
    write_bundle,
)
from common.bundle_archive import (
    ArchiveError,
    ArchiveTooLargeError,
    pack_bundle,
    sha256_of,
    unpack_bundle,
)
from common.ids import new_detector_id
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_registry import (
    ensure_detector,
    ensure_detector_for_bundle,
    forget_models,
    run_in_db,
    token_for,
)
from training.demo_bundles import DEMO_DIGIT_ID, DEMO_SEVEN_ID

pytestmark = pytest.mark.in_process

# --- helpers --------------------------------------------------------------------------------------


def variant(
    src: Path, out: Path, *, detector_id: str | None = None, version: str | None = None, **meta: Any
) -> Path:
    """A valid bundle with the same weights as `src` and other metadata (id, version, metrics...)."""
    updates: dict[str, Any] = dict(meta)
    if detector_id:
        updates["detector_id"] = detector_id
    if version:
        updates["version"] = version
    metadata = read_metadata(src).model_copy(update=updates)
    write_bundle(
        out, (src / PRIMARY_FILE).read_bytes(), (src / OODD_FILE).read_bytes(), read_pipeline(src), metadata
    )
    return out


def raw_tar(out: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out


def tar_dir(src: Path, out: Path, change: Callable[[str, bytes], bytes] = lambda n, b: b) -> Path:
    """Tar a bundle directory by hand (not with our packer), optionally changing file contents."""
    members = []
    for path in sorted(src.iterdir()):
        members.append((tarfile.TarInfo(path.name), change(path.name, path.read_bytes())))
    return raw_tar(out, members)


def upload(http: httpx.Client, detector_id: str, archive: Path, **form: str) -> httpx.Response:
    return http.post(
        f"/api/v1/detectors/{detector_id}/models",
        files={"bundle": (archive.name, archive.read_bytes(), "application/gzip")},
        data=form,
    )


# --- fixtures -------------------------------------------------------------------------------------


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
def seven_bundle(demo_models: Path) -> Path:
    return (demo_models / DEMO_SEVEN_ID / "current").resolve()


@pytest.fixture(scope="module")
def digit_bundle(demo_models: Path) -> Path:
    return (demo_models / DEMO_DIGIT_ID / "current").resolve()


@pytest.fixture(scope="module")
def demo_detectors(cloud: CloudServer, seven_bundle: Path, digit_bundle: Path) -> None:
    """Detector rows with the demo bundles' fixed ids, with no model versions yet."""

    async def setup(session: Any) -> None:
        for bundle in (seven_bundle, digit_bundle):
            detector = await ensure_detector_for_bundle(session, bundle)
            await forget_models(session, detector.id)

    run_in_db(cloud.database_url, setup)


NewDetector = Callable[..., tuple[str, list[Path]]]


@pytest.fixture
def new_detector(cloud: CloudServer, seven_bundle: Path, tmp_path: Path) -> NewDetector:
    """A fresh BINARY detector and `n` packed versions of the seven bundle for it: v1, v2, ..."""

    def make(n: int = 1) -> tuple[str, list[Path]]:
        detector_id = new_detector_id()
        run_in_db(cloud.database_url, lambda s: ensure_detector(s, detector_id))
        archives = []
        for i in range(1, n + 1):
            bundle = variant(
                seven_bundle, tmp_path / f"{detector_id}-v{i}", detector_id=detector_id, version=f"v{i}"
            )
            archives.append(pack_bundle_to(bundle, tmp_path / f"{detector_id}-v{i}.tar.gz"))
        return detector_id, archives

    return make


def pack_bundle_to(bundle: Path, out: Path) -> Path:
    pack_bundle(bundle, out)
    return out


# --- bundle archives (common.bundle_archive) ----------------------------------------------------------


def test_packing_is_deterministic_and_round_trips(seven_bundle: Path, tmp_path: Path) -> None:
    a = pack_bundle_to(seven_bundle, tmp_path / "a.tar.gz")
    b = pack_bundle_to(seven_bundle, tmp_path / "b.tar.gz")
    assert sha256_of(a) == sha256_of(b)
    with tarfile.open(a) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(m.isreg() and m.mtime == 0 for m in tar.getmembers())
    manifest = unpack_bundle(a, tmp_path / "out")
    assert manifest.version == read_metadata(seven_bundle).version
    assert verify_bundle(tmp_path / "out") == verify_bundle(seven_bundle)


def test_unpack_rejects_unsafe_members(seven_bundle: Path, tmp_path: Path) -> None:
    good = (seven_bundle / MANIFEST_FILE).read_bytes()
    link = tarfile.TarInfo("primary.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    device = tarfile.TarInfo("oodd.onnx")
    device.type = tarfile.CHRTYPE
    cases: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
        "absolute": [(tarfile.TarInfo("/etc/cron.d/x"), good)],
        "dotdot": [(tarfile.TarInfo("../escape.txt"), good)],
        "nested": [(tarfile.TarInfo("sub/manifest.json"), good)],
        "symlink": [(link, None)],
        "device": [(device, None)],
        "duplicate": [(tarfile.TarInfo("manifest.json"), good), (tarfile.TarInfo("manifest.json"), good)],
        "many": [(tarfile.TarInfo(f"f{i}.bin"), b"x") for i in range(40)],
    }
    for case, members in cases.items():
        archive = raw_tar(tmp_path / f"{case}.tar.gz", members)
        with pytest.raises(ArchiveError):
            unpack_bundle(archive, tmp_path / f"out-{case}")
        assert not (tmp_path / "escape.txt").exists()
    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError, match="not a readable"):
        unpack_bundle(not_gzip, tmp_path / "out-plain")


def test_unpack_enforces_size_limits(seven_bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle_to(seven_bundle, tmp_path / "seven.tar.gz")
    size = archive.stat().st_size
    with pytest.raises(ArchiveTooLargeError, match="archive is"):
        unpack_bundle(archive, tmp_path / "a", max_archive_bytes=size - 1)
    with pytest.raises(ArchiveTooLargeError, match="member"):
        unpack_bundle(archive, tmp_path / "b", max_member_bytes=1000)
    with pytest.raises(ArchiveTooLargeError):
        unpack_bundle(archive, tmp_path / "c", max_total_bytes=size // 4)
    # A gzip bomb: a tiny archive that expands far beyond the total limit.
    bomb = raw_tar(tmp_path / "bomb.tar.gz", [(tarfile.TarInfo("primary.onnx"), b"\0" * (8 << 20))])
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(ArchiveTooLargeError):
        unpack_bundle(bomb, tmp_path / "d", max_total_bytes=1 << 20, max_member_bytes=16 << 20)


def test_unpack_verifies_the_bundle(seven_bundle: Path, tmp_path: Path) -> None:
    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name == PRIMARY_FILE else data

    archive = tar_dir(seven_bundle, tmp_path / "tampered.tar.gz", flip)
    with pytest.raises(BundleError, match="does not match its sha256"):
        unpack_bundle(archive, tmp_path / "out")


# --- upload and verification ------------------------------------------------------------------------


def test_upload_demo_bundle_registers_a_candidate_with_metrics(
    admin: httpx.Client, demo_detectors: None, seven_bundle: Path, tmp_path: Path
) -> None:
    archive = pack_bundle_to(seven_bundle, tmp_path / "seven.tar.gz")
    meta = read_metadata(seven_bundle)
    resp = upload(admin, DEMO_SEVEN_ID, archive, lineage='{"job": "trn_test"}')
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["detector_id"] == DEMO_SEVEN_ID
    assert body["version"] == meta.version
    assert body["status"] == "candidate" and body["is_production"] is False
    # The registry stores the canonical packing, so our own packer's bytes are exactly what it keeps.
    assert body["sha256"] == sha256_of(archive)
    assert body["size_bytes"] == archive.stat().st_size
    assert body["metrics"]["test_accuracy"] == meta.metrics["test_accuracy"]
    assert body["lineage"]["job"] == "trn_test"
    assert body["lineage"]["dataset"] == meta.lineage["dataset"]
    assert body["predictor"]["mode"] == "BINARY"
    assert body["predictor"]["pipeline"]["input_height"] == 28
    assert body["manifest"] == verify_bundle(seven_bundle).model_dump(mode="json")

    listed = admin.get(f"/api/v1/detectors/{DEMO_SEVEN_ID}/models").json()
    assert listed["production_version_id"] is None
    assert [m["id"] for m in listed["results"]] == [body["id"]]

    details = admin.get(f"/api/v1/models/{body['id']}")
    assert details.status_code == 200
    assert details.json()["metrics"] == body["metrics"]
    assert details.json()["download_url"].startswith(admin.base_url.__str__().rstrip("/"))


def test_same_version_again_is_idempotent_and_different_content_is_a_conflict(
    admin: httpx.Client, new_detector: NewDetector, tmp_path: Path
) -> None:
    detector_id, (v1,) = new_detector(1)
    first = upload(admin, detector_id, v1)
    assert first.status_code == 201
    # A hand-made archive of the same bundle packs to the same canonical bytes: still the same version.
    with tarfile.open(v1) as tar:
        tar.extractall(tmp_path / "v1-files", filter="data")
    again = upload(admin, detector_id, tar_dir(tmp_path / "v1-files", tmp_path / "again.tar.gz"))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]

    changed = variant(tmp_path / "v1-files", tmp_path / "changed", metrics={"test_accuracy": 0.5})
    conflict = upload(admin, detector_id, pack_bundle_to(changed, tmp_path / "changed.tar.gz"))
    assert conflict.status_code == 409
    assert "already registered" in conflict.json()["detail"]
    assert len(admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"]) == 1


def test_tampered_bundle_is_unprocessable(
    admin: httpx.Client, demo_detectors: None, seven_bundle: Path, tmp_path: Path
) -> None:
    def flip(name: str, data: bytes) -> bytes:
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:] if name == PRIMARY_FILE else data

    resp = upload(admin, DEMO_SEVEN_ID, tar_dir(seven_bundle, tmp_path / "tampered.tar.gz", flip))
    assert resp.status_code == 422
    assert "primary.onnx does not match its sha256" in resp.json()["detail"]
    assert str(tmp_path) not in resp.json()["detail"]


def test_a_single_file_bundle_whose_primary_is_not_onnx_is_refused_and_nothing_is_kept(
    cloud: CloudServer, admin: httpx.Client, seven_bundle: Path, tmp_path: Path
) -> None:
    detector_id = new_detector_id()
    run_in_db(cloud.database_url, lambda s: ensure_detector(s, detector_id))
    meta = read_metadata(seven_bundle).model_copy(update={"detector_id": detector_id, "version": "v1"})
    garbage = tmp_path / "garbage"
    # The manifest hashes the garbage correctly: only opening the graph can tell it is not ONNX.
    write_bundle(
        garbage,
        b"this is not an onnx graph",
        (seven_bundle / OODD_FILE).read_bytes(),
        read_pipeline(seven_bundle),
        meta,
    )
    resp = upload(admin, detector_id, pack_bundle_to(garbage, tmp_path / "garbage.tar.gz"), promote="true")
    assert resp.status_code == 422, resp.text
    assert "does not run" in resp.json()["detail"] and "primary.onnx" in resp.json()["detail"]
    assert str(tmp_path) not in resp.json()["detail"]
    assert admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"] == []
    assert admin.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").status_code == 404
    blob_dir = cloud.data_dir / "blobs" / "models" / detector_id
    assert not blob_dir.exists() or not any(blob_dir.iterdir())


def test_bundle_for_another_detector_is_unprocessable(
    admin: httpx.Client, demo_detectors: None, digit_bundle: Path, tmp_path: Path
) -> None:
    resp = upload(admin, DEMO_SEVEN_ID, pack_bundle_to(digit_bundle, tmp_path / "digit.tar.gz"))
    assert resp.status_code == 422
    assert f"bundle is for detector {DEMO_DIGIT_ID}, not {DEMO_SEVEN_ID}" in resp.json()["detail"]


def test_bundle_whose_mode_or_labels_differ_from_the_detector_is_unprocessable(
    cloud: CloudServer, admin: httpx.Client, digit_bundle: Path, tmp_path: Path
) -> None:
    binary_id, counting_id = new_detector_id(), new_detector_id()
    run_in_db(cloud.database_url, lambda s: ensure_detector(s, binary_id))
    from common.bundle import DetectorMode

    labels = [str(i) for i in range(10)]
    run_in_db(
        cloud.database_url,
        lambda s: ensure_detector(s, counting_id, mode=DetectorMode.MULTI_CLASS, labels=[*labels[:9], "ten"]),
    )
    as_binary = variant(digit_bundle, tmp_path / "b", detector_id=binary_id)
    resp = upload(admin, binary_id, pack_bundle_to(as_binary, tmp_path / "b.tar.gz"))
    assert resp.status_code == 422
    assert "mode is MULTI_CLASS" in resp.json()["detail"]
    other_labels = variant(digit_bundle, tmp_path / "c", detector_id=counting_id)
    resp = upload(admin, counting_id, pack_bundle_to(other_labels, tmp_path / "c.tar.gz"))
    assert resp.status_code == 422
    assert "labels" in resp.json()["detail"]


def test_bad_archives_are_client_errors_never_server_errors(
    admin: httpx.Client, demo_detectors: None, seven_bundle: Path, tmp_path: Path
) -> None:
    good = (seven_bundle / MANIFEST_FILE).read_bytes()
    traversal = raw_tar(tmp_path / "t.tar.gz", [(tarfile.TarInfo("../../etc/x"), good)])
    not_gzip = tmp_path / "junk.tar.gz"
    not_gzip.write_bytes(os.urandom(2048))
    empty = raw_tar(tmp_path / "empty.tar.gz", [])
    missing_files = raw_tar(tmp_path / "m.tar.gz", [(tarfile.TarInfo(MANIFEST_FILE), good)])
    for archive in (traversal, not_gzip, empty, missing_files):
        resp = upload(admin, DEMO_SEVEN_ID, archive)
        assert resp.status_code == 422, (archive.name, resp.text)
        assert resp.json()["detail"].startswith("bundle rejected")
    no_file = admin.post(f"/api/v1/detectors/{DEMO_SEVEN_ID}/models", data={"promote": "true"})
    assert no_file.status_code == 400
    bad_lineage = upload(admin, DEMO_SEVEN_ID, traversal, lineage="[1, 2]")
    assert bad_lineage.status_code == 400
    unknown = upload(admin, new_detector_id(), traversal)
    assert unknown.status_code == 404


# --- the production alias ---------------------------------------------------------------------------


def test_promote_serves_fetch_model_urls_with_etag_and_304(
    cloud: CloudServer, admin: httpx.Client, device: httpx.Client, new_detector: NewDetector, tmp_path: Path
) -> None:
    detector_id, (v1, v2) = new_detector(2)
    fetch = f"/edge-api/v1/fetch-model-urls/{detector_id}/"
    m1 = upload(admin, detector_id, v1).json()
    m2 = upload(admin, detector_id, v2).json()

    missing = device.get(fetch)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no model for this detector yet"

    promoted = admin.post(f"/api/v1/models/{m1['id']}/promote")
    assert promoted.status_code == 200
    assert promoted.json()["status"] == "production"

    first = device.get(fetch)
    assert first.status_code == 200
    info = first.json()
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert info["model_version_id"] == m1["id"] and info["version"] == "v1"
    assert info["sha256"] == m1["sha256"] and info["size_bytes"] == m1["size_bytes"]
    assert info["mode"] == "BINARY" and sorted(info["labels"]) == ["NO", "YES"]
    assert info["pipeline"]["channels"] == "L"
    assert info["download_url"] == f"{cloud.url}/api/v1/models/{m1['id']}/download"

    assert device.get(fetch, headers={"If-None-Match": etag}).status_code == 304
    assert device.get(fetch, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert device.get(fetch, headers={"If-None-Match": '"stale"'}).status_code == 200

    download = device.get(info["download_url"])
    assert download.status_code == 200
    assert download.headers["x-content-sha256"] == info["sha256"]
    assert hashlib.sha256(download.content).hexdigest() == info["sha256"]
    (tmp_path / "got.tar.gz").write_bytes(download.content)
    assert unpack_bundle(tmp_path / "got.tar.gz", tmp_path / "got").version == "v1"

    admin.post(f"/api/v1/models/{m2['id']}/promote").raise_for_status()
    changed = device.get(fetch, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["model_version_id"] == m2["id"]
    assert changed.headers["etag"] != etag
    statuses = {
        m["id"]: m["status"] for m in admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"]
    }
    assert statuses == {m1["id"]: "retired", m2["id"]: "production"}


def test_upload_with_promote_makes_it_production_at_once(
    admin: httpx.Client, device: httpx.Client, new_detector: NewDetector
) -> None:
    detector_id, (v1,) = new_detector(1)
    resp = upload(admin, detector_id, v1, promote="true")
    assert resp.status_code == 201
    assert resp.json()["status"] == "production"
    assert device.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").json()["version"] == "v1"


def test_rollback_walks_back_through_promotions(admin: httpx.Client, new_detector: NewDetector) -> None:
    detector_id, archives = new_detector(3)
    ids = [upload(admin, detector_id, a).json()["id"] for a in archives]
    rollback = f"/api/v1/detectors/{detector_id}/models/rollback"
    assert admin.post(rollback).status_code == 409  # nothing in production yet
    for model_id in ids:
        admin.post(f"/api/v1/models/{model_id}/promote").raise_for_status()

    back = admin.post(rollback)
    assert back.status_code == 200
    assert back.json()["id"] == ids[1] and back.json()["status"] == "production"
    assert admin.post(rollback).json()["id"] == ids[0]
    last = admin.post(rollback)
    assert last.status_code == 409
    assert "no earlier promoted version" in last.json()["detail"]
    listed = admin.get(f"/api/v1/detectors/{detector_id}/models").json()
    assert listed["production_version_id"] == ids[0]
    assert {m["id"]: m["status"] for m in listed["results"]} == {
        ids[0]: "production",
        ids[1]: "retired",
        ids[2]: "retired",
    }


def test_rollback_skips_versions_that_were_deleted(admin: httpx.Client, new_detector: NewDetector) -> None:
    detector_id, archives = new_detector(3)
    ids = [upload(admin, detector_id, a).json()["id"] for a in archives]
    for model_id in ids:
        admin.post(f"/api/v1/models/{model_id}/promote").raise_for_status()
    assert admin.delete(f"/api/v1/models/{ids[1]}").status_code == 204
    back = admin.post(f"/api/v1/detectors/{detector_id}/models/rollback")
    assert back.json()["id"] == ids[0]


def test_deleting_the_production_version_is_refused_and_others_go_with_their_blob(
    admin: httpx.Client, device: httpx.Client, new_detector: NewDetector
) -> None:
    detector_id, (v1, v2) = new_detector(2)
    m1 = upload(admin, detector_id, v1, promote="true").json()
    m2 = upload(admin, detector_id, v2).json()
    refused = admin.delete(f"/api/v1/models/{m1['id']}")
    assert refused.status_code == 409
    assert "production" in refused.json()["detail"]
    assert device.get(f"/api/v1/models/{m2['id']}/download").status_code == 200
    assert admin.delete(f"/api/v1/models/{m2['id']}").status_code == 204
    assert admin.get(f"/api/v1/models/{m2['id']}").status_code == 404
    assert device.get(f"/api/v1/models/{m2['id']}/download").status_code == 404
    assert admin.delete(f"/api/v1/models/{m2['id']}").status_code == 404
    # The version is free again: the same bundle can be registered anew.
    assert upload(admin, detector_id, v2).status_code == 201


# --- roles ----------------------------------------------------------------------------------------


def test_reviewer_may_read_but_not_upload_or_change_the_alias(
    cloud: CloudServer, admin: httpx.Client, tokens: dict[str, str], new_detector: NewDetector
) -> None:
    detector_id, (v1,) = new_detector(1)
    model_id = upload(admin, detector_id, v1).json()["id"]
    with cloud.client(token=tokens["reviewer"]) as reviewer:
        assert upload(reviewer, detector_id, v1).status_code == 403
        assert reviewer.post(f"/api/v1/models/{model_id}/promote").status_code == 403
        assert reviewer.post(f"/api/v1/detectors/{detector_id}/models/rollback").status_code == 403
        assert reviewer.delete(f"/api/v1/models/{model_id}").status_code == 403
        assert reviewer.get(f"/api/v1/models/{model_id}/download").status_code == 403
        assert reviewer.get(f"/api/v1/detectors/{detector_id}/models").status_code == 200
        assert reviewer.get(f"/api/v1/models/{model_id}").status_code == 200


def test_device_may_fetch_and_download_but_not_upload(
    admin: httpx.Client, device: httpx.Client, new_detector: NewDetector
) -> None:
    detector_id, (v1,) = new_detector(1)
    model_id = upload(admin, detector_id, v1, promote="true").json()["id"]
    assert upload(device, detector_id, v1).status_code == 403
    assert device.post(f"/api/v1/models/{model_id}/promote").status_code == 403
    assert device.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").status_code == 200


def test_no_token_is_unauthorized(cloud: CloudServer, new_detector: NewDetector) -> None:
    detector_id, (v1,) = new_detector(1)
    with cloud.client(token=None) as anonymous:
        assert upload(anonymous, detector_id, v1).status_code == 401
        assert anonymous.get(f"/api/v1/detectors/{detector_id}/models").status_code == 401
        assert anonymous.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").status_code == 401
        assert anonymous.get("/api/v1/models/mdl_x/download").status_code == 401
    with cloud.client(token="io_not_a_real_token_at_all_000000000000000") as wrong:
        assert wrong.get(f"/api/v1/detectors/{detector_id}/models").status_code == 401


# --- the cloud's installed production bundle ----------------------------------------------------------


def test_production_bundle_dir_installs_once_and_follows_the_alias(
    cloud: CloudServer, admin: httpx.Client, new_detector: NewDetector, tmp_path: Path
) -> None:
    detector_id, (v1, v2) = new_detector(2)
    m1 = upload(admin, detector_id, v1).json()
    m2 = upload(admin, detector_id, v2).json()
    server_blobs = cloud.data_dir / "blobs"

    blobs = CountingBlobStore(server_blobs)

    async def as_admin(path: str) -> None:
        (await asyncio.to_thread(admin.post, path)).raise_for_status()

    async def scenario() -> None:
        settings = CloudSettings(data_dir=tmp_path / "cloud", database_url=cloud.database_url)
        engine = make_engine(to_async_url(cloud.database_url), pool_size=2)
        sessions = make_sessionmaker(engine)
        installed = InstalledBundles(model_root(settings), LocalBackbones.for_settings(settings))
        try:
            async with sessions() as session:
                assert await production_bundle_dir(installed, session, blobs, detector_id) is None
                await as_admin(f"/api/v1/models/{m1['id']}/promote")
                # Many callers at once: one download and install, and everyone gets the same directory.
                dirs = await asyncio.gather(
                    *(_call_fresh(sessions, installed, blobs, detector_id) for _ in range(5))
                )
                first = settings.data_dir / "models" / detector_id / "v1"
                assert set(dirs) == {first}
                assert blobs.downloads == 1
                verify_bundle(first)
                # A hit needs no blob: with the stored archive gone it still answers.
                blob = server_blobs / "models" / detector_id / "v1.tar.gz"
                saved = blob.read_bytes()
                blob.unlink()
                assert await production_bundle_dir(installed, session, blobs, detector_id) == first
                assert blobs.downloads == 1
                blob.write_bytes(saved)

                await as_admin(f"/api/v1/models/{m2['id']}/promote")
                second = await production_bundle_dir(installed, session, blobs, detector_id)
                assert second == settings.data_dir / "models" / detector_id / "v2"
                assert read_metadata(second).version == "v2"
                await as_admin(f"/api/v1/detectors/{detector_id}/models/rollback")
                assert await production_bundle_dir(installed, session, blobs, detector_id) == first
        finally:
            await engine.dispose()

    asyncio.run(scenario())


class CountingBlobStore(LocalBlobStore):
    """The local store, counting downloads: proves single-flight and cache hits."""

    downloads = 0

    async def get_to_file(self, key: str, path: Path) -> None:
        self.downloads += 1
        await super().get_to_file(key, path)


async def _call_fresh(
    sessions: async_sessionmaker[AsyncSession],
    installed: InstalledBundles,
    blobs: BlobStore,
    detector_id: str,
) -> Path | None:
    async with sessions() as session:
        return await production_bundle_dir(installed, session, blobs, detector_id)
