"""Composition root of edge-api: settings → store, clients, services, authenticator → routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from common.body_limits import BodyLimits, limit_bodies
from common.http import FastPathApp, RequestLogMiddleware, install_error_handlers
from common.internal_auth import internal_headers
from edge.api.alerts.firing_sender import FiringSender
from edge.api.alerts.watcher import AlertWatcher
from edge.api.auth.admin_token import resolve_admin_token
from edge.api.auth.authenticator import Authenticator
from edge.api.auth.cloud_check import CloudTokenCheck
from edge.api.auth.local_tokens import LocalTokenBook
from edge.api.auth.verdicts import VerdictCache
from edge.api.core.config_store import ConfigStore
from edge.api.core.detectors import DetectorDirectory
from edge.api.core.image_queries import ImageQueryService
from edge.api.core.inference_client import InferenceClient, new_session
from edge.api.core.peers import Peers
from edge.api.core.priors import PriorBook
from edge.api.core.store import EdgeStore
from edge.api.deps import EdgeState
from edge.api.errors import ERROR_RESPONSES
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.person_answers import PersonAnswers
from edge.api.escalation.sender import CloudProbe, OutboxSender
from edge.api.metrics import EdgeMetrics
from edge.api.routes import account, detectors, edge_config, health, image_queries, outbox
from edge.api.settings import EdgeSettings

DB_FILE = "edge.sqlite3"


def create_app(
    settings: EdgeSettings | None = None,
    cloud_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The cloud transport is injectable so tests can point the cloud link anywhere without patching."""
    settings = settings or EdgeSettings()
    metrics = EdgeMetrics()
    internal_token = settings.resolved_internal_token()
    admin_token = resolve_admin_token(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = EdgeStore(settings.data_dir / DB_FILE)
        await store.open()
        inference_http = new_session(
            settings.inference_url, settings.inference_timeout_s, internal_headers(internal_token)
        )
        cloud_http = httpx.AsyncClient(
            base_url=settings.cloud_url,
            timeout=httpx.Timeout(settings.cloud_timeout_s, connect=3.0),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            transport=cloud_transport,
        )
        link = CloudLink(settings.cloud_url)
        sender = OutboxSender(
            store,
            cloud_http,
            link,
            metrics,
            api_token=settings.api_token,
            retry_base_s=settings.outbox_retry_base_s,
            retry_max_s=settings.outbox_retry_max_s,
            concurrency=settings.outbox_concurrency,
            alarm_depth=settings.outbox_alarm_depth,
            batch=settings.outbox_batch,
        )
        probe = CloudProbe(cloud_http, link, metrics, settings.cloud_probe_interval_s)
        inference = InferenceClient(inference_http)
        config = ConfigStore(settings.config_path, settings.data_dir)
        directory = DetectorDirectory(inference, settings.detector_info_ttl_s)
        priors = PriorBook(
            store,
            cloud_http,
            link,
            settings.api_token,
            ttl_s=settings.prior_ttl_s,
            wait_s=settings.prior_wait_s,
            retry_s=settings.prior_retry_s,
            timeout_s=settings.prior_timeout_s,
        )
        await priors.load()
        firing_sender = FiringSender(
            store,
            cloud_http,
            link,
            metrics,
            api_token=settings.api_token,
            edge_id=settings.edge_id,
            retry_base_s=settings.outbox_retry_base_s,
            retry_max_s=settings.outbox_retry_max_s,
        )
        verdicts = VerdictCache(store, settings.token_cache_size)
        await verdicts.load()
        auth = Authenticator(
            internal_token=internal_token,
            admin_token=admin_token,
            local=LocalTokenBook(settings.local_tokens_path),
            cache=verdicts,
            cloud=CloudTokenCheck(cloud_http, settings.token_verify_timeout_s),
            ttl_s=settings.token_ttl_s,
            negative_ttl_s=settings.token_negative_ttl_s,
        )
        app.state.edge = EdgeState(
            settings=settings,
            store=store,
            config=config,
            inference=inference,
            directory=directory,
            image_queries=ImageQueryService(
                store,
                config,
                directory,
                inference,
                on_escalation=sender.wake,
                metrics=metrics,
                limits=settings.image_limits,
                edge_id=settings.edge_id,
                person_answers=PersonAnswers(
                    cloud_http, link, settings.api_token, settings.cloud_answer_timeout_s
                ),
                priors=priors,
                alerts=AlertWatcher(store, priors, metrics, on_firing=firing_sender.wake),
            ),
            priors=priors,
            metrics=metrics,
            cloud=link,
            outbox=sender,
            alert_sender=firing_sender,
            started_at=time.time(),
            auth=auth,
            internal_token=internal_token,
            peers=Peers.open(settings, internal_token),
        )
        sender.start()
        firing_sender.start()
        probe.start()
        priors.prefetch_configured(config.config)
        try:
            yield
        finally:
            await app.state.edge.peers.close()
            await auth.close()
            await sender.stop()
            await firing_sender.stop()
            await probe.stop()
            await priors.close()
            await inference_http.close()
            await cloud_http.aclose()
            await store.close()

    app = FastPathApp(title="IntelliOptics edge API", version="0.1.0", lifespan=lifespan)
    for module in (image_queries, detectors, account, edge_config, health, outbox):
        app.include_router(module.router)
    install_error_handlers(app, ERROR_RESPONSES)
    app.add_middleware(RequestLogMiddleware, service="edge-api")
    app.add_fast_path(
        "POST", image_queries.SUBMIT_PATH, image_queries.submit_endpoint, ERROR_RESPONSES, service="edge-api"
    )
    # Last: it wraps the fast path too. An image plus room for the query string's worth of headers.
    limit_bodies(
        app, BodyLimits(max_bytes=settings.max_image_bytes + 1024**2, timeout_s=settings.body_timeout_s)
    )
    return app
