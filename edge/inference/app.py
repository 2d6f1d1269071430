"""Composition root of the inference service: settings → metrics → service → routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.responses import Response

from common.body_limits import BodyLimits, limit_bodies
from common.http import FastPathApp, RequestLogMiddleware, install_error_handlers, json_error
from common.imaging import ImageError
from common.internal_auth import InternalTokenRefused, guard_plain
from edge.inference.metrics import InferenceMetrics
from edge.inference.routes import INFER_PATH, infer_endpoint, router
from edge.inference.routes_models import router as models_router
from edge.inference.service import (
    InferenceService,
    InvalidDetectorIdError,
    ModelLoadError,
    ModelNotFoundError,
)
from edge.inference.settings import InferenceSettings


def _image_error(exc: Exception) -> Response:
    status = exc.status if isinstance(exc, ImageError) else 400
    return json_error(status, str(exc))


ERROR_STATUS: dict[type[Exception], Callable[[Exception], Response]] = {
    ImageError: _image_error,
    InvalidDetectorIdError: lambda exc: json_error(400, str(exc)),
    ModelNotFoundError: lambda exc: json_error(404, str(exc)),
    ModelLoadError: lambda exc: json_error(503, f"model could not be loaded: {exc}"),
    InternalTokenRefused: lambda exc: json_error(401, str(exc)),
}


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    service = InferenceService(
        model_root=settings.model_root,
        limits=settings.image_limits,
        metrics=InferenceMetrics(),
        provider_preference=settings.provider,
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        worker_threads=settings.worker_threads,
        intra_op_threads=settings.intra_op_threads,
        verify_on_load=settings.verify_on_load,
        max_batch=settings.max_batch,
        embedding_cache_entries=settings.embedding_cache_entries,
        embedding_cache_ttl_s=settings.embedding_cache_ttl_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastPathApp(title="IntelliOptics inference", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.internal_token = internal_token = settings.resolved_internal_token()
    app.include_router(router)
    app.include_router(models_router)
    install_error_handlers(app, ERROR_STATUS)
    app.add_middleware(RequestLogMiddleware, service="inference")
    app.add_fast_path(
        "POST", INFER_PATH, guard_plain(infer_endpoint, internal_token), ERROR_STATUS, service="inference"
    )
    limit_bodies(
        app, BodyLimits(max_bytes=settings.max_image_bytes + 1024**2, timeout_s=settings.body_timeout_s)
    )
    return app
