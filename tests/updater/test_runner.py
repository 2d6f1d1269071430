"""The updater's schedule, in process against a real cloud: which detectors the edge config makes it
poll, where the refresh rate comes from, backoff while the cloud is unreachable, the fast polls of a
detector that has no model yet (against the fake cloud), and the heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from common.bundle import read_metadata
from common.edge_config import parse_edge_config
from common.ids import new_detector_id
from edge.updater.clients import EdgeApiClient, RegistryClient, SwapClient
from edge.updater.core import DetectorPoller, DetectorState, Outcome
from edge.updater.installer import Installer
from edge.updater.metrics import UpdaterMetrics
from edge.updater.runner import Updater, poll_interval
from edge.updater.settings import UpdaterSettings
from launcher.processes import free_port
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import INTERNAL
from tests.support.updater import Registry, bundle_archive

pytestmark = pytest.mark.processes


def config(detectors: dict[str, str], refresh_rate: float = 60.0):
    return parse_edge_config(
        {
            "global_config": {"refresh_rate": refresh_rate},
            "detectors": [{"detector_id": d, "edge_inference_config": c} for d, c in detectors.items()],
        }
    )


@pytest.fixture
async def make_updater(inference: str, model_root: Path) -> AsyncIterator[Callable[..., Updater]]:
    """Builds Updaters over real clients (edge-api is not running: configs are applied directly)."""
    clients: list[httpx.AsyncClient] = []
    updaters: list[Updater] = []

    def build(cloud_url: str, **settings: object) -> Updater:
        values = {"model_root": model_root, "jitter": 0.0, "shutdown_grace_s": 5.0, **settings}
        s = UpdaterSettings(cloud_url=cloud_url, api_token=DEVICE_TOKEN, **values)  # type: ignore[arg-type]
        cloud, inf, edge_api = (
            httpx.AsyncClient(base_url=url, headers=INTERNAL, timeout=10, trust_env=False)
            for url in (cloud_url, inference, f"http://127.0.0.1:{free_port()}")
        )
        clients.extend([cloud, inf, edge_api])
        registry = RegistryClient(cloud, s.token, 30)
        installer = Installer(model_root)
        updater = Updater(
            s,
            DetectorPoller(registry, SwapClient(inf), installer),
            registry,
            EdgeApiClient(edge_api),
            installer,
            UpdaterMetrics(),
        )
        updaters.append(updater)
        return updater

    yield build
    for updater in updaters:
        await updater.stop()
    for client in clients:
        await client.aclose()


def polls(updater: Updater, detector_id: str) -> float:
    total = 0.0
    for family in updater.metrics.polls.collect():
        for sample in family.samples:
            if sample.name == "updater_polls_total" and sample.labels["detector_id"] == detector_id:
                total += sample.value
    return total


async def test_only_detectors_with_edge_inference_enabled_are_polled_at_the_config_s_rate(
    make_updater, cloud: CloudServer
):
    updater: Updater = make_updater(cloud.url)
    enabled, disabled = new_detector_id(), new_detector_id()

    updater.apply_config(config({enabled: "default", disabled: "disabled"}, refresh_rate=7.0))
    await asyncio.sleep(0.5)

    snapshot = updater.snapshot()
    assert [d.detector_id for d in snapshot.detectors] == [enabled]
    assert snapshot.refresh_rate_s == 7.0
    assert snapshot.refresh_rate_source == "edge config global_config.refresh_rate"

    # Removed from the config: no longer polled.
    updater.apply_config(config({disabled: "disabled"}))
    await asyncio.sleep(0.1)
    assert updater.snapshot().detectors == []


async def test_the_refresh_rate_setting_overrides_the_edge_config(make_updater, cloud: CloudServer):
    updater: Updater = make_updater(cloud.url, refresh_rate_s=3.0)

    updater.apply_config(config({new_detector_id(): "default"}, refresh_rate=60.0))

    assert updater.snapshot().refresh_rate_s == 3.0
    assert updater.snapshot().refresh_rate_source == "UPDATER_REFRESH_RATE_S"


async def test_while_the_cloud_is_unreachable_polls_back_off(make_updater):
    updater: Updater = make_updater(f"http://127.0.0.1:{free_port()}", backoff_max_s=30.0)
    detector_id = new_detector_id()

    # Every 0.1 s without errors would be about 15 polls; doubling waits (0.2, 0.4, 0.8, ...) far fewer.
    updater.apply_config(config({detector_id: "default"}, refresh_rate=0.1))
    await asyncio.sleep(1.5)
    await updater.stop()  # lets a poll under way finish: the snapshot is consistent

    (state,) = updater.snapshot().detectors
    assert state.outcome == Outcome.ERROR
    assert 2 <= polls(updater, detector_id) <= 6
    assert state.consecutive_failures == polls(updater, detector_id)
    assert state.next_poll_at is not None and state.polled_at is not None
    assert state.next_poll_at - state.polled_at >= 0.1 * 2**state.consecutive_failures * 0.9


async def eventually(predicate: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_fast_rate_applies_only_while_no_model_serves_and_never_slows_polls_down():
    state = DetectorState(new_detector_id())
    assert poll_interval(state, 60.0, 5.0) == 60.0  # not polled yet
    for outcome in (Outcome.NO_MODEL, Outcome.ERROR):
        state.outcome = outcome
        assert poll_interval(state, 60.0, 5.0) == 5.0
        assert poll_interval(state, 2.0, 5.0) == 2.0
    state.outcome, state.version = Outcome.DEPLOYED, "v1"
    assert poll_interval(state, 60.0, 5.0) == 60.0
    # The cloud withdrew its model, but this edge still serves one: the normal rate.
    state.outcome = Outcome.NO_MODEL
    assert poll_interval(state, 60.0, 5.0) == 60.0


async def test_a_detector_without_a_model_is_polled_fast_until_its_first_model_serves(
    make_updater, fake_cloud: FakeCloud, digit_bundle: Path, tmp_path: Path
):
    updater: Updater = make_updater(fake_cloud.url, no_model_refresh_s=0.05, young_model_window_s=0.0)
    detector_id = new_detector_id()
    updater.apply_config(config({detector_id: "default"}, refresh_rate=60.0))

    # At the 60 s refresh rate this would be a single poll.
    await eventually(lambda: polls(updater, detector_id) >= 3, "fast polls")
    (state,) = updater.snapshot().detectors
    assert state.outcome == Outcome.NO_MODEL and state.delay_s == 0.05

    meta = read_metadata(digit_bundle)
    archive = bundle_archive(
        digit_bundle, tmp_path / "first.tar.gz", version="first-1", detector_id=detector_id
    )
    fake_cloud.publish_model(detector_id, archive, version="first-1", labels=meta.labels, mode=meta.mode)
    await eventually(lambda: updater.snapshot().detectors[0].outcome == "deployed", "the first model")

    (state,) = updater.snapshot().detectors
    assert state.version == "first-1"
    assert state.delay_s == 60.0  # jitter 0: exactly the refresh rate from now on (no young window)


async def test_the_heartbeat_reports_deployed_versions_and_what_the_updater_could_not_learn(
    make_updater, cloud: CloudServer, registry: Registry, digit_bundle: Path, tmp_path: Path
):
    # The registry helpers are synchronous (their own event loop for the database): off this loop.
    detector_id = await asyncio.to_thread(registry.add_detector_for, digit_bundle, new_detector_id())
    archive = bundle_archive(digit_bundle, tmp_path / "hb-1.tar.gz", version="hb-1", detector_id=detector_id)
    await asyncio.to_thread(lambda: registry.upload(detector_id, archive, promote=True))
    edge_id = f"edge-runner-{detector_id[-6:]}"
    updater: Updater = make_updater(cloud.url, edge_id=edge_id, refresh_rate_s=60.0)
    unknown = new_detector_id()  # configured on the edge, unknown to the cloud
    updater.apply_config(config({detector_id: "default", unknown: "default"}))
    for _ in range(100):
        states = {d.detector_id: d for d in updater.snapshot().detectors}
        if all(s.outcome for s in states.values()):
            break
        await asyncio.sleep(0.1)
    assert states[detector_id].outcome == Outcome.DEPLOYED

    assert await updater.heartbeat_once() is True

    hub = await asyncio.to_thread(registry.hub, edge_id)
    assert hub is not None
    assert hub["deployed_versions"][detector_id] == "hb-1"
    # edge-api is not running here: the outbox depth is unknown, and the heartbeat says so.
    assert hub["info"]["updater"]["outbox_depth_known"] is False
    assert "edge-api not answering" in hub["info"]["updater"]["edge_api_error"]
    assert states[unknown].outcome == Outcome.NO_MODEL
    assert "not found" in (states[unknown].detail or "")


def test_a_freshly_deployed_version_keeps_the_fast_rate_for_the_young_model_window():
    state = DetectorState(new_detector_id())
    state.outcome, state.version, state.deployed_at = Outcome.DEPLOYED, "v2", 1000.0
    assert poll_interval(state, 60.0, 5.0, 600.0, now=1000.0 + 599) == 5.0  # still learning
    assert poll_interval(state, 60.0, 5.0, 600.0, now=1000.0 + 601) == 60.0  # settled
    assert poll_interval(state, 2.0, 5.0, 600.0, now=1001.0) == 2.0  # never slower than the rate
    assert poll_interval(state, 60.0, 5.0, 0.0, now=1001.0) == 60.0  # window off
    state.deployed_at = None  # deployed before this process started
    assert poll_interval(state, 60.0, 5.0, 600.0, now=1001.0) == 60.0
