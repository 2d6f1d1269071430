"""The Azure blob store against Azurite: the BlobStore contract, and a whole cloud process storing
model bundles in Azure (upload and download through the API; a vanished blob is a 404)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.app.blobstore import BlobNotFoundError
from cloud.app.blobstore.azure import AzureBlobStore
from common.bundle import OODD_FILE, PRIMARY_FILE, read_metadata, read_pipeline, write_bundle
from common.bundle_archive import pack_bundle, unpack_bundle
from common.ids import new_detector_id
from tests.support import cloud as cloud_support
from tests.support.azurite import Azurite, azurite_available
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_registry import ensure_detector, run_in_db, token_for
from training.demo_bundles import DEMO_SEVEN_ID

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(
        not azurite_available(),
        reason="Azurite is not installed: run `make test-tools` (scripts/bootstrap.sh --test)",
    ),
]


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


def container_name() -> str:
    return "io-test-" + secrets.token_hex(6)


async def test_blob_store_contract_round_trip(azurite: Azurite, tmp_path: Path) -> None:
    store = AzureBlobStore(azurite.connection_string, container_name())  # created on first write
    try:
        assert not await store.exists("images/det_x/a.jpg")
        await store.put("images/det_x/a.jpg", b"\xff\xd8\xffjpeg bytes", "image/jpeg")
        assert await store.exists("images/det_x/a.jpg")
        assert await store.get("images/det_x/a.jpg") == b"\xff\xd8\xffjpeg bytes"

        # Bigger than one transfer chunk, so the chunked upload and download paths both run.
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(9 * 1024 * 1024 + 17))
        await store.put_file("models/det_x/v1.tar.gz", big, "application/gzip")
        await store.get_to_file("models/det_x/v1.tar.gz", tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()

        await store.put("images/det_x/a.jpg", b"replaced")
        assert await store.get("images/det_x/a.jpg") == b"replaced"

        await store.delete("images/det_x/a.jpg")
        await store.delete("images/det_x/a.jpg")  # deleting a missing blob is not an error
        assert not await store.exists("images/det_x/a.jpg")
        with pytest.raises(BlobNotFoundError):
            await store.get("images/det_x/a.jpg")
        with pytest.raises(BlobNotFoundError):
            await store.get_to_file("images/det_x/a.jpg", tmp_path / "never.bin")
        assert not (tmp_path / "never.bin").exists()
        assert sorted(os.listdir(tmp_path)) == ["big.bin", "copy.bin"]  # no temp leftovers
        with pytest.raises(ValueError):
            await store.put("../outside", b"x")
    finally:
        await store.close()


async def test_reading_from_a_container_that_does_not_exist_is_not_found(azurite: Azurite) -> None:
    store = AzureBlobStore(azurite.connection_string, container_name())
    try:
        assert not await store.exists("a/b")
        with pytest.raises(BlobNotFoundError):
            await store.get("a/b")
        await store.delete("a/b")
    finally:
        await store.close()


@pytest.fixture(scope="module")
def azure_cloud(
    cloud_db: cloud_support.TestDatabase, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CloudServer, str]]:
    container = container_name()
    server = CloudServer(
        cloud_db.url,
        Path(tmp_path_factory.mktemp("azure-cloud")),
        env={
            "CLOUD_BLOB_BACKEND": "azure",
            "CLOUD_AZURE_CONNECTION_STRING": azurite.connection_string,
            "CLOUD_AZURE_CONTAINER": container,
        },
    ).start()
    yield server, container
    server.stop()


async def _stored(connection_string: str, container: str, key: str) -> bytes | None:
    store = AzureBlobStore(connection_string, container)
    try:
        return await store.get(key) if await store.exists(key) else None
    finally:
        await store.close()


async def _remove(connection_string: str, container: str, key: str) -> None:
    store = AzureBlobStore(connection_string, container)
    try:
        await store.delete(key)
    finally:
        await store.close()


def test_cloud_on_azure_stores_and_serves_model_bundles(
    azure_cloud: tuple[CloudServer, str], azurite: Azurite, demo_models: Path, tmp_path: Path
) -> None:
    cloud, container = azure_cloud
    seven = (demo_models / DEMO_SEVEN_ID / "current").resolve()
    detector_id = new_detector_id()
    run_in_db(cloud.database_url, lambda s: ensure_detector(s, detector_id))
    admin_token = run_in_db(cloud.database_url, lambda s: token_for(s, "admin"))
    metadata = read_metadata(seven).model_copy(update={"detector_id": detector_id, "version": "azure-v1"})
    bundle = tmp_path / "bundle"
    write_bundle(
        bundle,
        (seven / PRIMARY_FILE).read_bytes(),
        (seven / OODD_FILE).read_bytes(),
        read_pipeline(seven),
        metadata,
    )
    archive = tmp_path / "bundle.tar.gz"
    pack_bundle(bundle, archive)

    with cloud.client(token=admin_token) as admin, cloud.client() as device:
        created = admin.post(
            f"/api/v1/detectors/{detector_id}/models",
            files={"bundle": ("bundle.tar.gz", archive.read_bytes(), "application/gzip")},
            data={"promote": "true"},
        )
        assert created.status_code == 201, created.text
        model = created.json()
        key = f"models/{detector_id}/azure-v1.tar.gz"
        stored = asyncio.run(_stored(azurite.connection_string, container, key))
        assert stored is not None and hashlib.sha256(stored).hexdigest() == model["sha256"]
        assert not (cloud.data_dir / "blobs" / "models").exists()  # nothing went to the local store

        info = device.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").json()
        download = device.get(info["download_url"])
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == info["sha256"] == model["sha256"]
        (tmp_path / "got.tar.gz").write_bytes(download.content)
        assert unpack_bundle(tmp_path / "got.tar.gz", tmp_path / "got").version == "azure-v1"

        asyncio.run(_remove(azurite.connection_string, container, key))
        gone = device.get(info["download_url"])
        assert gone.status_code == 404
        assert gone.json() == {"detail": "blob not found"}
