"""The trainer's side of the cloud API: training-job leases, dataset exports, the model registry and
model reports. Synchronous httpx (the trainer is one job at a time, and heartbeats run in a thread).

Errors:
    CloudCallError          the cloud answered 4xx/5xx (`status`, `detail`) or could not be reached
    └── LeaseLost       409 on a job call: another trainer holds the lease, or the job has ended
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from common.backbone import BackboneRef
from common.bundle_archive import ARCHIVE_CONTENT_TYPE
from common.error_detail import error_detail as _detail
from common.error_detail import first_validation_error
from common.wire.dataset_export import ExportJobOut, ExportRequest
from common.wire.device_api import AccountMe
from common.wire.model_registry import (
    BackboneOut,
    EmbeddingsStored,
    ModelFetchInfo,
    ModelReportOut,
    ModelVersionDetail,
    ModelVersionOut,
)
from common.wire.training_jobs import (
    HeartbeatAck,
    JobComplete,
    JobFail,
    JobHeartbeat,
    LeaseRequest,
    TrainingJobPublic,
)

log = logging.getLogger("training.service.client")

TOKEN_HEADER = "x-api-token"
SHA256_HEADER = "x-content-sha256"
JSON_HEADERS = {"content-type": "application/json"}
# GETs are retried on connection trouble and 5xx (the cloud restarting, a replica going away).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)

M = TypeVar("M", bound=BaseModel)
# Multipart parts as httpx takes them: name -> (file name, bytes or an open file, content type).
Files = Mapping[str, tuple[str, IO[bytes] | bytes, str]]


class CloudCallError(Exception):
    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def unreachable(self) -> bool:
        return self.status is None


class LeaseLost(CloudCallError):
    """The job is no longer ours to report on."""


def parse(model: type[M], response: httpx.Response, what: str) -> M:
    """The answer as `model`; a CloudCallError (with the answer's status) when it is not one."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise CloudCallError(
            f"{what}: the cloud's answer does not parse as {model.__name__} ({first_validation_error(exc, 'body')})",
            response.status_code,
            "malformed answer",
        ) from None


def body(model: type[M], what: str, **fields: object) -> M:
    """A request body, checked as the cloud will check it: refused here as the cloud would (422)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        message = first_validation_error(exc, "body")
        raise CloudCallError(
            f"{what}: not sent, the cloud would refuse it ({message})", 422, message
        ) from None


class CloudClient:
    def __init__(
        self,
        base_url: str,
        token: Callable[[], str],
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {TOKEN_HEADER: token} if token else {}

    def _check(self, response: httpx.Response, what: str, lease: bool = False) -> httpx.Response:
        if response.status_code < 400:
            return response
        detail = _detail(response)
        error = LeaseLost if lease and response.status_code == 409 else CloudCallError
        raise error(
            f"{what}: the cloud answered {response.status_code}: {detail}", response.status_code, detail
        )

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        retry: bool = False,
        headers: dict[str, str] | None = None,
        json_body: BaseModel | None = None,
        content: bytes | None = None,
        files: Files | None = None,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """`json_body` is sent as it was set (`exclude_unset`): defaults are the cloud's to fill in."""
        if json_body is not None:
            content = json_body.model_dump_json(exclude_unset=True).encode()
            headers = {**JSON_HEADERS, **(headers or {})}
        delays = RETRY_DELAYS_S if retry else ()
        for attempt in range(len(delays) + 1):
            try:
                response = self._http.request(
                    method,
                    path,
                    headers={**self._headers(), **(headers or {})},
                    content=content,
                    files=files,
                    data=data,
                )
            except httpx.HTTPError as exc:
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                    continue
                raise CloudCallError(
                    f"{what}: cannot reach the cloud ({type(exc).__name__}: {exc})"
                ) from None
            if response.status_code >= 500 and attempt < len(delays):
                time.sleep(delays[attempt])
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        what: str,
        *,
        lease: bool = False,
        retry: bool = False,
        json_body: BaseModel | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> M:
        response = self._send(
            method, path, what, retry=retry, headers=headers, json_body=json_body, content=content
        )
        return parse(model, self._check(response, what, lease), what)

    # --- who we are ------------------------------------------------------------------------------

    def whoami(self) -> AccountMe:
        return self._call(AccountMe, "GET", "/device-api/v1/me", "who am I", retry=True)

    # --- training jobs -----------------------------------------------------------------------------

    def lease(self, owner: str, lease_s: float) -> TrainingJobPublic | None:
        request = body(LeaseRequest, "lease", owner=owner, lease_s=lease_s)
        response = self._check(
            self._send("POST", "/api/v1/training-jobs/lease", "lease", json_body=request), "lease"
        )
        if response.status_code == 204:
            return None
        return parse(TrainingJobPublic, response, "lease")

    def heartbeat(
        self, job_id: str, owner: str, progress: Mapping[str, object], log_lines: list[str], lease_s: float
    ) -> HeartbeatAck:
        request = body(
            JobHeartbeat, "heartbeat", owner=owner, progress=progress, log_lines=log_lines, lease_s=lease_s
        )
        return self._call(
            HeartbeatAck,
            "POST",
            f"/api/v1/training-jobs/{job_id}/heartbeat",
            "heartbeat",
            lease=True,
            json_body=request,
        )

    def complete(self, job_id: str, owner: str, result_version_id: str | None) -> TrainingJobPublic:
        request = body(JobComplete, "complete", owner=owner, result_version_id=result_version_id)
        return self._call(
            TrainingJobPublic,
            "POST",
            f"/api/v1/training-jobs/{job_id}/complete",
            "complete",
            lease=True,
            json_body=request,
        )

    def fail(self, job_id: str, owner: str, error: str) -> TrainingJobPublic:
        request = body(JobFail, "fail", owner=owner, error=error)
        return self._call(
            TrainingJobPublic,
            "POST",
            f"/api/v1/training-jobs/{job_id}/fail",
            "fail",
            lease=True,
            json_body=request,
        )

    # --- exports ---------------------------------------------------------------------------------

    def create_export(self, detector_id: str, request: ExportRequest | None = None) -> ExportJobOut:
        """`request`: which embeddings, which images (none: every image, no embeddings)."""
        return self._call(
            ExportJobOut,
            "POST",
            f"/api/v1/detectors/{detector_id}/exports",
            "request a dataset export",
            json_body=request,
        )

    # --- backbones and embeddings ----------------------------------------------------------------

    def backbone(self, sha256: str) -> BackboneOut | None:
        """The registered backbone's info, or None when the cloud does not have it."""
        response = self._send("GET", f"/api/v1/backbones/{sha256}", "backbone info", retry=True)
        if response.status_code == 404:
            return None
        return parse(BackboneOut, self._check(response, "backbone info"), "backbone info")

    def upload_backbone(self, ref: BackboneRef, path: Path) -> BackboneOut:
        what = "register the backbone"
        with path.open("rb") as fh:
            response = self._send(
                "PUT",
                f"/api/v1/backbones/{ref.sha256}",
                what,
                files={"file": ("backbone.onnx", fh, "application/octet-stream")},
                data={"ref": ref.model_dump_json()},
            )
        return parse(BackboneOut, self._check(response, what), what)

    def download_backbone(self, sha256: str, dest: Path) -> str:
        return self._download(f"/api/v1/backbones/{sha256}/download", dest, "download a backbone")

    def upload_embeddings(self, sha256: str, ids: list[str], vectors_npy: bytes) -> EmbeddingsStored:
        """Stores float16 embeddings (a .npy of shape (len(ids), dim)) by that backbone."""
        what = "store embeddings"
        response = self._send(
            "POST",
            f"/api/v1/backbones/{sha256}/embeddings",
            what,
            files={"vectors": ("vectors.npy", vectors_npy, "application/octet-stream")},
            data={"image_query_ids": json.dumps(ids)},
        )
        return parse(EmbeddingsStored, self._check(response, what), what)

    def get_export(self, export_id: str) -> ExportJobOut:
        return self._call(ExportJobOut, "GET", f"/api/v1/exports/{export_id}", "export status", retry=True)

    def download_export(self, export_id: str, dest: Path) -> None:
        self._download(f"/api/v1/exports/{export_id}/download", dest, "download the export")

    # --- registry --------------------------------------------------------------------------------

    def production(self, detector_id: str) -> ModelFetchInfo | None:
        """What an edge would fetch: the production version's id, version and sha256; None if none."""
        what = "production model"
        response = self._send("GET", f"/edge-api/v1/fetch-model-urls/{detector_id}/", what, retry=True)
        if response.status_code == 404:
            return None
        return parse(ModelFetchInfo, self._check(response, what), what)

    def download_model(self, model_id: str, dest: Path) -> str:
        """Saves the bundle archive; returns the sha256 the cloud says it has."""
        return self._download(f"/api/v1/models/{model_id}/download", dest, "download the production bundle")

    def upload_model(
        self, detector_id: str, archive: Path, lineage: Mapping[str, str | None]
    ) -> tuple[ModelVersionDetail, bool]:
        """Registers a candidate; (the model version, True if new, False if it was registered before)."""
        what = "register the bundle"
        with archive.open("rb") as fh:
            response = self._send(
                "POST",
                f"/api/v1/detectors/{detector_id}/models",
                what,
                files={"bundle": (archive.name, fh, ARCHIVE_CONTENT_TYPE)},
                data={"promote": "false", "lineage": json.dumps(lineage)},
            )
        model = parse(ModelVersionDetail, self._check(response, what), what)
        return model, response.status_code == 201

    def promote(self, model_id: str) -> ModelVersionOut:
        return self._call(ModelVersionOut, "POST", f"/api/v1/models/{model_id}/promote", "promote")

    def upload_report(self, model_id: str, name: str, path: Path, content_type: str) -> ModelReportOut:
        return self._call(
            ModelReportOut,
            "POST",
            f"/api/v1/models/{model_id}/reports/{name}",
            f"upload report {name}",
            content=path.read_bytes(),
            headers={"content-type": content_type},
        )

    # --- files -----------------------------------------------------------------------------------

    @contextmanager
    def _stream(self, path: str, what: str) -> Iterator[httpx.Response]:
        try:
            with self._http.stream("GET", path, headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response, what)
                yield response
        except httpx.HTTPError as exc:
            raise CloudCallError(f"{what}: cannot reach the cloud ({type(exc).__name__}: {exc})") from None

    def _download(self, path: str, dest: Path, what: str) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._stream(path, what) as response, dest.open("wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
            sha256: str = response.headers.get(SHA256_HEADER) or ""
            return sha256
