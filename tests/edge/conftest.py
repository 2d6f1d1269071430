from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from launcher.processes import free_port
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import EdgeStack

DIGIT = "det_DemoWhichDigit0000000000000"
SEVEN = "det_DemoIsThisASeven00000000000"
NO_MODEL = "det_NoModelInstalledYet00000000"
UNKNOWN = "det_NotConfiguredOnThisEdge0000"

FAST = {"min_time_between_escalations": 0.001}
EDGE_ONLY = {"always_return_edge_prediction": True, "disable_cloud_escalation": True, **FAST}


def edge_config(audit_rate: float = 0.0, **presets: str) -> dict[str, Any]:
    """Every demo detector on a fast-escalating config unless a preset is named for it."""
    chosen = {DIGIT: "fast", SEVEN: "fast", **presets}
    return {
        "global_config": {"confident_audit_rate": audit_rate},
        "edge_inference_configs": {"fast": FAST, "fast_edge_only": EDGE_ONLY},
        "detectors": [{"detector_id": d, "edge_inference_config": c} for d, c in chosen.items()],
    }


@contextmanager
def fake_cloud_stack(
    model_root: Path,
    workdir: Path,
    edge_env: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Iterator[EdgeStack]:
    """An edge (inference, edge-api, nginx) on `model_root` whose cloud is a FakeCloud, both stopped
    on exit; `config` defaults to `edge_config()`."""
    cloud = FakeCloud(free_port()).start()
    stack = EdgeStack(workdir, model_root, cloud, edge_env=edge_env or {})
    try:
        stack.start(config or edge_config())
        yield stack
    finally:
        stack.stop()
        cloud.stop()


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    with fake_cloud_stack(demo_models, tmp_path_factory.mktemp("edge")) as s:
        yield s


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_delivered_once(stack: EdgeStack, iq_id: str) -> None:
    """The escalation reached the cloud, left the outbox, and was taken exactly once (posts the cloud
    refused and the edge retried do not count)."""
    wait_until(lambda: iq_id in stack.cloud.state.escalations, what=f"escalation {iq_id} at the cloud")
    wait_until(lambda: not stack.outbox_rows(), what="outbox to drain")
    assert stack.cloud.state.accepted_per_id[iq_id] == 1
