"""Every route of every edge service, called by every kind of caller, answers as README's "Edge
security" matrix says.

The routes come from each app's own OpenAPI document; the sweep fails on a route the matrix below does
not list (or lists but the app lacks), so a route added later cannot escape it. The declared check of
each route (its dependencies) must agree with the matrix too. The apps run in-process with their
lifespans; edge-api's cloud is a mock transport that knows one device and one admin token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from common.internal_auth import require_internal
from edge.api.app import create_app as create_edge_api
from edge.api.auth.local_tokens import add_token
from edge.api.auth.principal import Access
from edge.api.deps import ACCESS_DEPENDENCIES
from edge.api.settings import EdgeSettings
from edge.inference.app import create_app as create_inference
from edge.inference.settings import InferenceSettings
from edge.streams.app import create_app as create_streams
from edge.streams.settings import StreamsSettings
from edge.updater.app import create_app as create_updater
from edge.updater.settings import UpdaterSettings
from launcher.processes import free_port
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FAKE_ADMIN_TOKEN, me_body
from tests.support.stack import ADMIN_TOKEN, INTERNAL_TOKEN

OPEN = "open"
LOCAL_TOKEN = "io_localdevicetoken_" + "e" * 24
WRONG_TOKEN = "io_nobodyknowsthis_" + "f" * 24
TRAINER_TOKEN = "io_cloudtrainertok_" + "a" * 24  # the cloud knows it: role trainer
REVIEWER_TOKEN = "io_cloudreviewertk_" + "b" * 24  # the cloud refuses it on /me (403), as it does


class Caller(StrEnum):
    NONE = "no token"
    WRONG = "wrong token"
    DEVICE = "device token (cloud)"
    LOCAL = "device token (local file)"
    ADMIN = "edge admin token"
    CLOUD_ADMIN = "cloud admin token"
    TRAINER = "cloud trainer token"
    REVIEWER = "cloud reviewer token"
    INTERNAL = "internal token"


HEADERS: dict[Caller, dict[str, str]] = {
    Caller.NONE: {},
    Caller.WRONG: {"x-api-token": WRONG_TOKEN, "x-internal-token": "not-the-internal-token"},
    Caller.DEVICE: {"x-api-token": DEVICE_TOKEN},
    Caller.LOCAL: {"x-api-token": LOCAL_TOKEN},
    Caller.ADMIN: {"x-api-token": ADMIN_TOKEN},
    Caller.CLOUD_ADMIN: {"x-api-token": FAKE_ADMIN_TOKEN},
    Caller.TRAINER: {"x-api-token": TRAINER_TOKEN},
    Caller.REVIEWER: {"x-api-token": REVIEWER_TOKEN},
    Caller.INTERNAL: {"x-internal-token": INTERNAL_TOKEN},
}

# The matrix (README "Edge security"): what each route needs.
EDGE_API_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("POST", "/device-api/v1/image-queries"): Access.DEVICE,
    ("GET", "/device-api/v1/image-queries/{image_query_id}"): Access.DEVICE,
    ("GET", "/device-api/v1/detectors/{detector_id}"): Access.DEVICE,
    ("GET", "/device-api/v1/api-tokens/by-snippet/{snippet}"): Access.DEVICE,
    ("GET", "/device-api/v1/me"): Access.DEVICE,
    ("GET", "/edge-detector-readiness"): Access.DEVICE,
    ("GET", "/edge-info"): Access.DEVICE,
    ("GET", "/edge-config"): Access.OPERATOR,
    ("PUT", "/edge-config"): Access.OPERATOR,
    ("GET", "/status"): Access.OPERATOR,
    ("GET", "/metrics"): Access.OPERATOR,
    ("POST", "/outbox/redrive"): Access.OPERATOR,
    ("GET", "/internal/edge-config"): Access.INTERNAL,
    ("GET", "/internal/facts"): Access.INTERNAL,
}
INFERENCE_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("POST", "/infer"): Access.INTERNAL,
    ("GET", "/models"): Access.INTERNAL,
    ("GET", "/models/{detector_id}"): Access.INTERNAL,
    ("POST", "/models/{detector_id}/swap"): Access.INTERNAL,
    ("GET", "/metrics"): Access.INTERNAL,
}
SIDE_SERVICE_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("GET", "/status"): Access.INTERNAL,
    ("GET", "/metrics"): Access.INTERNAL,
}

ALLOWED = "allowed"
# edge-api tells known callers without the right apart (403) from unknown ones (401); the internal
# services know only the internal token, so every other caller is unknown to them (401).
EDGE_API_CELLS: dict[str, dict[Caller, int | str]] = {
    OPEN: dict.fromkeys(Caller, ALLOWED),
    Access.DEVICE: {
        Caller.NONE: 401,
        Caller.WRONG: 401,
        Caller.TRAINER: 403,
        Caller.REVIEWER: 403,
        **dict.fromkeys(
            (Caller.DEVICE, Caller.LOCAL, Caller.ADMIN, Caller.CLOUD_ADMIN, Caller.INTERNAL), ALLOWED
        ),
    },
    Access.OPERATOR: {
        Caller.NONE: 401,
        Caller.WRONG: 401,
        Caller.DEVICE: 403,
        Caller.LOCAL: 403,
        Caller.TRAINER: 403,
        Caller.REVIEWER: 403,
        Caller.ADMIN: ALLOWED,
        Caller.CLOUD_ADMIN: ALLOWED,
        Caller.INTERNAL: ALLOWED,
    },
    Access.INTERNAL: {
        Caller.NONE: 401,
        Caller.WRONG: 401,
        **dict.fromkeys(
            (Caller.DEVICE, Caller.LOCAL, Caller.ADMIN, Caller.CLOUD_ADMIN, Caller.TRAINER, Caller.REVIEWER),
            403,
        ),
        Caller.INTERNAL: ALLOWED,
    },
}
INTERNAL_SERVICE_CELLS: dict[str, dict[Caller, int | str]] = {
    OPEN: dict.fromkeys(Caller, ALLOWED),
    Access.INTERNAL: {**dict.fromkeys(Caller, 401), Caller.INTERNAL: ALLOWED},
}


def cloud_transport() -> httpx.MockTransport:
    """The cloud as edge-api's token check sees it; everything else is down."""
    known = {
        DEVICE_TOKEN: me_body("device"),
        FAKE_ADMIN_TOKEN: me_body("admin", admin=True),
        TRAINER_TOKEN: {**me_body("trainer"), "role": "trainer"},
    }

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/device-api/v1/me":
            if request.headers.get("x-api-token") == REVIEWER_TOKEN:
                return httpx.Response(403, json={"detail": "this route needs the device role"})
            body = known.get(request.headers.get("x-api-token", ""))
            return httpx.Response(200, json=body) if body else httpx.Response(401, json={"detail": "no"})
        return httpx.Response(503, json={"detail": "down"})

    return httpx.MockTransport(handle)


@dataclass
class Service:
    name: str
    app: FastAPI
    routes: dict[tuple[str, str], str]
    cells: dict[str, dict[Caller, int | str]]
    declared: Callable[[Dependant], str]


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def edge_api_access(dependant: Dependant) -> str:
    found = {ACCESS_DEPENDENCIES[c] for c in _calls(dependant) if c in ACCESS_DEPENDENCIES}
    assert len(found) <= 1, found
    return found.pop() if found else OPEN


def internal_access(dependant: Dependant) -> str:
    return Access.INTERNAL if require_internal in set(_calls(dependant)) else OPEN


@dataclass
class Running:
    service: Service
    client: httpx.AsyncClient


def build_services(work: Path) -> list[Service]:
    dead = f"http://127.0.0.1:{free_port()}"
    internal = {"INTELLIOPTICS_INTERNAL_TOKEN": INTERNAL_TOKEN}
    (work / "edge-config.yaml").write_text("detectors: []\n")
    edge_data = work / "edge-data"
    add_token(edge_data / "tokens.json", LOCAL_TOKEN, "sweep-camera")
    edge_settings = EdgeSettings(
        data_dir=edge_data,
        config_path=work / "edge-config.yaml",
        inference_url=dead,
        cloud_url="http://cloud.invalid",
        streams_url="",
        updater_url="",
        admin_token=ADMIN_TOKEN,
        **internal,  # type: ignore[arg-type]
    )
    (work / "models").mkdir(exist_ok=True)
    return [
        Service(
            "edge-api",
            create_edge_api(edge_settings, cloud_transport=cloud_transport()),
            EDGE_API_ROUTES,
            EDGE_API_CELLS,
            edge_api_access,
        ),
        Service(
            "inference",
            create_inference(InferenceSettings(model_root=work / "models", worker_threads=1, **internal)),  # type: ignore[arg-type]
            INFERENCE_ROUTES,
            INTERNAL_SERVICE_CELLS,
            internal_access,
        ),
        Service(
            "updater",
            create_updater(
                UpdaterSettings(cloud_url=dead, edge_api_url=dead, model_root=work / "models", **internal),  # type: ignore[arg-type]
                transport=httpx.MockTransport(lambda r: httpx.Response(503)),
            ),
            SIDE_SERVICE_ROUTES,
            INTERNAL_SERVICE_CELLS,
            internal_access,
        ),
        Service(
            "streams",
            create_streams(StreamsSettings(edge_api_url=dead, **internal)),  # type: ignore[arg-type]
            SIDE_SERVICE_ROUTES,
            INTERNAL_SERVICE_CELLS,
            internal_access,
        ),
    ]


@asynccontextmanager
async def running(services: list[Service]) -> AsyncIterator[list[Running]]:
    """Each app with its lifespan entered, behind an in-process client."""
    async with AsyncExitStack() as stack:
        out = []
        for service in services:
            await stack.enter_async_context(service.app.router.lifespan_context(service.app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=service.app, raise_app_exceptions=False),
                base_url="http://edge.test",
            )
            out.append(Running(service, await stack.enter_async_context(client)))
        yield out


@pytest.fixture
def services(tmp_path: Path) -> list[Service]:
    return build_services(tmp_path)


def documented_operations(app: FastAPI) -> set[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return {
        (m.upper(), p)
        for p, item in paths.items()
        for m in item
        if m in ("get", "post", "put", "patch", "delete")
    }


def test_the_matrix_lists_exactly_the_routes_each_service_documents(services: list[Service]) -> None:
    for service in services:
        assert documented_operations(service.app) == set(service.routes), service.name


def test_no_route_is_hidden_from_the_openapi_document(services: list[Service]) -> None:
    """A route left out of the document would escape the sweep."""
    docs = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    for service in services:
        hidden = [
            (sorted(r.methods or ()), r.path_format)
            for r in iter_route_contexts(service.app.routes)
            if not r.include_in_schema and r.path_format not in docs
        ]
        assert not hidden, f"{service.name}: {hidden}"


def test_each_route_declares_the_check_the_matrix_gives_it(services: list[Service]) -> None:
    for service in services:
        declared = {
            (method, route.path_format): service.declared(route.dependant)
            for route in iter_route_contexts(service.app.routes)
            if getattr(route, "dependant", None) is not None
            for method in route.methods or ()
        }
        assert declared == service.routes, service.name


def url_of(path: str) -> str:
    # Path parameters are read after the credentials: any value that routes will do.
    return re.sub(r"\{[^}]+\}", "1", path)


def outcome(response: httpx.Response) -> int | str:
    return response.status_code if response.status_code in (401, 403) else ALLOWED


async def test_every_cell_of_the_matrix(services: list[Service]) -> None:
    """Every route × every caller, each cell checked (status and a clear JSON detail on refusals)."""
    failures = []
    cells = 0
    async with running(services) as apps:
        for caller in Caller:
            for app in apps:
                for (method, path), access in app.service.routes.items():
                    want = app.service.cells[access][caller]
                    response = await app.client.request(method, url_of(path), headers=HEADERS[caller])
                    got = outcome(response)
                    cells += 1
                    where = f"{caller.value} -> {app.service.name} {method} {path}"
                    if got != want:
                        failures.append(f"{where}: {response.status_code} {response.text[:120]}, want {want}")
                    elif got != ALLOWED:
                        detail = response.json().get("detail")
                        if not isinstance(detail, str) or not detail or "Traceback" in detail:
                            failures.append(f"{where}: refusal without a clear detail")
    assert cells == len(Caller) * sum(len(s.routes) for s in services)
    assert not failures, "\n".join(failures)


async def test_the_edge_admin_token_file_is_made_at_first_start_and_kept(tmp_path: Path) -> None:
    """Without EDGE_ADMIN_TOKEN the edge writes one operator token to its data directory (0600)."""
    (tmp_path / "edge-config.yaml").write_text("detectors: []\n")
    settings = EdgeSettings(
        data_dir=tmp_path / "data",
        config_path=tmp_path / "edge-config.yaml",
        inference_url=f"http://127.0.0.1:{free_port()}",
        streams_url="",
        updater_url="",
        INTELLIOPTICS_INTERNAL_TOKEN=INTERNAL_TOKEN,  # type: ignore[call-arg]
    )
    first = Service(
        "edge-api", create_edge_api(settings, cloud_transport=cloud_transport()), {}, {}, edge_api_access
    )
    async with running([first]) as (app,):
        token = settings.admin_token_path.read_text().strip()
        assert token.startswith("io_edgeadmin_") and len(token) >= 40
        assert oct(settings.admin_token_path.stat().st_mode & 0o777) == "0o600"
        assert (await app.client.get("/status", headers={"x-api-token": token})).status_code == 200
        assert (await app.client.get("/status", headers={"x-api-token": DEVICE_TOKEN})).status_code == 403
    create_edge_api(settings, cloud_transport=cloud_transport())
    assert settings.admin_token_path.read_text().strip() == token
