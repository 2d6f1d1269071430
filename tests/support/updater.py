"""Helpers for the model updater's tests: bundle archives of new versions (single-file, and split
bundles on the tiny shared backbone), the cloud registry as an admin drives it (upload, promote,
rollback), `python -m edge.updater` as a real process, and administrators for the cloud's pages
(tests that drive the loop through the UI)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cloud.app.db.models import Role
from common.backbone import BackboneRef
from common.bundle import OODD_FILE, PRIMARY_FILE, read_metadata, read_pipeline, write_bundle
from common.bundle_archive import pack_bundle
from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.cloud import DEVICE_TOKEN, CloudServer, TestDatabase
from tests.support.cloud_factories import CloudFactory, Reviewer
from tests.support.cloud_factories_registry import ensure_detector_for_bundle, run_in_db, token_for
from tests.support.stack import INTERNAL, INTERNAL_ENV, EdgeStack

ROOT = Path(__file__).resolve().parents[2]


T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Polls `check` every 0.1 s until it gives something true, which is returned."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def bundle_archive(
    src_bundle: Path,
    out: Path,
    *,
    version: str,
    detector_id: str | None = None,
    primary_from: Path | None = None,
) -> Path:
    """A tar.gz of a valid bundle: `src_bundle`'s weights and metadata under a new version (and detector
    id). `primary_from` takes primary.onnx from another bundle: it verifies, but its outputs need not fit
    the metadata (a bundle that fails warm-up)."""
    updates: dict[str, Any] = {"version": version}
    if detector_id is not None:
        updates["detector_id"] = detector_id
    meta = read_metadata(src_bundle).model_copy(update=updates)
    primary = (primary_from or src_bundle) / PRIMARY_FILE
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(
            bundle,
            primary.read_bytes(),
            (src_bundle / OODD_FILE).read_bytes(),
            read_pipeline(src_bundle),
            meta,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        pack_bundle(bundle, out)
    return out


def split_bundle_archive(
    out: Path, detector_id: str, backbone: BackboneRef, *, version: str, seed: int = 1
) -> Path:
    """A tar.gz of a tiny split bundle (head + OODD) that needs `backbone`."""
    from tests.support.split_bundles import write_tiny_split_bundle  # torch: only for the tests that need it

    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_tiny_split_bundle(
            Path(tmp) / "bundle", detector_id, backbone, version=version, seed=seed
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        pack_bundle(bundle, out)
    return out


class Registry:
    """The cloud's model registry, driven by an admin token (as the trainer or a person would)."""

    def __init__(self, cloud: CloudServer) -> None:
        self.cloud = cloud
        token = run_in_db(cloud.database_url, lambda s: token_for(s, "admin"))
        self.http = cloud.client(token=token)

    def close(self) -> None:
        self.http.close()

    def add_detector_for(self, bundle_dir: Path, detector_id: str | None = None) -> str:
        """The detector of this bundle (mode, labels), created in the cloud's database if missing."""
        detector = run_in_db(
            self.cloud.database_url, lambda s: ensure_detector_for_bundle(s, bundle_dir, detector_id)
        )
        return detector.id

    def upload(self, detector_id: str, archive: Path, *, promote: bool = False) -> str:
        """Register a bundle archive; the new model version's id."""
        response = self.http.post(
            f"/api/v1/detectors/{detector_id}/models",
            files={"bundle": (archive.name, archive.read_bytes(), "application/gzip")},
            data={"promote": "true" if promote else "false"},
        )
        assert response.status_code in (200, 201), response.text
        model_id: str = response.json()["id"]
        return model_id

    def promote(self, model_id: str) -> None:
        response = self.http.post(f"/api/v1/models/{model_id}/promote")
        assert response.status_code == 200, response.text

    def rollback(self, detector_id: str) -> str:
        """Back to the previously promoted version; its version id."""
        response = self.http.post(f"/api/v1/detectors/{detector_id}/models/rollback")
        assert response.status_code == 200, response.text
        version: str = response.json()["version"]
        return version

    def replace_archive(self, model_id: str, detector_id: str, version: str, archive: Path) -> None:
        """Swap a stored version's archive, sha256 and size for `archive`, past the upload checks: a
        registry entry the edge cannot run (say, one stored by an older cloud), which the edge must still
        refuse on its own."""
        import hashlib

        from sqlalchemy import update

        from cloud.app.db.models import ModelVersion

        data = archive.read_bytes()
        self.blob_path(detector_id, version).write_bytes(data)

        async def write(session: Any) -> None:
            await session.execute(
                update(ModelVersion)
                .where(ModelVersion.id == model_id)
                .values(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
            )
            await session.commit()

        run_in_db(self.cloud.database_url, write)

    def blob_path(self, detector_id: str, version: str) -> Path:
        """Where the cloud's local blob store keeps this version's archive (to tamper with it)."""
        return self.cloud.data_dir / "blobs" / "models" / detector_id / f"{version}.tar.gz"

    def hub(self, edge_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"/api/v1/hubs/{edge_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        hub: dict[str, Any] = response.json()
        return hub


@contextmanager
def registry_cloud(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[CloudServer]:
    """A cloud API process on a fresh database (PostgreSQL, or SQLite with CLOUD_TEST_DB=sqlite);
    `env` adds to its environment."""
    for sub in ("db", "cloud"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    database = TestDatabase(workdir / "db").create()
    server = CloudServer(database.url, workdir / "cloud", env=dict(env or {}))
    try:
        yield server.start()
    finally:
        server.stop()
        database.drop()


def start_updater(
    *,
    cloud_url: str,
    model_root: Path,
    inference_url: str,
    edge_api_url: str,
    port: int | None = None,
    **env: str,
) -> tuple[ManagedProcess, str]:
    """`python -m edge.updater` on a free port, once it answers /health/live; (process, its URL)."""
    port = port or free_port()
    # A developer's UPDATER_* variables must not change what the test runs.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("UPDATER_")}
    proc = ManagedProcess(
        "updater",
        [sys.executable, "-m", "edge.updater"],
        inherit_env=False,
        env={
            **inherited,
            "UPDATER_PORT": str(port),
            "UPDATER_CLOUD_URL": cloud_url,
            "UPDATER_API_TOKEN": DEVICE_TOKEN,
            "UPDATER_MODEL_ROOT": str(model_root),
            "UPDATER_INFERENCE_URL": inference_url,
            "UPDATER_EDGE_API_URL": edge_api_url,
            "UPDATER_CONFIG_POLL_S": "0.5",
            "UPDATER_HEARTBEAT_INTERVAL_S": "1",
            "UPDATER_LOG_LEVEL": "info",
            **INTERNAL_ENV,
            **env,
        },
        cwd=ROOT,
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health/live", process=proc, timeout=60)
    return proc, url


def updater_status(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/status", headers=INTERNAL, timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


IQ_PATH = "/device-api/v1/image-queries"


@dataclass
class UpdaterEdge:
    """The whole loop as real processes: a cloud with one detector in its registry, and an edge
    (inference on an empty model root, edge-api, nginx) whose updater polls that cloud."""

    cloud: CloudServer
    registry: Registry
    stack: EdgeStack
    detector_id: str
    updater: ManagedProcess
    updater_url: str

    def ask(self, http: httpx.Client, image: bytes) -> httpx.Response:
        """An image query through the gateway, as a camera sends it."""
        return http.post(IQ_PATH, params={"detector_id": self.detector_id}, content=image)

    def new_admin(self) -> Reviewer:
        """A new administrator of the cloud with a password, for its pages. It runs its own event loop:
        call it before Playwright's sync API starts (which keeps one running in this thread)."""
        return CloudFactory(self.cloud.database_url, self.cloud.data_dir / "blobs").reviewer(Role.ADMIN)

    def camera(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.stack.gateway_url,
            headers={"x-api-token": DEVICE_TOKEN},
            timeout=30,
            trust_env=False,
        )

    def served_version(self, http: httpx.Client, image: bytes) -> str | None:
        response = self.ask(http, image)
        if response.status_code != 200:
            return None
        version: str | None = (response.json().get("intellioptics") or {}).get("model_version")
        return version

    def wait_until_served(self, version: str, image: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.camera() as http:
            while self.served_version(http, image) != version:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the edge never served {version}; updater: {updater_status(self.updater_url)}"
                    )
                time.sleep(0.1)


@contextmanager
def updater_edge(
    workdir: Path,
    bundle: Path,
    first_version: str,
    *,
    refresh_rate_s: float,
    preset: str = "no_cloud",
    edge_env: Mapping[str, str] | None = None,
    cloud_env: Mapping[str, str] | None = None,
) -> Iterator[UpdaterEdge]:
    """`bundle`'s detector registered in a fresh cloud with `first_version` in production, and an edge
    whose edge config polls it every `refresh_rate_s`; yields once the updater has started. `edge_env`
    adds to (or overrides) edge-api's environment."""
    config = {
        "global_config": {"refresh_rate": refresh_rate_s, "confident_audit_rate": 0.0},
        "detectors": [{"detector_id": read_metadata(bundle).detector_id, "edge_inference_config": preset}],
    }
    with registry_cloud(workdir / "cloud", cloud_env) as cloud:
        registry = Registry(cloud)
        stack: EdgeStack | None = None
        updater: ManagedProcess | None = None
        try:
            detector_id = registry.add_detector_for(bundle)
            archive = bundle_archive(
                bundle, workdir / "archives" / f"{first_version}.tar.gz", version=first_version
            )
            registry.upload(detector_id, archive, promote=True)
            model_root = workdir / "models"
            model_root.mkdir()
            (workdir / "edge").mkdir()
            updater_port = free_port()
            stack = EdgeStack(
                workdir / "edge",
                model_root,
                cloud,
                edge_env={
                    "EDGE_API_TOKEN": DEVICE_TOKEN,
                    "EDGE_EDGE_ID": f"edge-{workdir.name}"[:100],
                    "EDGE_UPDATER_URL": f"http://127.0.0.1:{updater_port}",
                    **(edge_env or {}),
                },
            )
            stack.start(config)
            updater, url = start_updater(
                cloud_url=cloud.url,
                model_root=model_root,
                inference_url=stack.inference_url,
                edge_api_url=stack.edge_url,
                port=updater_port,
            )
            yield UpdaterEdge(cloud, registry, stack, detector_id, updater, url)
        finally:
            if updater is not None:
                updater.stop()
            if stack is not None:
                stack.stop()
            registry.close()
