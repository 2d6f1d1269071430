"""Client of the inference service (keep-alive, one shared httpx.AsyncClient)."""

from __future__ import annotations

import httpx

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


class InferenceClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._http = client

    async def infer(self, detector_id: str, image: bytes) -> InferenceResult:
        try:
            resp = await self._http.post("/infer", params={"detector_id": detector_id}, content=image)
        except httpx.HTTPError as exc:
            raise InferenceUnavailableError(f"inference service unreachable: {type(exc).__name__}") from None
        if resp.status_code == 200:
            return InferenceResult.model_validate_json(resp.content)
        detail = _detail(resp)
        if resp.status_code in (400, 413, 415):
            raise RejectedImageError(resp.status_code, detail)
        if resp.status_code == 404:
            raise NoModelError(detail)
        raise InferenceUnavailableError(f"inference answered {resp.status_code}: {detail}")

    async def model_info(self, detector_id: str) -> ModelInfo | None:
        try:
            resp = await self._http.get(f"/models/{detector_id}")
        except httpx.HTTPError as exc:
            raise InferenceUnavailableError(f"inference service unreachable: {type(exc).__name__}") from None
        if resp.status_code == 200:
            return ModelInfo.model_validate_json(resp.content)
        if resp.status_code in (400, 404):
            return None
        raise InferenceUnavailableError(f"inference answered {resp.status_code}: {_detail(resp)}")

    async def models(self) -> ModelList:
        try:
            resp = await self._http.get("/models")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise InferenceUnavailableError(f"inference service unavailable: {type(exc).__name__}") from None
        return ModelList.model_validate_json(resp.content)

    async def live(self) -> bool:
        try:
            resp = await self._http.get("/health/live", timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200


def _detail(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)
