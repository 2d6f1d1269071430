from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.processes import free_port
from tests.support.fake_cloud import FakeCloud

# Variables a developer's shell may carry that would change what the services do under test.
_SCRUB = ("EDGE_", "INFERENCE_", "GATEWAY_", "GROUNDLIGHT_", "INTELLIOPTICS_", "CLOUD_", "DATABASE_URL")


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
