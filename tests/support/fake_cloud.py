"""A small cloud upstream for edge tests: records what reaches it, stores escalations idempotently.

It honours the contract the edge relies on (`GET /device-api/v1/me`: 200 for the tokens in `tokens`,
DEVICE_TOKEN and FAKE_ADMIN_TOKEN to start with, else 401; `POST /api/v1/escalations` and
`/api/v1/escalations/batch` idempotent on image_query_id;
`GET /device-api/v1/image-queries/{id}` with the answer a test sets in `answers`;
`GET /edge-api/v1/detectors/{id}/prior` with the prior a test sets in `priors`, else 404;
`POST /edge-api/v1/alerts/firings` idempotent on firing_id, refusing the rules in `refused_rules`;
`GET /edge-api/v1/fetch-model-urls/{id}/` with ETag and 304 for the model a test publishes, whose
archive and shared backbone it serves as blobs) and records fallback traffic from nginx.
It runs in a thread so tests can read what it received, and can be stopped and restarted on the
same port to simulate outages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.backbone import BackboneRef
from common.bundle import DetectorMode
from common.bundle_archive import sha256_of
from common.wire.alerts import AlertCondition, AlertFiringAck, AlertFiringBatch, AlertRule, FiringRefusal
from common.wire.model_registry import BackboneFetchInfo, ModelFetchInfo
from tests.support.cloud import DEVICE_TOKEN
from tests.support.thread_server import ThreadServer

# A token the fake cloud knows as an admin's (the edge makes such a caller an edge operator).
FAKE_ADMIN_TOKEN = "io_fakecloudadmin_" + "b" * 24
ME_PATH = "/device-api/v1/me"


def me_body(username: str, *, admin: bool = False) -> dict[str, Any]:
    return {
        "email": f"{username}@fake.cloud",
        "username": username,
        "group": {"id": 1, "name": "fake"},
        "is_superuser": admin,
    }


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CloudState:
    requests: list[Recorded] = field(default_factory=list)
    escalations: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    posts_per_id: dict[str, int] = field(default_factory=dict)
    # Posts taken (not refused by `fail_escalations_with`): a duplicate counts, a retried failure not.
    accepted_per_id: dict[str, int] = field(default_factory=dict)
    fail_escalations_with: int | None = None
    # Entries per batch request, in arrival order; False: the batch route answers 404 (an older cloud).
    batches: list[int] = field(default_factory=list)
    batch_route: bool = True
    # image_query_id -> the status the batch route gives that entry alone (it is not stored).
    entry_status: dict[str, int] = field(default_factory=dict)
    # image_query_id -> the ImageQuery JSON that GET /device-api/v1/image-queries/{id} returns.
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # detector_id -> the DetectorPrior JSON of GET /edge-api/v1/detectors/{id}/prior (else 404).
    priors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Seconds the prior route waits before it answers (a slow cloud).
    prior_delay_s: float = 0.0
    # detector_id -> the ModelFetchInfo JSON of fetch-model-urls (else 404: no production model).
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # /blobs/<name> -> bytes (model archives, backbones); each download waits `blob_delay_s` first.
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_delay_s: float = 0.0
    # x-api-token -> the Me JSON of GET /device-api/v1/me (any other token: 401).
    tokens: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            DEVICE_TOKEN: me_body("device"),
            FAKE_ADMIN_TOKEN: me_body("admin", admin=True),
        }
    )
    # Token -> how many times /me was asked about it (kept out of `requests`: not traffic the
    # tests look at).
    me_calls: dict[str, int] = field(default_factory=dict)
    # firing_id -> the AlertFiring JSON recorded by POST /edge-api/v1/alerts/firings (the first copy).
    firings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # firing_id -> how many times it was posted (refused or failed posts included), and how many of
    # those posts it was recorded in (a resend after a lost ack counts, a refused or failed post not).
    firing_posts: dict[str, int] = field(default_factory=dict)
    firing_records: dict[str, int] = field(default_factory=dict)
    # Firings per alert batch, in arrival order, and the edge ids the batches named.
    firing_batches: list[int] = field(default_factory=list)
    firing_edges: list[str] = field(default_factory=list)
    # Set: every alert batch is answered with this status and nothing is recorded.
    fail_firings_with: int | None = None
    # rule_id -> the error its firings are refused with (the rule is gone, as the cloud would say).
    refused_rules: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fallbacks(self) -> list[Recorded]:
        """What nginx forwarded (the edge's own calls to the cloud left out)."""
        own = ("/api/v1/escalations", "/health", "/edge-api/", "/blobs/")
        return [r for r in self.requests if not r.path.startswith(own)]

    def gets_of(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def prior_reads(self, detector_id: str) -> list[Recorded]:
        return self.gets_of(f"/edge-api/v1/detectors/{detector_id}/prior")

    def reads_of(self, image_query_id: str) -> list[Recorded]:
        """GETs of one image query that reached the cloud."""
        path = f"/device-api/v1/image-queries/{image_query_id}"
        return [r for r in self.requests if r.method == "GET" and r.path == path]


def build_app(state: CloudState) -> Starlette:
    def take(payload: dict[str, Any], data: bytes) -> int:
        """One entry, as the cloud takes it: 201 stored, 200 already held (the lock is held)."""
        iq_id = payload["image_query_id"]
        state.posts_per_id[iq_id] = state.posts_per_id.get(iq_id, 0) + 1
        state.accepted_per_id[iq_id] = state.accepted_per_id.get(iq_id, 0) + 1
        if iq_id in state.escalations:
            return 200
        state.escalations[iq_id] = payload
        state.images[iq_id] = data
        return 201

    def refused(request: Request, ids: list[str]) -> JSONResponse | None:
        """The injected failure, for the whole request (the lock is held)."""
        state.requests.append(Recorded("POST", request.url.path, "", dict(request.headers), b""))
        if state.fail_escalations_with is None:
            return None
        for iq_id in ids:
            state.posts_per_id[iq_id] = state.posts_per_id.get(iq_id, 0) + 1
        return JSONResponse({"detail": "injected failure"}, status_code=state.fail_escalations_with)

    async def escalations(request: Request) -> JSONResponse:
        form = await request.form()
        payload = json.loads(str(form["escalation"]))
        image = form["image"]
        data = await image.read() if hasattr(image, "read") else b""
        iq_id = payload["image_query_id"]
        with state.lock:
            failure = refused(request, [iq_id])
            if failure is not None:
                return failure
            code = take(payload, data)
        return JSONResponse({"image_query_id": iq_id, "created": code == 201}, status_code=code)

    async def escalation_batch(request: Request) -> JSONResponse:
        if not state.batch_route:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        form = await request.form()
        payloads = [json.loads(str(text)) for text in form.getlist("escalation")]
        images = [await i.read() if hasattr(i, "read") else b"" for i in form.getlist("image")]
        with state.lock:
            state.batches.append(len(payloads))
            failure = refused(request, [p["image_query_id"] for p in payloads])
            if failure is not None:
                return failure
            results = []
            for index, (payload, data) in enumerate(zip(payloads, images, strict=True)):
                iq_id = payload["image_query_id"]
                code = state.entry_status.get(iq_id) or take(payload, data)
                results.append(
                    {"index": index, "image_query_id": iq_id, "status": code, "created": code == 201}
                )
        return JSONResponse({"results": results})

    async def alert_firings(request: Request) -> JSONResponse:
        batch = AlertFiringBatch.model_validate_json(await request.body())
        with state.lock:
            state.requests.append(Recorded("POST", request.url.path, "", dict(request.headers), b""))
            state.firing_batches.append(len(batch.firings))
            state.firing_edges.append(batch.edge_id)
            for firing in batch.firings:
                state.firing_posts[firing.firing_id] = state.firing_posts.get(firing.firing_id, 0) + 1
            if state.fail_firings_with is not None:
                return JSONResponse({"detail": "injected failure"}, status_code=state.fail_firings_with)
            ack = AlertFiringAck()
            for firing in batch.firings:
                error = state.refused_rules.get(firing.rule_id)
                if error is not None:
                    ack.refused.append(FiringRefusal(firing_id=firing.firing_id, error=error))
                    continue
                state.firings.setdefault(firing.firing_id, firing.model_dump(mode="json"))
                state.firing_records[firing.firing_id] = state.firing_records.get(firing.firing_id, 0) + 1
                ack.recorded.append(firing.firing_id)
        return JSONResponse(ack.model_dump(mode="json"))

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def me(request: Request) -> JSONResponse:
        token = request.headers.get("x-api-token", "")
        with state.lock:
            state.me_calls[token] = state.me_calls.get(token, 0) + 1
            body = state.tokens.get(token)
        if body is None:
            return JSONResponse({"detail": "invalid API token"}, status_code=401)
        return JSONResponse(body)

    async def anything(request: Request) -> JSONResponse:
        body = await request.body()
        with state.lock:
            state.requests.append(
                Recorded(request.method, request.url.path, request.url.query, dict(request.headers), body)
            )
        return JSONResponse({"served_by": "cloud", "method": request.method, "path": request.url.path})

    async def image_query(request: Request) -> JSONResponse:
        answer = state.answers.get(request.path_params["iq_id"])
        if answer is None:
            return await anything(request)
        with state.lock:
            state.requests.append(
                Recorded("GET", request.url.path, request.url.query, dict(request.headers), b"")
            )
        return JSONResponse(answer)

    def record(request: Request) -> None:
        with state.lock:
            state.requests.append(
                Recorded(request.method, request.url.path, request.url.query, dict(request.headers), b"")
            )

    async def prior(request: Request) -> JSONResponse:
        record(request)
        if state.prior_delay_s:
            await asyncio.sleep(state.prior_delay_s)
        body = state.priors.get(request.path_params["detector_id"])
        if body is None:
            return JSONResponse({"detail": "detector not found"}, status_code=404)
        return JSONResponse(body)

    async def fetch_model_urls(request: Request) -> Response:
        record(request)
        info = state.models.get(request.path_params["detector_id"])
        if info is None:
            return JSONResponse({"detail": "no model in production for this detector"}, status_code=404)
        etag = '"' + hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse(info, headers={"ETag": etag})

    async def blob(request: Request) -> Response:
        record(request)
        if state.blob_delay_s:
            await asyncio.sleep(state.blob_delay_s)
        data = state.blobs.get(request.path_params["name"])
        if data is None:
            return JSONResponse({"detail": "no such blob"}, status_code=404)
        return Response(data, media_type="application/octet-stream")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(
        routes=[
            Route("/api/v1/escalations", escalations, methods=["POST"]),
            Route("/api/v1/escalations/batch", escalation_batch, methods=["POST"]),
            Route("/device-api/v1/image-queries/{iq_id}", image_query, methods=["GET"]),
            Route("/edge-api/v1/detectors/{detector_id}/prior", prior, methods=["GET"]),
            Route("/edge-api/v1/alerts/firings", alert_firings, methods=["POST"]),
            Route("/edge-api/v1/fetch-model-urls/{detector_id}/", fetch_model_urls, methods=["GET"]),
            Route("/blobs/{name:path}", blob, methods=["GET"]),
            Route("/health/live", live),
            Route(ME_PATH, me, methods=["GET"]),
            Route("/{path:path}", anything, methods=methods),
        ]
    )


def alert_rule(
    rule_id: str,
    detector_id: str,
    condition: dict[str, Any],
    *,
    consecutive: int = 1,
    cooldown_s: float = 300.0,
    enabled: bool = True,
) -> dict[str, Any]:
    """One AlertRule as the cloud sends it in a prior, e.g. `{"kind": "answer_is", "label": "YES"}`."""
    rule = AlertRule(
        id=rule_id,
        detector_id=detector_id,
        created_at=datetime.now(UTC),
        name=f"rule {rule_id}",
        condition=AlertCondition.model_validate(condition),
        consecutive=consecutive,
        cooldown_s=cooldown_s,
        enabled=enabled,
    )
    return rule.model_dump(mode="json")


class FakeCloud:
    def __init__(self, port: int) -> None:
        self.port = port
        self.state = CloudState()
        self._server = ThreadServer("fake cloud")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_prior(
        self,
        detector_id: str,
        labels: list[str],
        counts: list[int],
        *,
        mode: DetectorMode = DetectorMode.BINARY,
        query: str = "Is it there?",
        confidence_threshold: float = 0.9,
        alert_rules: list[dict[str, Any]] | None = None,
        human_review: str = "DEFAULT",
    ) -> None:
        """What the cloud answers to the edge's prior request for this detector; `alert_rules` are
        AlertRule JSON (see `alert_rule`)."""
        self.state.priors[detector_id] = {
            "detector_id": detector_id,
            "name": f"fake {detector_id[-6:]}",
            "query": query,
            "mode": mode.value,
            "labels": labels,
            "counts": counts,
            "confidence_threshold": confidence_threshold,
            "has_model": False,
            "alert_rules": alert_rules or [],
            "human_review": human_review,
        }

    def firings_of(self, rule_id: str) -> list[dict[str, Any]]:
        """The firings recorded for one rule, in the order they fired."""
        with self.state.lock:
            found = [f for f in self.state.firings.values() if f["rule_id"] == rule_id]
        return sorted(found, key=lambda f: str(f["fired_at"]))

    def accept_token(self, token: str, username: str = "camera", *, admin: bool = False) -> None:
        """Make `token` a device (or admin) token the cloud vouches for."""
        with self.state.lock:
            self.state.tokens[token] = me_body(username, admin=admin)

    def revoke_token(self, token: str) -> None:
        with self.state.lock:
            self.state.tokens.pop(token, None)

    def serve_blob(self, name: str, data: bytes) -> str:
        """Serve `data` at /blobs/<name>; its absolute URL."""
        self.state.blobs[name] = data
        return f"{self.url}/blobs/{name}"

    def publish_model(
        self,
        detector_id: str,
        archive: Path,
        *,
        version: str,
        labels: list[str],
        mode: DetectorMode = DetectorMode.BINARY,
        backbone: tuple[BackboneRef, bytes] | None = None,
        announce: dict[str, Any] | None = None,
    ) -> ModelFetchInfo:
        """Put a bundle archive (and the backbone it needs) in production for `detector_id`, as
        fetch-model-urls announces it; `announce` overrides fields of the backbone announcement (a
        wrong sha256 or size)."""
        fetch_backbone = None
        if backbone is not None:
            ref, data = backbone
            fields: dict[str, Any] = {
                "id": ref.id,
                "sha256": ref.sha256,
                "size_bytes": ref.bytes,
                "download_url": self.serve_blob(f"backbones/{ref.sha256}", data),
                **(announce or {}),
            }
            fetch_backbone = BackboneFetchInfo(**fields)
        info = ModelFetchInfo(
            detector_id=detector_id,
            model_version_id=f"mdl_{detector_id[-8:]}{version}"[:60],
            version=version,
            sha256=sha256_of(archive),
            size_bytes=archive.stat().st_size,
            download_url=self.serve_blob(f"models/{detector_id}/{version}.tar.gz", archive.read_bytes()),
            mode=mode,
            labels=labels,
            backbone=fetch_backbone,
        )
        self.state.models[detector_id] = info.model_dump(mode="json")
        return info

    def start(self) -> FakeCloud:
        self._server.start(build_app(self.state), self.port)
        return self

    def stop(self) -> None:
        self._server.stop()
