from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.processes import free_port
from tests.support.fake_cloud import FakeCloud

# Variables a developer's shell may carry that would change what the services do under test.
_SCRUB = ("EDGE_", "INFERENCE_", "GATEWAY_", "GROUNDLIGHT_", "INTELLIOPTICS_", "CLOUD_", "DATABASE_URL")


# `make test-fast`: the layer that starts no process (no service, no browser, no tool binary).
FAST_LAYER = os.environ.get("IO_TEST_LAYER") == "fast"


@pytest.hookimpl(trylast=True)  # after the directories' hooks have marked their items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not FAST_LAYER:
        return
    kept = [i for i in items if not {"processes", "slow", "heavy"} & set(i.keywords)]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept


_real_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
# Quick tools that read the checkout, not services.
_FAST_TOOLS = {"git"}


def _refuse_processes(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
    program = Path(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]).name
    if program in _FAST_TOOLS:
        _real_execute_child(self, args, *rest, **kwargs)
        return
    raise RuntimeError(
        f"the fast test layer starts no process (this test started {args!r}): "
        "mark its module `pytestmark = pytest.mark.processes`"
    )


@pytest.fixture(autouse=True, scope="session")
def _fast_layer_starts_no_process() -> Iterator[None]:
    """Every process start, from a fixture of any scope or a test body, fails in the fast layer, so a
    module that starts one and is not marked `processes` is found at once."""
    if not FAST_LAYER:
        yield
        return
    subprocess.Popen._execute_child = _refuse_processes  # type: ignore[attr-defined]
    yield
    subprocess.Popen._execute_child = _real_execute_child  # type: ignore[attr-defined]


@pytest.fixture(autouse=True, scope="session")
def _clean_environ() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(_SCRUB)}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def demo_models() -> Path:
    from tests.support.models import demo_model_root

    return demo_model_root()


@pytest.fixture
def fake_cloud() -> Iterator[FakeCloud]:
    cloud = FakeCloud(free_port()).start()
    yield cloud
    cloud.stop()


@pytest.fixture(scope="session")
def digits() -> list[tuple[bytes, int]]:
    from training.sample_images import demo_digit_images

    return list(demo_digit_images(40))


@pytest.fixture(scope="session")
def photos() -> list[bytes]:
    from training.sample_images import out_of_domain_images

    return list(out_of_domain_images(12))
