"""Shared backbones through the updater: a split bundle's backbone is downloaded (checked) and installed
before the bundle, once per edge however many detectors need it; a backbone that fails its checks
rejects the version while the old one keeps serving; backbones no kept version needs are removed.

The cloud is the fake one (it announces split bundles with their backbone and counts downloads); the
inference service is a real process on the model root the updater installs into.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from common.backbone import BackboneRef, BackboneStore
from common.bundle import CURRENT_LINK
from common.ids import new_detector_id
from edge.updater.clients import RegistryClient, SwapClient
from edge.updater.core import DetectorPoller, DetectorState, Outcome
from edge.updater.installer import Installer
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.split_bundles import export_tiny_backbone
from tests.support.stack import INTERNAL
from tests.support.updater import split_bundle_archive
from tests.updater.conftest import served_version

pytestmark = pytest.mark.processes

LABELS = ["NO", "YES"]


@pytest.fixture
async def poller(fake_cloud: FakeCloud, inference: str, model_root: Path) -> AsyncIterator[DetectorPoller]:
    """One poller for the test: every detector's polls share its backbones, as in the updater."""
    async with (
        httpx.AsyncClient(base_url=fake_cloud.url, timeout=30, trust_env=False) as cloud,
        httpx.AsyncClient(base_url=inference, headers=INTERNAL, timeout=60, trust_env=False) as inf,
    ):
        registry = RegistryClient(cloud, lambda: DEVICE_TOKEN, download_timeout_s=60)
        yield DetectorPoller(registry, SwapClient(inf), Installer(model_root, keep=2))


class Cloud:
    """Publishes tiny split bundles on the fake cloud; backbones are told apart by their seed (each
    test uses seeds of its own: the model root is shared by the module)."""

    def __init__(self, fake: FakeCloud, workdir: Path) -> None:
        self.fake = fake
        self.workdir = workdir

    def backbone(self, seed: int) -> tuple[BackboneRef, bytes]:
        path = self.workdir / f"backbone-{seed}.onnx"
        ref = export_tiny_backbone(path, seed)
        return ref, path.read_bytes()

    def publish(
        self,
        detector_id: str,
        version: str,
        backbone: tuple[BackboneRef, bytes],
        *,
        serve: bytes | None = None,
        announce: dict[str, object] | None = None,
        tamper_archive: bool = False,
    ) -> None:
        """`serve`: other bytes behind the backbone's URL; `announce`: other fields in its announcement."""
        ref, data = backbone
        archive = split_bundle_archive(
            self.workdir / f"{detector_id}-{version}.tar.gz", detector_id, ref, version=version
        )
        self.fake.publish_model(
            detector_id,
            archive,
            version=version,
            labels=LABELS,
            backbone=(ref, serve or data),
            announce=announce,
        )
        if tamper_archive:
            name = f"models/{detector_id}/{version}.tar.gz"
            blob = bytearray(self.fake.state.blobs[name])
            blob[len(blob) // 2] ^= 0xFF
            self.fake.state.blobs[name] = bytes(blob)

    def backbone_downloads(self, ref: BackboneRef) -> int:
        return len(self.fake.state.gets_of(f"/blobs/backbones/{ref.sha256}"))


@pytest.fixture
def cloud(fake_cloud: FakeCloud, tmp_path: Path) -> Cloud:
    return Cloud(fake_cloud, tmp_path)


def current(model_root: Path, detector_id: str) -> str | None:
    link = model_root / detector_id / CURRENT_LINK
    return link.readlink().name if link.is_symlink() else None


def leftovers(model_root: Path) -> list[str]:
    """Temp files of downloads and unpacks still in the model root."""
    return [p.name for p in model_root.iterdir() if p.name.startswith((".download-", ".unpack-"))]


def installed(model_root: Path) -> set[str]:
    return set(BackboneStore.for_model_root(model_root).list())


async def serves(inference: str, detector_id: str, image: bytes) -> str:
    return await asyncio.to_thread(served_version, inference, detector_id, image)


async def test_a_split_bundle_s_backbone_is_installed_first_and_downloaded_only_once(
    poller: DetectorPoller, cloud: Cloud, inference: str, model_root: Path, digits
):
    det = new_detector_id()
    backbone = cloud.backbone(seed=101)
    ref = backbone[0]
    cloud.publish(det, "v1", backbone)
    state = DetectorState(det)

    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    assert ref.sha256 in installed(model_root)
    assert await serves(inference, det, digits[0][0]) == "v1"
    paths = [r.path for r in cloud.fake.state.requests if r.path.startswith("/blobs/")]
    assert paths == [f"/blobs/backbones/{ref.sha256}", f"/blobs/models/{det}/v1.tar.gz"]
    # The bundle's full reference is kept beside the backbone, for the status page.
    info = BackboneStore.for_model_root(model_root).info(ref.sha256)
    assert info is not None and info.id == ref.id

    # The next version on the same backbone downloads only its head.
    cloud.publish(det, "v2", backbone)
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    assert await serves(inference, det, digits[0][0]) == "v2"
    assert cloud.backbone_downloads(ref) == 1
    (listed,) = [b for b in poller.installer.installed_backbones() if b.sha256 == ref.sha256]
    assert listed.id == ref.id and listed.bytes == ref.bytes
    assert listed.used_by == [f"{det}/v1", f"{det}/v2"]
    assert leftovers(model_root) == []


async def test_two_detectors_that_need_the_same_new_backbone_download_it_once(
    poller: DetectorPoller, cloud: Cloud, inference: str, digits
):
    a, b = new_detector_id(), new_detector_id()
    backbone = cloud.backbone(seed=102)
    cloud.publish(a, "a1", backbone)
    cloud.publish(b, "b1", backbone)
    cloud.fake.state.blob_delay_s = 0.3  # both polls are surely waiting for the backbone at once
    states = DetectorState(a), DetectorState(b)

    outcomes = await asyncio.gather(*(poller.poll_once(s) for s in states))

    assert outcomes == [Outcome.DEPLOYED, Outcome.DEPLOYED], [s.detail for s in states]
    assert cloud.backbone_downloads(backbone[0]) == 1
    assert await serves(inference, a, digits[1][0]) == "a1"
    assert await serves(inference, b, digits[1][0]) == "b1"


async def test_a_backbone_that_fails_its_checks_rejects_the_version_and_the_old_one_keeps_serving(
    poller: DetectorPoller, cloud: Cloud, inference: str, model_root: Path, digits
):
    det = new_detector_id()
    good = cloud.backbone(seed=103)
    cloud.publish(det, "v1", good)
    state = DetectorState(det)
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail

    new_ref, new_data = cloud.backbone(seed=104)
    tampered = bytearray(new_data)
    tampered[len(tampered) // 2] ^= 0xFF
    cases = [
        ("v2-bad-sha", {"serve": bytes(tampered)}, "sha256"),
        ("v2-bad-size", {"announce": {"size_bytes": new_ref.bytes + 10}}, "announced"),
        ("v2-too-big", {"serve": new_data + b"x"}, "larger than"),
    ]
    for version, how, why in cases:
        cloud.publish(det, version, (new_ref, new_data), **how)  # type: ignore[arg-type]

        assert await poller.poll_once(state) is Outcome.REJECTED, version
        assert state.rejected is not None and state.rejected.version == version
        assert "backbone" in state.rejected.reason and why in state.rejected.reason, state.rejected.reason
        assert current(model_root, det) == "v1" and state.version == "v1"
        assert await serves(inference, det, digits[2][0]) == "v1"
        assert new_ref.sha256 not in installed(model_root)
        # Not fetched again while the cloud's answer stays the same.
        assert await poller.poll_once(state) is Outcome.UNCHANGED
    assert leftovers(model_root) == []

    # The same backbone, announced and served right, goes in.
    cloud.publish(det, "v3", (new_ref, new_data))
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    assert state.rejected is None
    assert await serves(inference, det, digits[2][0]) == "v3"


async def test_backbones_no_kept_version_needs_are_removed_and_the_others_stay(
    poller: DetectorPoller, cloud: Cloud, model_root: Path
):
    det, other = new_detector_id(), new_detector_id()
    p, q, r, shared = (cloud.backbone(seed=s) for s in (105, 106, 107, 108))
    state = DetectorState(det)

    cloud.publish(det, "v1", p)
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    cloud.publish(det, "v2", q)
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    # v1 is kept for a rollback, so its backbone stays.
    assert {p[0].sha256, q[0].sha256} <= installed(model_root)

    cloud.publish(det, "v3", q)
    assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    # v1 pruned (two versions kept): nothing needs P any more.
    assert p[0].sha256 not in installed(model_root) and q[0].sha256 in installed(model_root)

    # A rejected version's new backbone goes with it (the bundle itself was tampered with).
    cloud.publish(det, "v4", r, tamper_archive=True)
    assert await poller.poll_once(state) is Outcome.REJECTED
    assert r[0].sha256 not in installed(model_root) and current(model_root, det) == "v3"

    # A backbone another detector's kept version needs is never removed.
    other_state = DetectorState(other)
    cloud.publish(other, "o1", shared)
    assert await poller.poll_once(other_state) is Outcome.DEPLOYED, other_state.detail
    for version in ("v5", "v6"):
        cloud.publish(det, version, shared)
        assert await poller.poll_once(state) is Outcome.DEPLOYED, state.detail
    assert q[0].sha256 not in installed(model_root)
    assert shared[0].sha256 in installed(model_root)
    cloud.publish(other, "o2", q)  # `other` moves on; its o1 is still kept for a rollback
    assert await poller.poll_once(other_state) is Outcome.DEPLOYED, other_state.detail
    assert {shared[0].sha256, q[0].sha256} <= installed(model_root)
