"""Build the demo bundles once per test session; every test reads them, none rebuilds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.bundle import current_bundle_dir
from training.demo_bundles import DEMO_DIGIT_ID, DEMO_SEVEN_ID, build_demo_bundles


@pytest.fixture(scope="session")
def built_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    # One thread: the same weights on any machine, and no OpenMP spin-waiting when the test
    # machine is shared (two threads were up to 6x slower than one on a busy 2-core box).
    build_demo_bundles(root, threads=1)
    return root


def _bundle(root: Path, detector_id: str) -> Path:
    path = current_bundle_dir(root, detector_id)
    assert path is not None, f"{detector_id} has no current bundle"
    return path


@pytest.fixture(scope="session")
def digit_bundle(built_model_root: Path) -> Path:
    return _bundle(built_model_root, DEMO_DIGIT_ID)


@pytest.fixture(scope="session")
def seven_bundle(built_model_root: Path) -> Path:
    return _bundle(built_model_root, DEMO_SEVEN_ID)
