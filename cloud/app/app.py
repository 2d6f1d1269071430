"""Composition root of the cloud API: settings → engine, blob store, login gate, model copies → routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cloud.app.auth import SESSION_COOKIE, forget_all
from cloud.app.blobstore import make_blob_store
from cloud.app.core.backbones import LocalBackbones, model_root
from cloud.app.core.model_answers import CloudModelCache
from cloud.app.core.registry import InstalledBundles
from cloud.app.core.web_sessions import LoginGate
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.deps import CloudState
from cloud.app.errors import ERROR_RESPONSES
from cloud.app.routes import (
    admin,
    alerts,
    backbones,
    device_account,
    device_detectors,
    device_image_queries,
    device_labels,
    edge_accuracy,
    escalations,
    exports,
    health,
    hubs,
    model_reports,
    models,
    priors,
    review,
    training_jobs,
    web,
    web_admin,
    web_alerts,
    web_training,
)
from cloud.app.settings import CloudSettings
from cloud.app.web.pages import install_page_errors
from cloud.app.web.same_origin import SameOriginGuard
from cloud.app.web.security_headers import SecurityHeaders
from common.body_limits import BodyLimitMiddleware, BodyLimits, rule
from common.bundle_archive import MAX_ARCHIVE_BYTES
from common.http import RequestLogMiddleware, install_error_handlers

STATIC_DIR = Path(__file__).parent / "web" / "static"

ROUTERS = (
    device_account,
    device_detectors,
    device_image_queries,
    device_labels,
    escalations,
    edge_accuracy,
    review,
    models,
    backbones,
    priors,
    model_reports,
    exports,
    hubs,
    admin,
    alerts,
    training_jobs,
    health,
    web,
    web_training,
    web_admin,
    web_alerts,
)


def create_app(settings: CloudSettings | None = None) -> FastAPI:
    """The schema must already be migrated (`cloud.app.prestart` does it before serving)."""
    settings = settings or CloudSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.async_database_url)
        blobs = make_blob_store(settings)
        backbones = LocalBackbones.for_settings(settings)
        state = CloudState(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            blobs=blobs,
            login_gate=LoginGate.for_settings(settings),
            backbones=backbones,
            bundles=InstalledBundles(model_root(settings), backbones),
            model_cache=CloudModelCache(settings.model_cache_size, backbones.store, backbones.pool),
        )
        app.state.cloud = state
        forget_all()
        try:
            yield
        finally:
            state.login_gate.close()
            state.model_cache.clear()
            await blobs.close()
            await engine.dispose()

    app = FastAPI(title="IntelliOptics cloud API", version="0.1.0", lifespan=lifespan)
    for module in ROUTERS:
        app.include_router(module.router)
    STATIC_DIR.mkdir(parents=True, exist_ok=True)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_error_handlers(app, ERROR_RESPONSES)
    install_page_errors(app)
    # Outermost last: request log → security headers → body limits → same-origin check → routes.
    app.add_middleware(SameOriginGuard, public_url=settings.public_url, session_cookie=SESSION_COOKIE)
    app.add_middleware(BodyLimitMiddleware, limits=body_limits(settings))
    app.add_middleware(SecurityHeaders, https=settings.public_url.lower().startswith("https://"))
    app.add_middleware(RequestLogMiddleware, service="cloud-api")
    return app


# Room for multipart framing and the small form fields beside a file.
_FRAMING_BYTES = 1024 * 1024


def body_limits(settings: CloudSettings) -> BodyLimits:
    """Bodies up to an image (with its escalation form) everywhere; the upload routes get room for a
    model bundle, a backbone or a batch of embeddings, and the longer upload deadline."""
    upload_s = settings.upload_timeout_s
    backbone_bytes = max(settings.max_backbone_bytes, settings.max_embeddings_upload_bytes)
    return BodyLimits(
        max_bytes=settings.max_image_bytes + _FRAMING_BYTES,
        timeout_s=settings.body_timeout_s,
        rules=(
            rule(r"/api/v1/detectors/[^/]+/models", MAX_ARCHIVE_BYTES + _FRAMING_BYTES, upload_s),
            rule(r"/api/v1/backbones(/.*)?", backbone_bytes + _FRAMING_BYTES, upload_s),
        ),
    )
