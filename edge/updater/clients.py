"""The updater's HTTP clients: the cloud (model registry, hub heartbeats), inference (swap), edge-api.

Each wraps an `httpx.AsyncClient` it is given (base URL, timeouts, and a transport seam for tests) and
turns transport failures into its own errors, so the poll logic never sees httpx:

- RegistryError, InferenceError, EdgeApiError: could not ask, or got an unexpected answer; try again later.
- DownloadRejected: the bytes are not the bundle (or shared backbone) the cloud announced (size or
  sha256); never installed.
- SwapRejected: inference could not load or warm the bundle (422); the old version is still serving.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from common.edge_config import EdgeConfig, EdgeConfigError, parse_edge_config
from common.error_detail import error_detail as _detail
from common.wire.edge_facts import EdgeFacts
from common.wire.hub_heartbeat import HubHeartbeat
from common.wire.inference import SwapResult
from common.wire.model_registry import BackboneFetchInfo, ModelFetchInfo

FACTS_PATH = "/internal/facts"


class RegistryError(RuntimeError):
    """The cloud could not be asked, refused the token, or answered something unexpected."""


class DownloadRejected(Exception):
    """The download is not the announced bundle or backbone: wrong size or sha256 (tampered or corrupted)."""


class InferenceError(RuntimeError):
    """The inference service could not be asked or answered something unexpected."""


class SwapRejected(Exception):
    """The inference service could not load or warm up the bundle; it keeps serving the old one."""


class EdgeApiError(RuntimeError):
    """edge-api could not be asked, or its edge config did not validate."""


def _unreachable(what: str, url: httpx.URL, exc: httpx.HTTPError) -> str:
    return f"{what} not answering at {url} ({type(exc).__name__})"


@dataclass(frozen=True)
class Fetched:
    """One answer of fetch-model-urls: unchanged (304), no production model yet (404), or a model."""

    kind: Literal["not_modified", "no_model", "model"]
    etag: str | None = None
    info: ModelFetchInfo | None = None
    detail: str = ""


class RegistryClient:
    """The cloud's edge-facing routes, with the device token as x-api-token."""

    def __init__(self, http: httpx.AsyncClient, token: Callable[[], str], download_timeout_s: float) -> None:
        self.http = http
        self._token = token
        self._download_timeout = httpx.Timeout(download_timeout_s, connect=min(download_timeout_s, 10.0))

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {"x-api-token": token} if token else {}

    async def fetch(self, detector_id: str, etag: str | None) -> Fetched:
        headers = self._headers()
        if etag:
            headers["If-None-Match"] = etag
        try:
            response = await self.http.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/", headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryError(_unreachable("cloud", self.http.base_url, exc)) from None
        if response.status_code == 304:
            return Fetched("not_modified", etag=etag)
        if response.status_code == 404:
            return Fetched("no_model", detail=_detail(response))
        if response.status_code != 200:
            raise RegistryError(
                f"cloud answered {response.status_code} to fetch-model-urls: {_detail(response)}"
            )
        try:
            info = ModelFetchInfo.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryError(
                f"cloud sent a malformed fetch-model-urls answer: {exc.errors()[0]['msg']}"
            ) from None
        if info.detector_id != detector_id:
            raise RegistryError(f"cloud answered for {info.detector_id} when asked for {detector_id}")
        return Fetched("model", etag=response.headers.get("etag"), info=info)

    async def download(self, info: ModelFetchInfo, dest: Path) -> None:
        """Stream the bundle archive into `dest`, checking size and sha256 as the bytes arrive."""
        await self._download(info.download_url, info.size_bytes, info.sha256, dest, "model download")

    async def download_backbone(self, info: BackboneFetchInfo, dest: Path) -> None:
        """Stream a shared backbone into `dest`, checked like a bundle."""
        await self._download(info.download_url, info.size_bytes, info.sha256, dest, "backbone download")

    async def _download(self, url: str, size_bytes: int, sha256: str, dest: Path, what: str) -> None:
        # Bundle messages keep their historical wording ("download is ..."); backbones say so.
        noun = "download" if what == "model download" else what
        digest = hashlib.sha256()
        size = 0
        try:
            async with self.http.stream(
                "GET", url, headers=self._headers(), timeout=self._download_timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise RegistryError(f"{what} answered {response.status_code}: {_detail(response)}")
                with dest.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > size_bytes:
                            raise DownloadRejected(
                                f"{noun} is larger than the {size_bytes} bytes the cloud announced"
                            )
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
        except httpx.HTTPError as exc:
            raise RegistryError(_unreachable(what, self.http.base_url, exc)) from None
        if size != size_bytes:
            raise DownloadRejected(f"{noun} is {size} bytes, the cloud announced {size_bytes}")
        if digest.hexdigest() != sha256:
            raise DownloadRejected(f"{noun} does not match the sha256 the cloud announced")

    async def heartbeat(self, body: HubHeartbeat) -> None:
        # No name: left out, as ever (the hub keeps the name it had).
        data = body.model_dump(mode="json", exclude={"name"} if body.name is None else None)
        try:
            response = await self.http.post("/api/v1/hubs/heartbeat", json=data, headers=self._headers())
        except httpx.HTTPError as exc:
            raise RegistryError(_unreachable("cloud", self.http.base_url, exc)) from None
        if response.status_code != 200:
            raise RegistryError(
                f"cloud answered {response.status_code} to the heartbeat: {_detail(response)}"
            )


class SwapClient:
    """The one thing the updater asks the inference service: swap a detector to its new bundle."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def swap(self, detector_id: str) -> SwapResult:
        """Ask inference to load `current` beside the serving version and swap it in."""
        try:
            response = await self.http.post(f"/models/{detector_id}/swap")
        except httpx.HTTPError as exc:
            raise InferenceError(_unreachable("inference", self.http.base_url, exc)) from None
        if response.status_code == 422:
            raise SwapRejected(_detail(response))
        if response.status_code != 200:
            raise InferenceError(
                f"inference answered {response.status_code} to the swap: {_detail(response)}"
            )
        try:
            return SwapResult.model_validate_json(response.content)
        except ValidationError:
            raise InferenceError("inference sent a malformed swap answer") from None


class EdgeApiClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _fetch(self, path: str) -> httpx.Response:
        """A 200 answer to GET `path`; anything else is an EdgeApiError."""
        try:
            response = await self.http.get(path)
        except httpx.HTTPError as exc:
            raise EdgeApiError(_unreachable("edge-api", self.http.base_url, exc)) from None
        if response.status_code != 200:
            raise EdgeApiError(f"edge-api answered {response.status_code} to GET {path}")
        return response

    async def _get(self, path: str) -> Any:
        response = await self._fetch(path)
        try:
            return response.json()
        except ValueError:
            raise EdgeApiError(f"edge-api sent no JSON to GET {path}") from None

    async def edge_config(self) -> EdgeConfig:
        data = await self._get("/edge-config")
        try:
            return parse_edge_config(data)
        except EdgeConfigError as exc:
            raise EdgeApiError("edge config rejected: " + "; ".join(exc.errors)) from None

    async def facts(self) -> EdgeFacts:
        """The edge's id and outbox depth (edge-api's /internal/facts, which calls nobody back)."""
        response = await self._fetch(FACTS_PATH)
        try:
            return EdgeFacts.model_validate_json(response.content)
        except ValidationError:
            raise EdgeApiError(f"edge-api sent a malformed answer to GET {FACTS_PATH}") from None
