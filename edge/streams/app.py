"""Composition root of the streams service: config poller → supervisor → workers, plus a small HTTP
side (`/health/live`, `/health/ready`, `/status`, `/metrics`) that edge-api's /status includes.
Status and metrics answer the edge's own services only (the internal token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from common.body_limits import BodyLimits, limit_bodies
from common.http import RequestLogMiddleware
from common.internal_auth import InternalOnly
from common.wire.streams_status import StreamsConfigStatus, StreamsStatus
from edge.streams.metrics import new_registry
from edge.streams.settings import StreamsSettings
from edge.streams.supervisor import CONFIG_PATH, ConfigPoller, StreamSupervisor
from edge.streams.worker import EdgeClient


def create_app(settings: StreamsSettings | None = None) -> FastAPI:
    settings = settings or StreamsSettings()
    internal_token = settings.resolved_internal_token()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = EdgeClient(
            settings.frames_url, settings.submit_timeout_s, settings.api_token, internal_token
        )
        supervisor = StreamSupervisor(client, settings.jpeg_quality)
        poller = ConfigPoller(supervisor, settings.edge_api_url, settings.config_poll_s, internal_token)
        app.state.supervisor = supervisor
        app.state.poller = poller
        app.state.registry = new_registry(supervisor, poller)
        app.state.started_at = time.time()
        poller.start()
        try:
            yield
        finally:
            await poller.stop()
            await asyncio.to_thread(supervisor.stop_all)
            client.close()

    app = FastAPI(title="IntelliOptics stream ingest", version="0.1.0", lifespan=lifespan)
    app.state.internal_token = internal_token

    @app.get("/health/live", operation_id="live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", operation_id="ready")
    async def ready(request: Request) -> Response:
        poller: ConfigPoller = request.app.state.poller
        if poller.applied_at is None:
            return JSONResponse(
                {"status": "not ready", "detail": poller.error or "no edge config yet"}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    @app.get("/status", operation_id="status", dependencies=[InternalOnly])
    async def status(request: Request) -> StreamsStatus:
        poller: ConfigPoller = request.app.state.poller
        supervisor: StreamSupervisor = request.app.state.supervisor
        return StreamsStatus(
            uptime_s=round(time.time() - request.app.state.started_at, 1),
            submit_url=settings.frames_url,
            config=StreamsConfigStatus(
                source=f"{poller.url}{CONFIG_PATH}",
                fetched_at=poller.fetched_at,
                applied_at=poller.applied_at,
                error=poller.error,
            ),
            streams=supervisor.snapshot(),
        )

    @app.get("/metrics", operation_id="metrics", dependencies=[InternalOnly])
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestLogMiddleware, service="streams")
    # GET routes only: any body is small, and it must arrive at once.
    limit_bodies(app, BodyLimits(max_bytes=64 * 1024, timeout_s=10.0))
    return app
