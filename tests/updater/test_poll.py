"""One poll of one detector against a real cloud and a real inference process: ETag and 304, new
versions downloaded, verified, installed and swapped in, rollbacks from the kept copy, tampered and
broken bundles rejected while the old version keeps serving, and backoff on errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from common.bundle import CURRENT_LINK, VERSION_RE
from common.ids import new_detector_id
from edge.updater.clients import RegistryClient, SwapClient
from edge.updater.core import DetectorPoller, DetectorState, Outcome, Source, next_delay
from edge.updater.installer import Installer
from launcher.processes import free_port
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.stack import INTERNAL
from tests.support.updater import Registry, bundle_archive
from tests.updater.conftest import served_version

pytestmark = pytest.mark.processes


class Poller:
    """The poll logic over real HTTP clients, driven from synchronous tests (a fresh loop per poll)."""

    def __init__(
        self, cloud_url: str, inference_url: str, model_root: Path, token: str = DEVICE_TOKEN
    ) -> None:
        self.cloud_url = cloud_url
        self.inference_url = inference_url
        self.installer = Installer(model_root, keep=2)
        self.token = token

    def poll(self, state: DetectorState) -> Outcome:
        async def once() -> Outcome:
            async with (
                httpx.AsyncClient(base_url=self.cloud_url, timeout=30, trust_env=False) as cloud,
                httpx.AsyncClient(
                    base_url=self.inference_url, headers=INTERNAL, timeout=60, trust_env=False
                ) as inference,
            ):
                registry = RegistryClient(cloud, lambda: self.token, download_timeout_s=60)
                poller = DetectorPoller(registry, SwapClient(inference), self.installer)
                return await poller.poll_once(state)

        return asyncio.run(once())


@pytest.fixture
def poller(cloud: CloudServer, inference: str, model_root: Path) -> Poller:
    return Poller(cloud.url, inference, model_root)


class Detector:
    """A detector of its own per test (the digit demo's mode and labels), and its versions."""

    def __init__(self, registry: Registry, bundle: Path, workdir: Path) -> None:
        self.registry = registry
        self.bundle = bundle
        self.workdir = workdir
        self.id = registry.add_detector_for(bundle, new_detector_id())

    def publish(self, version: str, *, promote: bool = True, primary_from: Path | None = None) -> str:
        """Upload a version; with `primary_from`, the registry ends up holding a bundle that verifies but
        fails warm-up (the upload itself refuses those, so the archive is swapped in afterwards)."""
        archive = bundle_archive(
            self.bundle, self.workdir / f"{version}.tar.gz", version=version, detector_id=self.id
        )
        model_id = self.registry.upload(self.id, archive, promote=promote)
        if primary_from is not None:
            broken = bundle_archive(
                self.bundle,
                self.workdir / f"{version}-broken.tar.gz",
                version=version,
                detector_id=self.id,
                primary_from=primary_from,
            )
            self.registry.replace_archive(model_id, self.id, version, broken)
        return model_id


@pytest.fixture
def detector(registry: Registry, digit_bundle: Path, tmp_path: Path) -> Detector:
    return Detector(registry, digit_bundle, tmp_path)


def versions_on_disk(model_root: Path, detector_id: str) -> set[str]:
    det_dir = model_root / detector_id
    return {
        p.name for p in det_dir.iterdir() if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name)
    }


def current(model_root: Path, detector_id: str) -> str | None:
    link = model_root / detector_id / CURRENT_LINK
    return os.readlink(link) if link.is_symlink() else None


def test_a_detector_without_a_production_model_is_no_model_not_an_error(poller: Poller, detector: Detector):
    state = DetectorState(detector.id)

    assert poller.poll(state) is Outcome.NO_MODEL
    assert state.failures == 0 and state.last_error is None
    assert "no model" in (state.detail or "")


def test_a_promoted_version_is_installed_and_served_then_polls_get_304(
    poller: Poller, detector: Detector, inference: str, model_root: Path, digits
):
    detector.publish("v1")
    state = DetectorState(detector.id)

    assert poller.poll(state) is Outcome.DEPLOYED
    assert state.deployed_from is Source.CLOUD and state.version == "v1" and state.etag
    assert current(model_root, detector.id) == "v1"
    assert served_version(inference, detector.id, digits[0][0]) == "v1"

    # Same ETag: the cloud answers 304 and nothing is downloaded again.
    assert poller.poll(state) is Outcome.UNCHANGED
    # An updater that starts afresh (no ETag) finds the version already serving.
    assert poller.poll(DetectorState(detector.id)) is Outcome.UP_TO_DATE
    assert not any(p.name.startswith((".download-", ".unpack-")) for p in model_root.iterdir())


def test_promotes_and_a_rollback_reach_inference_and_the_two_newest_versions_stay(
    poller: Poller, detector: Detector, registry: Registry, inference: str, model_root: Path, digits
):
    image = digits[1][0]
    state = DetectorState(detector.id)
    for version in ("v1", "v2", "v3"):
        detector.publish(version)
        assert poller.poll(state) is Outcome.DEPLOYED
        assert served_version(inference, detector.id, image) == version
    assert versions_on_disk(model_root, detector.id) == {"v2", "v3"}

    assert registry.rollback(detector.id) == "v2"
    assert poller.poll(state) is Outcome.DEPLOYED
    # v2 was one of the kept versions: repointed, not downloaded.
    assert state.deployed_from is Source.DISK
    assert current(model_root, detector.id) == "v2"
    assert served_version(inference, detector.id, image) == "v2"
    assert versions_on_disk(model_root, detector.id) == {"v2", "v3"}


def test_a_tampered_download_is_rejected_and_the_old_version_keeps_serving(
    poller: Poller, detector: Detector, registry: Registry, inference: str, model_root: Path, digits
):
    image = digits[2][0]
    state = DetectorState(detector.id)
    detector.publish("v1")
    assert poller.poll(state) is Outcome.DEPLOYED

    detector.publish("v2")
    blob = registry.blob_path(detector.id, "v2")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    assert poller.poll(state) is Outcome.REJECTED
    assert state.rejected is not None and state.rejected.version == "v2"
    assert "sha256" in state.rejected.reason
    assert current(model_root, detector.id) == "v1"
    assert versions_on_disk(model_root, detector.id) == {"v1"}
    assert served_version(inference, detector.id, image) == "v1"

    # Not fetched again while the cloud's answer stays the same; the rejection stays reported.
    assert poller.poll(state) is Outcome.UNCHANGED
    assert state.rejected is not None and state.rejected.version == "v2"

    # The next good version goes in and clears it.
    detector.publish("v3")
    assert poller.poll(state) is Outcome.DEPLOYED
    assert state.rejected is None
    assert served_version(inference, detector.id, image) == "v3"


def test_a_bundle_that_fails_warm_up_is_rejected_and_current_points_back(
    poller: Poller, detector: Detector, inference: str, model_root: Path, seven_bundle: Path, digits
):
    image = digits[3][0]
    state = DetectorState(detector.id)
    detector.publish("v1")
    assert poller.poll(state) is Outcome.DEPLOYED

    # Verifies (every sha256 matches its manifest), but its model has 2 outputs for 10 labels.
    detector.publish("v2-broken", primary_from=seven_bundle)
    assert poller.poll(state) is Outcome.REJECTED

    assert state.rejected is not None and state.rejected.version == "v2-broken"
    assert "previous version keeps serving" in state.rejected.reason
    assert current(model_root, detector.id) == "v1" and state.version == "v1"
    assert versions_on_disk(model_root, detector.id) == {"v1"}
    assert served_version(inference, detector.id, image) == "v1"


def test_a_first_version_that_fails_warm_up_leaves_no_model_installed(
    poller: Poller, detector: Detector, inference: str, model_root: Path, seven_bundle: Path
):
    detector.publish("v1-broken", primary_from=seven_bundle)
    state = DetectorState(detector.id)

    assert poller.poll(state) is Outcome.REJECTED
    assert current(model_root, detector.id) is None
    assert versions_on_disk(model_root, detector.id) == set()
    assert httpx.get(f"{inference}/models/{detector.id}", headers=INTERNAL, timeout=10).status_code == 404


def test_an_install_that_inference_could_not_swap_in_is_finished_on_a_later_poll(
    detector: Detector, cloud: CloudServer, inference: str, model_root: Path, digits
):
    detector.publish("v1")
    state = DetectorState(detector.id)
    assert Poller(cloud.url, inference, model_root).poll(state) is Outcome.DEPLOYED
    detector.publish("v2")

    nobody = f"http://127.0.0.1:{free_port()}"
    assert Poller(cloud.url, nobody, model_root).poll(state) is Outcome.ERROR
    assert "inference not answering" in (state.last_error or "")
    assert current(model_root, detector.id) == "v2"  # installed; inference would load it when it starts

    assert Poller(cloud.url, inference, model_root).poll(state) is Outcome.DEPLOYED
    assert state.failures == 0 and state.version == "v2"
    assert served_version(inference, detector.id, digits[4][0]) == "v2"


def test_cloud_errors_count_up_and_a_later_success_resets_them(
    detector: Detector, cloud: CloudServer, inference: str, model_root: Path
):
    state = DetectorState(detector.id)
    unreachable = Poller(f"http://127.0.0.1:{free_port()}", inference, model_root)
    for expected in (1, 2, 3):
        assert unreachable.poll(state) is Outcome.ERROR
        assert state.failures == expected
    assert "cloud not answering" in (state.last_error or "")

    refused = Poller(cloud.url, inference, model_root, token="io_not_a_token_" + "x" * 30)
    assert refused.poll(state) is Outcome.ERROR
    assert state.failures == 4 and "401" in (state.last_error or "")

    assert Poller(cloud.url, inference, model_root).poll(state) is Outcome.NO_MODEL
    assert state.failures == 0


def test_the_wait_never_exceeds_the_refresh_rate_after_success_and_doubles_after_errors():
    for draw in (0.0, 0.5, 0.999):
        delay = next_delay(10.0, 0, backoff_max_s=300, jitter=0.1, draw=draw)
        assert 9.0 < delay <= 10.0
    waits = [next_delay(10.0, n, backoff_max_s=300, jitter=0.0, draw=0.0) for n in range(7)]
    assert waits == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    # A cap below the refresh rate never makes errors poll faster than success does.
    assert next_delay(60.0, 3, backoff_max_s=5, jitter=0.0, draw=0.0) == 60.0
