"""A test inference upstream that speaks edge/inference's API (`/infer`, `/models`, `/models/{id}`,
`/health/live`) and answers every inference after an artificial delay, recording what it was sent.

Frames from `indexed_video` carry their frame number in three flat grey blocks, which survive JPEG,
so the upstream can tell which frame of the video each request carried and when it arrived.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.wire.inference import CacheStats, InferenceResult, ModelInfo, ModelList
from tests.support.thread_server import ThreadServer

_BLOCKS = 3
_BASE = 16


def frame_with_index(index: int, width: int = 96, height: int = 32) -> np.ndarray:
    """A frame whose three blocks show `index` in base 16, one digit per block."""
    frame = np.zeros((height, width, 3), np.uint8)
    block = width // _BLOCKS
    for b in range(_BLOCKS):
        digit = (index // _BASE ** (_BLOCKS - 1 - b)) % _BASE
        frame[:, b * block : (b + 1) * block] = digit * 16 + 8
    return frame


def index_of(image: np.ndarray) -> int:
    height, width = image.shape[:2]
    block = width // _BLOCKS
    value = 0
    for b in range(_BLOCKS):
        # The middle of each block, away from edges JPEG smears.
        patch = image[height // 4 : 3 * height // 4, b * block + block // 4 : (b + 1) * block - block // 4]
        value = value * _BASE + round((float(patch.mean()) - 8) / 16)
    return value


def indexed_video(path: Path, fps: float, seconds: float) -> Path:
    """An MJPEG AVI (OpenCV's own writer) whose frame i shows i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (96, 32))
    assert writer.isOpened(), "OpenCV cannot write MJPEG AVI here"
    for i in range(int(fps * seconds)):
        writer.write(frame_with_index(i))
    writer.release()
    return path


@dataclass
class Arrival:
    at: float
    """time.monotonic() in this process when the request arrived."""
    index: int


@dataclass
class SlowInference:
    port: int
    detector_id: str
    delay_s: float
    arrivals: list[Arrival] = field(default_factory=list)
    _server: ThreadServer = field(default_factory=lambda: ThreadServer("slow inference upstream"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _model(self) -> ModelInfo:
        return ModelInfo(
            detector_id=self.detector_id,
            version="v-slow",
            detector_name="slow",
            query="Is the frame numbered?",
            mode="BINARY",
            labels=["YES", "NO"],
            default_confidence_threshold=0.9,
            loaded=True,
            provider="CPUExecutionProvider",
        )

    def _app(self) -> Starlette:
        async def infer(request: Request) -> JSONResponse:
            arrived = time.monotonic()
            body = await request.body()
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None
            self.arrivals.append(Arrival(arrived, index_of(image)))
            await asyncio.sleep(self.delay_s)
            result = InferenceResult(
                detector_id=self.detector_id,
                model_version="v-slow",
                mode="BINARY",
                labels=["YES", "NO"],
                probabilities=[0.99, 0.01],
                label="YES",
                raw_confidence=0.99,
                in_domain=1.0,
                confidence=0.99,
                timings_ms={"delay": self.delay_s * 1e3},
            )
            return JSONResponse(result.model_dump(mode="json"))

        async def model(request: Request) -> JSONResponse:
            if request.path_params["detector_id"] != self.detector_id:
                return JSONResponse({"detail": "no such model"}, status_code=404)
            return JSONResponse(self._model().model_dump(mode="json"))

        async def models(request: Request) -> JSONResponse:
            cache = CacheStats(entries=1, max_entries=5, bytes=0, max_bytes=0, in_use=0)
            listing = ModelList(provider="CPUExecutionProvider", cache=cache, models=[self._model()])
            return JSONResponse(listing.model_dump(mode="json"))

        async def live(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        return Starlette(
            routes=[
                Route("/infer", infer, methods=["POST"]),
                Route("/models", models),
                Route("/models/{detector_id}", model),
                Route("/health/live", live),
            ]
        )

    def start(self) -> SlowInference:
        self._server.start(self._app(), self.port)
        return self

    def stop(self) -> None:
        self._server.stop()
