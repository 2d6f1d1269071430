"""Client of the inference service: one keep-alive aiohttp session for the whole process.

This hop is on every image query, so it uses aiohttp, which measured about 1 ms cheaper per call
than httpx on these machines (bench/edge_throughput.py); the cloud link keeps httpx.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from common.imaging import ImageError
from common.wire.inference import InferenceResult, ModelInfo, ModelList


class InferenceUnavailableError(RuntimeError):
    """The inference service is down, overloaded or cannot load the model."""


class NoModelError(LookupError):
    """The inference service has no bundle for this detector."""


class RejectedImageError(ImageError):
    """The runtime could not use the image; carries the status it answered."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def new_session(base_url: str, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base_url,
        timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=2.0),
        connector=aiohttp.TCPConnector(limit=128, keepalive_timeout=60),
        raise_for_status=False,
    )


class InferenceClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def _request(self, method: str, path: str, **kw: object) -> tuple[int, bytes]:
        try:
            async with self._session.request(method, path, **kw) as resp:  # type: ignore[arg-type]
                return resp.status, await resp.read()
        except _TRANSPORT_ERRORS as exc:
            raise InferenceUnavailableError(f"inference service unreachable: {type(exc).__name__}") from None

    async def infer(self, detector_id: str, image: bytes) -> InferenceResult:
        status, body = await self._request("POST", "/infer", params={"detector_id": detector_id}, data=image)
        if status == 200:
            return InferenceResult.model_validate_json(body)
        detail = _detail(body)
        if status in (400, 413, 415):
            raise RejectedImageError(status, detail)
        if status == 404:
            raise NoModelError(detail)
        raise InferenceUnavailableError(f"inference answered {status}: {detail}")

    async def model_info(self, detector_id: str) -> ModelInfo | None:
        status, body = await self._request("GET", f"/models/{detector_id}")
        if status == 200:
            return ModelInfo.model_validate_json(body)
        if status in (400, 404):
            return None
        raise InferenceUnavailableError(f"inference answered {status}: {_detail(body)}")

    async def models(self) -> ModelList:
        status, body = await self._request("GET", "/models")
        if status != 200:
            raise InferenceUnavailableError(f"inference answered {status}: {_detail(body)}")
        return ModelList.model_validate_json(body)

    async def live(self) -> bool:
        try:
            status, _ = await self._request("GET", "/health/live", timeout=aiohttp.ClientTimeout(total=2.0))
        except InferenceUnavailableError:
            return False
        return status == 200


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)
