"""Composition root of the updater: settings → HTTP clients → installer → poller → schedule, plus a
small HTTP side (`/health/live`, `/health/ready`, `/status`, `/metrics`) that edge-api's /status
includes. Status and metrics answer the edge's own services only (the internal token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from common.body_limits import BodyLimits, limit_bodies
from common.http import RequestLogMiddleware
from common.internal_auth import InternalOnly, internal_headers
from common.wire.updater_status import UpdaterStatus
from edge.updater.backbones import SharedBackbones
from edge.updater.clients import EdgeApiClient, RegistryClient, SwapClient
from edge.updater.core import DetectorPoller
from edge.updater.installer import Installer
from edge.updater.metrics import UpdaterMetrics
from edge.updater.runner import Updater
from edge.updater.settings import UpdaterSettings


def _client(
    base_url: str,
    timeout_s: float,
    transport: httpx.AsyncBaseTransport | None,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not intercept the edge's own hops.
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        transport=transport,
        headers=headers,
        trust_env=False,
    )


def create_app(
    settings: UpdaterSettings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    settings = settings or UpdaterSettings()
    internal_token = settings.resolved_internal_token()
    # Inference and edge-api answer the edge's own services only: they see the internal token.
    own = internal_headers(internal_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            cloud = await stack.enter_async_context(
                _client(settings.cloud_url, settings.cloud_timeout_s, transport)
            )
            inference = await stack.enter_async_context(
                _client(settings.inference_url, settings.swap_timeout_s, transport, own)
            )
            edge_api = await stack.enter_async_context(
                _client(settings.edge_api_url, settings.edge_api_timeout_s, transport, own)
            )
            installer = Installer(settings.model_root, keep=settings.keep_versions)
            await asyncio.to_thread(installer.clean_leftovers)
            registry = RegistryClient(cloud, settings.token, settings.download_timeout_s)
            backbones = SharedBackbones(registry, installer, app.state.metrics)
            updater = Updater(
                settings,
                DetectorPoller(registry, SwapClient(inference), installer, backbones),
                registry,
                EdgeApiClient(edge_api),
                installer,
                app.state.metrics,
            )
            app.state.updater = updater
            updater.start()
            try:
                yield
            finally:
                await updater.stop()

    app = FastAPI(title="IntelliOptics model updater", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = UpdaterMetrics()
    app.state.internal_token = internal_token

    @app.get("/health/live", operation_id="live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", operation_id="ready")
    async def ready(request: Request) -> Response:
        updater: Updater = request.app.state.updater
        if not updater.ready:
            detail = updater.config_error or "no edge config yet"
            return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/status", operation_id="status", dependencies=[InternalOnly])
    async def status(request: Request) -> UpdaterStatus:
        updater: Updater = request.app.state.updater
        backbones = await asyncio.to_thread(updater.installer.installed_backbones)
        return updater.snapshot(backbones)

    @app.get("/metrics", operation_id="metrics", dependencies=[InternalOnly])
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestLogMiddleware, service="updater")
    # GET routes only: any body is small, and it must arrive at once.
    limit_bodies(app, BodyLimits(max_bytes=64 * 1024, timeout_s=10.0))
    return app
