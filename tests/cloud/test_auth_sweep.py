"""Every route of the cloud API refuses callers without valid credentials, and each identity (admin,
reviewer, trainer, device) gets exactly the routes the role matrix below gives it: 403 on the others.
The routes come from the running cloud's OpenAPI document; every one must have a cell in the matrix
(a route added later fails here until someone decides who may call it), and the role dependencies the
app's route table declares must say the same as the matrix.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from cloud.app.app import create_app
from cloud.app.db.models import Role
from cloud.app.deps import (
    get_admin,
    get_device,
    get_device_or_trainer,
    get_principal,
    get_reader,
    get_reviewer,
    get_trainer,
)
from cloud.app.settings import CloudSettings
from tests.support import cloud as support
from tests.support.cloud import REVIEWER_PASSWORD, CloudServer
from tests.support.cloud_factories_worker import Tokens, private_database, seed_tokens

pytestmark = pytest.mark.in_process

# Served to anyone on purpose. Everything else must refuse an anonymous caller.
PUBLIC_PREFIXES = ("/health/", "/static/")
PUBLIC_PATHS = {"/metrics", "/login", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

# Which roles pass each role dependency (admins pass every check).
ROLE_DEPENDENCIES: dict[Callable[..., Any], frozenset[Role]] = {
    get_admin: frozenset({Role.ADMIN}),
    get_reviewer: frozenset({Role.ADMIN, Role.REVIEWER}),
    get_device: frozenset({Role.ADMIN, Role.DEVICE}),
    get_trainer: frozenset({Role.ADMIN, Role.TRAINER}),
    get_device_or_trainer: frozenset({Role.ADMIN, Role.DEVICE, Role.TRAINER}),
    get_reader: frozenset({Role.ADMIN, Role.DEVICE, Role.REVIEWER}),
}
ANY_ROLE = frozenset(Role)
LETTERS = {"A": Role.ADMIN, "R": Role.REVIEWER, "T": Role.TRAINER, "D": Role.DEVICE}

# Who may call what (the README's role table): A admin, R reviewer, T trainer, D device.
MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/device-api/v1/me"): "ATD",
    ("GET", "/device-api/v1/api-tokens/by-snippet/{snippet}"): "AD",
    ("GET", "/device-api/v1/month-to-date-account-info"): "AD",
    ("POST", "/device-api/v1/detectors"): "AD",
    ("GET", "/device-api/v1/detectors"): "AD",
    ("GET", "/device-api/v1/detectors/{detector_id}"): "AD",
    ("PATCH", "/device-api/v1/detectors/{detector_id}"): "A",
    ("DELETE", "/device-api/v1/detectors/{detector_id}"): "A",
    ("POST", "/device-api/v1/image-queries"): "AD",
    ("GET", "/device-api/v1/image-queries"): "AD",
    ("GET", "/device-api/v1/image-queries/{image_query_id}"): "AD",
    ("GET", "/device-api/v1/image-queries/{image_query_id}/image"): "AD",
    ("POST", "/device-api/v1/labels"): "AD",
    ("POST", "/api/v1/escalations"): "AD",
    ("POST", "/api/v1/escalations/batch"): "AD",
    ("GET", "/edge-api/v1/detectors/{detector_id}/prior"): "AD",
    ("POST", "/api/v1/hubs/heartbeat"): "AD",
    ("GET", "/api/v1/detectors/{detector_id}/edge-accuracy"): "ARD",
    ("GET", "/api/v1/review/queues"): "AR",
    ("POST", "/api/v1/review/claim"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/heartbeat"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/claim"): "AR",
    ("DELETE", "/api/v1/review/items/{item_id}/skip"): "AR",
    ("GET", "/api/v1/review/skipped"): "AR",
    ("PUT", "/api/v1/review/queues/{detector_id}/label-all"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/undo"): "AR",
    ("GET", "/api/v1/review/items/{item_id}/neighbours"): "AR",
    ("GET", "/api/v1/review/images/{image_query_id}"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/answer"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/skip"): "AR",
    ("POST", "/api/v1/review/items/{item_id}/release"): "AR",
    ("POST", "/api/v1/review/undo"): "AR",
    ("GET", "/api/v1/review/items/{item_id}/image"): "AR",
    ("GET", "/api/v1/review/stats"): "AR",
    ("POST", "/api/v1/detectors/{detector_id}/models"): "AT",
    ("GET", "/api/v1/detectors/{detector_id}/models"): "ARD",
    ("POST", "/api/v1/detectors/{detector_id}/models/rollback"): "A",
    ("GET", "/api/v1/models/{model_id}"): "ARD",
    ("POST", "/api/v1/models/{model_id}/promote"): "AT",
    ("DELETE", "/api/v1/models/{model_id}"): "A",
    ("GET", "/api/v1/models/{model_id}/download"): "ATD",
    ("GET", "/edge-api/v1/fetch-model-urls/{detector_id}/"): "ATD",
    ("POST", "/api/v1/models/{model_id}/reports/{name}"): "AT",
    ("GET", "/api/v1/models/{model_id}/reports"): "ARD",
    ("GET", "/api/v1/models/{model_id}/reports/{name}"): "ARD",
    ("PUT", "/api/v1/backbones/{sha256}"): "AT",
    ("GET", "/api/v1/backbones/{sha256}"): "ARTD",
    ("GET", "/api/v1/backbones/{sha256}/download"): "ATD",
    ("POST", "/api/v1/backbones/{sha256}/embeddings"): "AT",
    ("POST", "/api/v1/detectors/{detector_id}/exports"): "AT",
    ("GET", "/api/v1/exports/{export_id}"): "AT",
    ("GET", "/api/v1/exports/{export_id}/download"): "AT",
    ("POST", "/api/v1/training-jobs"): "A",
    ("GET", "/api/v1/training-jobs"): "ATD",
    ("POST", "/api/v1/training-jobs/lease"): "AT",
    ("GET", "/api/v1/training-jobs/{job_id}"): "ATD",
    ("GET", "/api/v1/training-jobs/{job_id}/logs"): "ATD",
    ("POST", "/api/v1/training-jobs/{job_id}/cancel"): "A",
    ("POST", "/api/v1/training-jobs/{job_id}/heartbeat"): "AT",
    ("POST", "/api/v1/training-jobs/{job_id}/complete"): "AT",
    ("POST", "/api/v1/training-jobs/{job_id}/fail"): "AT",
    ("GET", "/api/v1/hubs"): "A",
    ("GET", "/api/v1/hubs/{hub_id}"): "A",
    ("GET", "/api/v1/admin/users"): "A",
    ("POST", "/api/v1/admin/users"): "A",
    ("PATCH", "/api/v1/admin/users/{user_id}"): "A",
    ("POST", "/api/v1/admin/users/{user_id}/deactivate"): "A",
    ("POST", "/api/v1/admin/users/{user_id}/activate"): "A",
    ("GET", "/api/v1/admin/tokens"): "A",
    ("POST", "/api/v1/admin/tokens"): "A",
    ("POST", "/api/v1/admin/tokens/{token_id}/revoke"): "A",
    ("GET", "/api/v1/admin/detectors/deleted"): "A",
    ("POST", "/api/v1/admin/detectors/{detector_id}/restore"): "A",
    ("GET", "/api/v1/audit"): "A",
    ("GET", "/api/v1/webhooks"): "A",
    ("POST", "/api/v1/webhooks"): "A",
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): "A",
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): "A",
    ("GET", "/api/v1/alert-rules"): "A",
    ("POST", "/api/v1/detectors/{detector_id}/alert-rules"): "A",
    ("PUT", "/api/v1/alert-rules/{rule_id}"): "A",
    ("DELETE", "/api/v1/alert-rules/{rule_id}"): "A",
    ("GET", "/api/v1/notifications"): "A",
    ("POST", "/api/v1/webhook-deliveries/{delivery_id}/redeliver"): "A",
    ("POST", "/edge-api/v1/alerts/firings"): "AD",
}


def matrix_roles(method: str, path: str) -> frozenset[Role]:
    return frozenset(LETTERS[letter] for letter in MATRIX[(method, path)])


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the template, e.g. /api/v1/hubs/{hub_id}
    # Roles that get past the route's dependencies; None when it declares no credential dependency.
    roles: frozenset[Role] | None

    @property
    def url(self) -> str:
        # Path parameters are checked after the credentials, so any value that routes will do.
        return re.sub(r"\{[^}]+\}", "1", self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _roles_of(dependant: Dependant) -> frozenset[Role] | None:
    calls = set(_calls(dependant))
    roles = ANY_ROLE if get_principal in calls else None
    for call, allowed in ROLE_DEPENDENCIES.items():
        if call in calls:
            roles = allowed if roles is None else roles & allowed
    return roles


@dataclass(frozen=True)
class RouteTable:
    schema_roles: dict[tuple[str, str], frozenset[Role] | None]
    hidden: list[tuple[str, str, list[str]]]  # method, path, tags of routes left out of the OpenAPI


def route_table() -> RouteTable:
    """The roles each route's dependencies let through, from the app built in-process."""
    app = create_app(CloudSettings())
    schema_roles: dict[tuple[str, str], frozenset[Role] | None] = {}
    hidden = []
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None or not route.path_format:
            continue  # mounts and FastAPI's own documentation routes
        for method in sorted(route.methods or ()):
            if route.include_in_schema:
                schema_roles[(method, route.path_format)] = _roles_of(dependant)
            else:
                hidden.append((method, route.path_format, [str(tag) for tag in route.tags or ()]))
    return RouteTable(schema_roles, hidden)


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return route_table()


@pytest.fixture(scope="module")
def operations(cloud: CloudServer, table: RouteTable) -> list[Operation]:
    """Every operation of the running cloud's OpenAPI document that is not public."""
    with cloud.client(token=None) as http:
        document = http.get("/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete") and not is_public(path):
                key = (method.upper(), path)
                found.append(Operation(key[0], path, table.schema_roles.get(key)))
    assert found, "the OpenAPI document lists no protected operation"
    return found


def call(http: httpx.Client, op: Operation) -> httpx.Response:
    return http.request(op.method, op.url)


def refused_anonymously(resp: httpx.Response) -> bool:
    return resp.status_code == 401 and bool(resp.json().get("detail"))


def sweep(http: httpx.Client, ops: list[Operation], expected: Callable[[httpx.Response], bool]) -> list[str]:
    failures = []
    for op in ops:
        resp = call(http, op)
        if not expected(resp):
            failures.append(f"{op} -> {resp.status_code} {resp.text[:200]}")
    return failures


def test_the_sweep_knows_every_operation_the_cloud_documents(
    operations: list[Operation], table: RouteTable
) -> None:
    """The in-process route table is the app the server runs; nothing is left without a role verdict."""
    unknown = [str(op) for op in operations if (op.method, op.path) not in table.schema_roles]
    assert not unknown, f"documented by the server but not in the app's route table: {unknown}"
    admin_only = {op.path for op in operations if op.roles == frozenset({Role.ADMIN})}
    assert {"/api/v1/admin/users", "/api/v1/hubs"} <= admin_only


def test_only_web_pages_are_left_out_of_the_openapi_document(table: RouteTable) -> None:
    """An API route hidden from the document would escape this sweep."""
    escaped = [f"{m} {p}" for m, p, tags in table.hidden if "web" not in tags and not is_public(p)]
    assert not escaped, f"hidden from /openapi.json, so not swept: {escaped}"


def test_every_protected_route_refuses_a_caller_without_credentials(
    cloud: CloudServer, operations: list[Operation]
) -> None:
    with cloud.client(token=None) as anonymous:
        failures = sweep(anonymous, operations, refused_anonymously)
    assert not failures, "answered without credentials:\n" + "\n".join(failures)


def test_every_protected_route_refuses_an_unknown_token(
    cloud: CloudServer, operations: list[Operation]
) -> None:
    with cloud.client("io_" + secrets.token_urlsafe(32)) as stranger:
        failures = sweep(stranger, operations, refused_anonymously)
    assert not failures, "answered an unknown token:\n" + "\n".join(failures)


def test_every_protected_route_declares_who_may_call_it(operations: list[Operation]) -> None:
    """A route that is not public must depend on the caller (PrincipalDep or a role alias)."""
    undeclared = [str(op) for op in operations if op.roles is None]
    assert not undeclared, f"no credential dependency: {undeclared}"


def test_every_documented_route_has_a_cell_in_the_role_matrix(operations: list[Operation]) -> None:
    documented = {(op.method, op.path) for op in operations}
    missing = sorted(f"{m} {p}" for m, p in documented - set(MATRIX))
    stale = sorted(f"{m} {p}" for m, p in set(MATRIX) - documented)
    assert not missing, f"no cell in MATRIX (decide who may call them): {missing}"
    assert not stale, f"MATRIX names routes the cloud no longer documents: {stale}"


def test_the_route_dependencies_say_what_the_matrix_says(operations: list[Operation]) -> None:
    """A role dependency this file does not know reads as `any role` and fails here."""
    differ = [
        f"{op}: dependencies {sorted(r.value for r in op.roles or ())}, "
        f"matrix {sorted(r.value for r in matrix_roles(op.method, op.path))}"
        for op in operations
        if (op.method, op.path) in MATRIX and op.roles != matrix_roles(op.method, op.path)
    ]
    assert not differ, "\n".join(differ)


def served(resp: httpx.Response) -> bool:
    """Past the credential check: whatever the route makes of a request with placeholder values."""
    return resp.status_code not in (401, 403)


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.TRAINER, Role.DEVICE, Role.ADMIN])
def test_each_role_gets_its_routes_and_a_403_on_every_other(
    cloud: CloudServer, operations: list[Operation], tokens: Tokens, role: Role
) -> None:
    cells = [op for op in operations if (op.method, op.path) in MATRIX]
    assert len(cells) == len(operations)  # every route is swept (the test above names any that is not)
    closed = [op for op in cells if role not in matrix_roles(op.method, op.path)]
    opened = [op for op in cells if role in matrix_roles(op.method, op.path)]
    assert opened and (closed or role is Role.ADMIN)
    with cloud.client(tokens.of(role)) as caller:
        failures = sweep(caller, closed, lambda resp: resp.status_code == 403)
        failures += [f"refused: {f}" for f in sweep(caller, opened, served)]
    assert not failures, f"as a {role.value}:\n" + "\n".join(failures)


def test_admin_routes_refuse_a_reviewer_signed_in_with_a_browser_session(
    cloud: CloudServer, operations: list[Operation], table: RouteTable
) -> None:
    routes = set(table.schema_roles) | {(method, path) for method, path, _ in table.hidden}
    # The browser login is part of the cloud: without it this sweep would prove nothing.
    assert ("POST", "/login") in routes
    admin_only = [op for op in operations if op.roles == frozenset({Role.ADMIN})]
    browser = cloud.login("reviewer", REVIEWER_PASSWORD)
    try:
        failures = sweep(browser, admin_only, lambda resp: resp.status_code == 403)
    finally:
        browser.close()
    assert not failures, "served a reviewer's session:\n" + "\n".join(failures)
