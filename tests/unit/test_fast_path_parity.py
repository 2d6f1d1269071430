"""The fast path and the declared FastAPI route answer alike (docs/fast-path.md).

edge-api's `POST /device-api/v1/image-queries` and inference's `POST /infer` are served by plain ASGI
endpoints ahead of FastAPI; their FastAPI routes stay declared and must answer the same way if ever
reached. Each request here is sent to the same app twice: as built, and with `app.fast_paths` cleared
(what removing the fast path would leave, the body-limit middleware included). Status, detail and
the headers a client acts on must match, and a dependency override on the declared route proves which
of the two answered. The apps run in-process with their lifespans; edge-api's inference hop is
answered from memory and its cloud knows one trainer-role token (a known caller without the device
right: 403).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request
from PIL import Image

from common.http import FastPathApp
from common.internal_auth import require_internal
from common.wire.inference import InferenceResult, ModelInfo
from edge.api.app import create_app as create_edge_api
from edge.api.auth.local_tokens import add_token
from edge.api.core.inference_client import InferenceHttp
from edge.api.deps import get_principal
from edge.api.routes.image_queries import SUBMIT_PATH
from edge.api.settings import EdgeSettings
from edge.inference.app import create_app as create_inference
from edge.inference.routes import INFER_PATH
from edge.inference.settings import InferenceSettings
from tests.support.fake_cloud import me_body
from tests.support.stack import ADMIN_TOKEN, INTERNAL_TOKEN

DIGIT = "det_DemoWhichDigit0000000000000"
UNSERVED = "det_NotConfiguredOnThisEdge0000"
LABELS = [str(i) for i in range(10)]
LOCAL_TOKEN = "io_localdevicetoken_" + "e" * 24
TRAINER_TOKEN = "io_cloudtrainertok_" + "a" * 24
WRONG_TOKEN = "io_nobodyknowsthis_" + "f" * 24
MAX_IMAGE_BYTES = 4096
BODY_CAP = MAX_IMAGE_BYTES + 1024**2  # what edge-api's body-limit middleware allows
# Headers a client acts on; the rest (date, request id, timings) differ from one answer to the next.
COMPARED_HEADERS = ("content-type", "connection", "x-no-fallback", "retry-after")
# Fields of an answer that are new on every request.
VOLATILE = ("id", "created_at")


def jpeg(size: tuple[int, int] = (28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 40).save(buf, "JPEG")
    return buf.getvalue()


class StubInference(InferenceHttp):
    """The inference hop, answered from memory for DIGIT."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", timeout_s=1.0)
        self.info = ModelInfo(
            detector_id=DIGIT,
            version="v1",
            detector_name="digits",
            query="Which digit is this?",
            mode="MULTI_CLASS",
            labels=LABELS,
            default_confidence_threshold=0.5,
            loaded=True,
        ).model_dump_json()
        self.result = InferenceResult(
            detector_id=DIGIT,
            model_version="v1",
            mode="MULTI_CLASS",
            labels=LABELS,
            probabilities=[0.91] + [0.01] * 9,
            label="0",
            raw_confidence=0.91,
            in_domain=0.99,
            confidence=0.91,
            timings_ms={"decode": 0.1, "model": 0.2},
        ).model_dump_json()

    async def request(
        self, method: str, target: str, body: bytes | None = None, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        if target == f"/models/{DIGIT}":
            return 200, self.info.encode()
        if target == f"{INFER_PATH}?detector_id={DIGIT}":
            return 200, self.result.encode()
        return 404, b'{"detail": "no model for this detector"}'

    async def close(self) -> None:
        return None


def cloud() -> httpx.MockTransport:
    """Knows the trainer token (a known caller, not a device); down for everything else."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/device-api/v1/me" and request.headers.get("x-api-token") == TRAINER_TOKEN:
            return httpx.Response(200, json={**me_body("trainer"), "role": "trainer"})
        return httpx.Response(503, json={"detail": "down"})

    return httpx.MockTransport(handle)


@dataclass
class Both:
    """One app, asked with its fast paths and without them.

    `entry` is the declared route's first dependency (its credential check): counting its calls proves
    which of the two answered (the fast path never runs FastAPI dependencies)."""

    app: FastPathApp
    client: httpx.AsyncClient
    entry: Callable[[Request], Awaitable[Any]]

    async def ask(self, **request: Any) -> tuple[httpx.Response, httpx.Response, int]:
        """Both answers, and how often the declared route was entered for the second."""
        saved = dict(self.app.fast_paths)
        calls = 0
        entry = self.entry

        async def counting(request: Request) -> Any:
            nonlocal calls
            calls += 1
            return await entry(request)

        self.app.dependency_overrides[entry] = counting
        try:
            fast = await self.client.request(**request)
            assert calls == 0, "with the fast path on, FastAPI's route answered"
            self.app.fast_paths.clear()
            declared = await self.client.request(**request)
        finally:
            self.app.fast_paths.update(saved)
            self.app.dependency_overrides.pop(entry, None)
        return fast, declared, calls


def same_answer(fast: httpx.Response, declared: httpx.Response) -> None:
    assert fast.status_code == declared.status_code, (fast.text, declared.text)
    for name in COMPARED_HEADERS:
        assert fast.headers.get(name) == declared.headers.get(name), name
    assert ("server-timing" in fast.headers) == ("server-timing" in declared.headers)
    assert fast.headers["x-request-id"] and declared.headers["x-request-id"]
    a, b = fast.json(), declared.json()
    if fast.status_code == 200:
        for body in (a, b):
            for key in VOLATILE:
                body.pop(key)
            body["intellioptics"].pop("timings_ms")
    assert a == b


def as_fast_path_app(app: FastAPI) -> FastPathApp:
    assert isinstance(app, FastPathApp) and app.fast_paths
    return app


@asynccontextmanager
async def serving(app: FastPathApp, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
    ):
        yield client


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Both]:
    config = tmp_path / "edge-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "detectors": [{"detector_id": DIGIT, "edge_inference_config": "edge_only"}],
                "edge_inference_configs": {
                    "edge_only": {"always_return_edge_prediction": True, "disable_cloud_escalation": True}
                },
            }
        )
    )
    add_token(tmp_path / "data" / "tokens.json", LOCAL_TOKEN, "parity-camera")
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "config_path": config,
        "inference_url": "http://127.0.0.1:9",
        "cloud_url": "http://cloud.invalid",
        "streams_url": "",
        "updater_url": "",
        "admin_token": ADMIN_TOKEN,
        "max_image_bytes": MAX_IMAGE_BYTES,
        "INTELLIOPTICS_INTERNAL_TOKEN": INTERNAL_TOKEN,
    }
    app = as_fast_path_app(create_edge_api(EdgeSettings(**options), cloud_transport=cloud()))
    async with serving(app, "http://edge.test") as client:
        app.state.edge.inference._http = StubInference()
        yield Both(app, client, get_principal)


@pytest.fixture
async def inference(tmp_path: Path) -> AsyncIterator[Both]:
    (tmp_path / "models").mkdir()
    options: dict[str, Any] = {
        "model_root": tmp_path / "models",
        "worker_threads": 1,
        "INTELLIOPTICS_INTERNAL_TOKEN": INTERNAL_TOKEN,
    }
    app = as_fast_path_app(create_inference(InferenceSettings(**options)))
    async with serving(app, "http://inference.test") as client:
        yield Both(app, client, require_internal)


DEVICE = {"x-api-token": LOCAL_TOKEN}
GOOD = {"detector_id": DIGIT}

# name, query, body, headers, the status both must give
EDGE_CASES: list[tuple[str, dict[str, str], bytes, dict[str, str], int]] = [
    ("good image", GOOD, jpeg(), DEVICE, 200),
    ("threshold not a number", {**GOOD, "confidence_threshold": "high"}, jpeg(), DEVICE, 400),
    ("missing detector id", {}, jpeg(), DEVICE, 400),
    ("malformed detector id", {"detector_id": "det_123"}, jpeg(), DEVICE, 400),
    ("not an image", GOOD, b'{"image": "not really"}', DEVICE, 415),
    ("empty body", GOOD, b"", DEVICE, 400),
    ("image over the image limit", GOOD, jpeg() + b"\0" * MAX_IMAGE_BYTES, DEVICE, 413),
    ("body over the body cap", GOOD, b"\0" * (BODY_CAP + 1), DEVICE, 413),
    ("detector not served here", {"detector_id": UNSERVED}, jpeg(), DEVICE, 503),
    ("no token", GOOD, jpeg(), {}, 401),
    ("no token and a bad parameter", {**GOOD, "confidence_threshold": "high"}, jpeg(), {}, 401),
    ("token nobody vouches for", GOOD, jpeg(), {"x-api-token": WRONG_TOKEN}, 401),
    ("known caller without the device right", GOOD, jpeg(), {"x-api-token": TRAINER_TOKEN}, 403),
]


@pytest.mark.parametrize(
    ("name", "query", "body", "headers", "status"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES]
)
async def test_edge_api_submit_answers_alike_both_ways(
    edge: Both, name: str, query: dict[str, str], body: bytes, headers: dict[str, str], status: int
) -> None:
    fast, declared, entered = await edge.ask(
        method="POST", url=SUBMIT_PATH, params=query, content=body, headers=headers
    )
    assert fast.status_code == status, fast.text
    same_answer(fast, declared)
    if name == "body over the body cap":
        # The body-limit middleware's own refusal, before any route: it runs on both paths.
        assert fast.json()["detail"].startswith("the request body is")
        assert entered == 0
    else:
        assert entered == 1, "with the fast paths cleared, FastAPI's route did not answer"


async def test_a_cameras_request_id_is_echoed_and_its_retry_replayed_both_ways(edge: Both) -> None:
    """The same X-Request-Id makes the second call a retry: the declared route replays, byte for byte,
    the answer the fast path gave (one idempotency store, one key), and both echo the id."""
    headers = {**DEVICE, "x-request-id": "cam-1-frame-7"}
    fast, declared, entered = await edge.ask(
        method="POST", url=SUBMIT_PATH, params=GOOD, content=jpeg(), headers=headers
    )
    assert fast.status_code == declared.status_code == 200 and entered == 1
    assert declared.content == fast.content
    assert fast.headers["x-request-id"] == declared.headers["x-request-id"] == "cam-1-frame-7"


INTERNAL = {"x-internal-token": INTERNAL_TOKEN}
INFERENCE_CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("missing detector id", "", jpeg(), INTERNAL, 400),
    ("detector id too long", "detector_id=" + "d" * 65, jpeg(), INTERNAL, 400),
    ("malformed detector id", "detector_id=det_123", jpeg(), INTERNAL, 400),
    ("quoted detector id", "detector_id=det%5F123", jpeg(), INTERNAL, 400),
    ("no model for the detector", f"detector_id={DIGIT}", jpeg(), INTERNAL, 404),
    ("no token", f"detector_id={DIGIT}", jpeg(), {}, 401),
    ("wrong token", f"detector_id={DIGIT}", jpeg(), {"x-internal-token": "not-it"}, 401),
    ("no token and no detector id", "", jpeg(), {}, 401),
]


@pytest.mark.parametrize(
    ("name", "query", "body", "headers", "status"), INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES]
)
async def test_inference_infer_answers_alike_both_ways(
    inference: Both, name: str, query: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    """The fast path's hand-written checks give FastAPI's validation messages, word for word."""
    url = f"{INFER_PATH}?{query}" if query else INFER_PATH
    fast, declared, entered = await inference.ask(method="POST", url=url, content=body, headers=headers)
    assert fast.status_code == status, fast.text
    same_answer(fast, declared)
    assert entered == 1, "with the fast paths cleared, FastAPI's route did not answer"
