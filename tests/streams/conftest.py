"""Stream ingest as real processes: inference, edge-api, nginx, a fake cloud and `python -m edge.streams`,
which polls edge-api's config and posts frames to it (or to the gateway)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml

from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import ADMIN, DEVICE, INTERNAL, INTERNAL_ENV, ROOT, EdgeStack

DIGIT = "det_DemoWhichDigit0000000000000"
SEVEN = "det_DemoIsThisASeven00000000000"
POLL_S = 0.3


NO_MODEL = "det_NoModelInstalledYet00000000"


def edge_config(*streams: dict[str, Any]) -> dict[str, Any]:
    """Both demo detectors and one without a model, answered on the edge only (no escalation
    traffic), plus `streams`."""
    return {
        "edge_inference_configs": {
            "edge_only": {
                "always_return_edge_prediction": True,
                "disable_cloud_escalation": True,
            }
        },
        "detectors": [
            {"detector_id": d, "edge_inference_config": "edge_only"} for d in (DIGIT, SEVEN, NO_MODEL)
        ],
        "streams": list(streams),
    }


def stream(name: str, url: str | Path, **settings: Any) -> dict[str, Any]:
    return {"name": name, "url": str(url), "detector_id": DIGIT, **settings}


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def write_image(path: Path, image: np.ndarray) -> None:
    """Atomically, so a folder source never reads half a file."""
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


@dataclass
class StreamsService:
    edge_api_url: str
    submit_url: str = ""
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StreamsService:
        self.process = ManagedProcess(
            "streams",
            [sys.executable, "-m", "edge.streams"],
            env={
                "STREAMS_PORT": str(self.port),
                "STREAMS_EDGE_API_URL": self.edge_api_url,
                "STREAMS_SUBMIT_URL": self.submit_url,
                "STREAMS_CONFIG_POLL_S": str(POLL_S),
                "STREAMS_LOG_LEVEL": "warning",
                **INTERNAL_ENV,
            },
            cwd=ROOT,
        ).start()
        wait_for_http(f"{self.url}/health/live", process=self.process, timeout=60)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def status(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/status", headers=INTERNAL, timeout=5, trust_env=False)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def stream(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.status()["streams"] if s["name"] == name), None)

    def wait_stream(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0, what: str = ""
    ) -> dict[str, Any]:
        """The stream's status once `predicate` holds for it."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            current = self.stream(name)
            if current is None:
                return False
            seen.update(current)
            return predicate(current)

        try:
            wait_until(check, timeout, what or f"stream {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {seen}") from None
        return seen


@dataclass
class StreamsStack:
    edge: EdgeStack
    streams: StreamsService

    def put_config(self, config: dict[str, Any]) -> None:
        self.edge.put_config(config)

    def edge_status(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.edge.gateway_url}/status", headers=ADMIN, timeout=10, trust_env=False)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def image_query(self, iq_id: str) -> dict[str, Any]:
        resp = httpx.get(
            f"{self.edge.edge_url}/device-api/v1/image-queries/{iq_id}", headers=DEVICE, timeout=10
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body


def start_streams_stack(
    workdir: Path,
    model_root: Path,
    config: dict[str, Any],
    *,
    via_gateway: bool = False,
    edge_env: dict[str, str] | None = None,
    inference_url: str | None = None,
) -> tuple[FakeCloud, StreamsStack]:
    """The edge stack plus the streams service. `inference_url` replaces the inference process with an
    upstream the test runs itself."""
    workdir.mkdir(parents=True, exist_ok=True)
    cloud = FakeCloud(free_port()).start()
    streams_port = free_port()
    edge = EdgeStack(
        workdir,
        model_root,
        cloud,
        edge_env={"EDGE_STREAMS_URL": f"http://127.0.0.1:{streams_port}", **(edge_env or {})},
    )
    try:
        if inference_url is None:
            edge.start(config)
        else:
            edge.config_path.write_text(yaml.safe_dump(config))
            edge.inference_port = int(inference_url.rsplit(":", 1)[1])
            edge.start_edge()
        streams = StreamsService(
            edge.edge_url, submit_url=edge.gateway_url if via_gateway else "", port=streams_port
        ).start()
    except BaseException:
        edge.stop()
        cloud.stop()
        raise
    return cloud, StreamsStack(edge, streams)


@pytest.fixture(scope="module")
def streams_stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsStack]:
    cloud, stack = start_streams_stack(tmp_path_factory.mktemp("edge"), demo_models, edge_config())
    try:
        yield stack
    finally:
        stack.streams.stop()
        stack.edge.stop()
        cloud.stop()
