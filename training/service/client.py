"""The trainer's side of the cloud API: training-job leases, dataset exports, the model registry and
model reports. Synchronous httpx (the trainer is one job at a time, and heartbeats run in a thread).

Errors:
    CloudError          the cloud answered 4xx/5xx (`status`, `detail`) or could not be reached
    └── LeaseLost       409 on a job call: another trainer holds the lease, or the job has ended
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from common.bundle_archive import ARCHIVE_CONTENT_TYPE
from common.error_detail import error_detail as _detail

log = logging.getLogger("training.service.client")

TOKEN_HEADER = "x-api-token"
SHA256_HEADER = "x-content-sha256"
# GETs are retried on connection trouble and 5xx (the cloud restarting, a replica going away).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


class CloudError(Exception):
    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def unreachable(self) -> bool:
        return self.status is None


class LeaseLost(CloudError):
    """The job is no longer ours to report on."""


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
        error = LeaseLost if lease and response.status_code == 409 else CloudError
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
        **kwargs: Any,
    ) -> httpx.Response:
        delays = RETRY_DELAYS_S if retry else ()
        for attempt in range(len(delays) + 1):
            try:
                response = self._http.request(
                    method, path, headers={**self._headers(), **(headers or {})}, **kwargs
                )
            except httpx.HTTPError as exc:
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                    continue
                raise CloudError(f"{what}: cannot reach the cloud ({type(exc).__name__}: {exc})") from None
            if response.status_code >= 500 and attempt < len(delays):
                time.sleep(delays[attempt])
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, what: str, *, lease: bool = False, **kwargs: Any) -> Any:
        response = self._check(self._send(method, path, what, **kwargs), what, lease)
        return response.json()

    # --- who we are ------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/device-api/v1/me", "who am I", retry=True)
        return result

    # --- training jobs -----------------------------------------------------------------------------

    def lease(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        response = self._check(
            self._send(
                "POST", "/api/v1/training-jobs/lease", "lease", json={"owner": owner, "lease_s": lease_s}
            ),
            "lease",
        )
        if response.status_code == 204:
            return None
        job: dict[str, Any] = response.json()
        return job

    def heartbeat(
        self, job_id: str, owner: str, progress: dict[str, Any], log_lines: list[str], lease_s: float
    ) -> dict[str, Any]:
        body = {"owner": owner, "progress": progress, "log_lines": log_lines, "lease_s": lease_s}
        ack: dict[str, Any] = self._json(
            "POST", f"/api/v1/training-jobs/{job_id}/heartbeat", "heartbeat", lease=True, json=body
        )
        return ack

    def complete(self, job_id: str, owner: str, result_version_id: str | None) -> dict[str, Any]:
        body = {"owner": owner, "result_version_id": result_version_id}
        job: dict[str, Any] = self._json(
            "POST", f"/api/v1/training-jobs/{job_id}/complete", "complete", lease=True, json=body
        )
        return job

    def fail(self, job_id: str, owner: str, error: str) -> dict[str, Any]:
        body = {"owner": owner, "error": error}
        job: dict[str, Any] = self._json(
            "POST", f"/api/v1/training-jobs/{job_id}/fail", "fail", lease=True, json=body
        )
        return job

    # --- exports ---------------------------------------------------------------------------------

    def create_export(self, detector_id: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """`request`: common.wire.dataset_export.ExportRequest as JSON (which embeddings, which images)."""
        kwargs: dict[str, Any] = {"json": request} if request is not None else {}
        export: dict[str, Any] = self._json(
            "POST", f"/api/v1/detectors/{detector_id}/exports", "request a dataset export", **kwargs
        )
        return export

    # --- backbones and embeddings ----------------------------------------------------------------

    def backbone(self, sha256: str) -> dict[str, Any] | None:
        """The registered backbone's info, or None when the cloud does not have it."""
        response = self._send("GET", f"/api/v1/backbones/{sha256}", "backbone info", retry=True)
        if response.status_code == 404:
            return None
        info: dict[str, Any] = self._check(response, "backbone info").json()
        return info

    def upload_backbone(self, ref_json: str, path: Path) -> None:
        sha = json.loads(ref_json)["sha256"]
        with path.open("rb") as fh:
            response = self._send(
                "PUT",
                f"/api/v1/backbones/{sha}",
                "register the backbone",
                files={"file": ("backbone.onnx", fh, "application/octet-stream")},
                data={"ref": ref_json},
            )
        self._check(response, "register the backbone")

    def download_backbone(self, sha256: str, dest: Path) -> str:
        return self._download(f"/api/v1/backbones/{sha256}/download", dest, "download a backbone")

    def upload_embeddings(self, sha256: str, ids: list[str], vectors_npy: bytes) -> dict[str, Any]:
        """Stores float16 embeddings (a .npy of shape (len(ids), dim)) by that backbone."""
        response = self._send(
            "POST",
            f"/api/v1/backbones/{sha256}/embeddings",
            "store embeddings",
            files={"vectors": ("vectors.npy", vectors_npy, "application/octet-stream")},
            data={"image_query_ids": json.dumps(ids)},
        )
        stored: dict[str, Any] = self._check(response, "store embeddings").json()
        return stored

    def get_export(self, export_id: str) -> dict[str, Any]:
        export: dict[str, Any] = self._json(
            "GET", f"/api/v1/exports/{export_id}", "export status", retry=True
        )
        return export

    def download_export(self, export_id: str, dest: Path) -> None:
        self._download(f"/api/v1/exports/{export_id}/download", dest, "download the export")

    # --- registry --------------------------------------------------------------------------------

    def production(self, detector_id: str) -> dict[str, Any] | None:
        """What an edge would fetch: the production version's id, version and sha256; None if none."""
        response = self._send(
            "GET", f"/edge-api/v1/fetch-model-urls/{detector_id}/", "production model", retry=True
        )
        if response.status_code == 404:
            return None
        info: dict[str, Any] = self._check(response, "production model").json()
        return info

    def download_model(self, model_id: str, dest: Path) -> str:
        """Saves the bundle archive; returns the sha256 the cloud says it has."""
        return self._download(f"/api/v1/models/{model_id}/download", dest, "download the production bundle")

    def upload_model(
        self, detector_id: str, archive: Path, lineage: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Registers a candidate; (the model version, True if new, False if it was registered before)."""
        with archive.open("rb") as fh:
            response = self._send(
                "POST",
                f"/api/v1/detectors/{detector_id}/models",
                "register the bundle",
                files={"bundle": (archive.name, fh, ARCHIVE_CONTENT_TYPE)},
                data={"promote": "false", "lineage": json.dumps(lineage)},
            )
        model: dict[str, Any] = self._check(response, "register the bundle").json()
        return model, response.status_code == 201

    def promote(self, model_id: str) -> dict[str, Any]:
        model: dict[str, Any] = self._json("POST", f"/api/v1/models/{model_id}/promote", "promote")
        return model

    def upload_report(self, model_id: str, name: str, path: Path, content_type: str) -> dict[str, Any]:
        report: dict[str, Any] = self._json(
            "POST",
            f"/api/v1/models/{model_id}/reports/{name}",
            f"upload report {name}",
            content=path.read_bytes(),
            headers={"content-type": content_type},
        )
        return report

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
            raise CloudError(f"{what}: cannot reach the cloud ({type(exc).__name__}: {exc})") from None

    def _download(self, path: str, dest: Path, what: str) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._stream(path, what) as response, dest.open("wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
            sha256: str = response.headers.get(SHA256_HEADER) or ""
            return sha256
