"""One poll of one detector, and when to poll next.

A poll asks the cloud's `fetch-model-urls` with the ETag of its last answer:

- 304: nothing changed. 404: the cloud has no production model yet (not an error).
- 200 naming the version `current` already names: ask inference to swap (a no-op when it serves it).
- 200 naming another version: put it in place (from disk when it is one of the kept versions, as after
  a rollback; else download, check size and sha256, unpack, verify, install atomically), then ask
  inference to load and warm it beside the old one and swap. A split bundle's shared backbone is
  installed first when the edge lacks it (edge.updater.backbones: once per edge, checked the same way).

A version that fails verification or warm-up is rejected: `current` goes back to the previous version
(inference never stopped serving it), the bad copy is deleted, and the rejection is kept for the status
page and the heartbeat; so is one whose backbone download fails its checks. The ETag of that answer
is kept too, so the same bundle is not fetched again until the cloud's answer changes. Errors on the
way (cloud or inference unreachable) change nothing that serves and are retried with backoff. After
an install or a rejection, backbones that no kept version needs any more are removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from common.backbone import BackboneError
from common.bundle import VERSION_RE, BundleError
from common.wire.inference import SwapResult
from common.wire.model_registry import ModelFetchInfo
from common.wire.updater_status import DeploySource, DetectorPollStatus, PollOutcome, RejectedVersion
from edge.updater.backbones import SharedBackbones
from edge.updater.clients import (
    DownloadRejected,
    InferenceError,
    RegistryClient,
    RegistryError,
    SwapClient,
    SwapRejected,
)
from edge.updater.installer import Installer

log = logging.getLogger("updater")

MAX_ERROR_CHARS = 300


# The updater's names for the words its status and heartbeat report (common.wire.updater_status).
Outcome = PollOutcome
Source = DeploySource


@dataclass
class DetectorState:
    """What the updater knows about one detector; the status page and the heartbeat show it."""

    detector_id: str
    etag: str | None = None
    version: str | None = None  # what `current` names after the last poll
    outcome: Outcome | None = None
    detail: str | None = None
    polled_at: float | None = None
    deployed_at: float | None = None
    deployed_from: Source | None = None
    failures: int = 0  # errors in a row
    last_error: str | None = None
    last_error_at: float | None = None
    rejected: RejectedVersion | None = None
    next_poll_at: float | None = None
    delay_s: float | None = None  # the wait chosen after the last poll (edge.updater.runner)

    @property
    def has_no_model(self) -> bool:
        """Nothing serves on this edge and the cloud has no model for it yet (or could not say)."""
        return self.version is None and self.outcome in (Outcome.NO_MODEL, Outcome.ERROR)

    def snapshot(self) -> DetectorPollStatus:
        return DetectorPollStatus(
            detector_id=self.detector_id,
            version=self.version,
            outcome=self.outcome,
            detail=self.detail,
            polled_at=self.polled_at,
            deployed_at=self.deployed_at,
            deployed_from=self.deployed_from,
            consecutive_failures=self.failures,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            rejected=self.rejected,
            next_poll_at=self.next_poll_at,
            delay_s=self.delay_s,
        )


def next_delay(refresh_s: float, failures: int, backoff_max_s: float, jitter: float, draw: float) -> float:
    """Seconds until the next poll. `draw` is uniform in [0, 1).

    After a success: up to `jitter` shorter than the refresh rate, never longer, so a change on the
    cloud arrives within one refresh period. After n errors in a row: the refresh rate doubled n
    times, capped at `backoff_max_s` (but never below the refresh rate), jittered the same way.
    """
    base = refresh_s
    if failures > 0:
        base = max(refresh_s, min(backoff_max_s, refresh_s * 2.0 ** min(failures, 32)))
    return base * (1.0 - jitter * draw)


class _Rejected(Exception):
    """Internal: the version must not serve (the reason is the message)."""


class DetectorPoller:
    """Runs one poll of one detector; the caller owns the schedule (see edge.updater.runner)."""

    def __init__(
        self,
        registry: RegistryClient,
        inference: SwapClient,
        installer: Installer,
        backbones: SharedBackbones | None = None,
    ) -> None:
        self.registry = registry
        self.inference = inference
        self.installer = installer
        self.backbones = backbones or SharedBackbones(registry, installer)

    async def poll_once(self, state: DetectorState) -> Outcome:
        state.polled_at = time.time()
        try:
            outcome, detail = await self._poll(state)
        except (RegistryError, InferenceError, OSError) as exc:
            outcome, detail = Outcome.ERROR, str(exc)[:MAX_ERROR_CHARS]
            state.failures += 1
            state.last_error, state.last_error_at = detail, time.time()
            log.warning(
                "model poll failed",
                extra={
                    "fields": {"detector_id": state.detector_id, "error": detail, "failures": state.failures}
                },
            )
        else:
            state.failures = 0
        state.outcome, state.detail = outcome, detail
        return outcome

    async def _poll(self, state: DetectorState) -> tuple[Outcome, str | None]:
        det = state.detector_id
        fetched = await self.registry.fetch(det, state.etag)
        deployed = await asyncio.to_thread(self.installer.current_version, det)
        state.version = deployed
        if fetched.kind == "not_modified":
            return Outcome.UNCHANGED, None
        if fetched.kind == "no_model" or fetched.info is None:
            state.etag = None
            return Outcome.NO_MODEL, fetched.detail or None
        info = fetched.info
        if not VERSION_RE.match(info.version):
            return self._record_rejection(state, fetched.etag, info.version, "version id is not safe")
        if deployed == info.version:
            previous = await asyncio.to_thread(self.installer.other_version, det, info.version)
        else:
            previous = deployed
        source: Source | None = None
        try:
            if deployed != info.version:
                async with self.backbones.needed(info.backbone):
                    source = await self._put_in_place(info)
            result = await self.inference.swap(det)
        except (DownloadRejected, BackboneError, BundleError, SwapRejected) as exc:
            reason = str(exc)[:MAX_ERROR_CHARS]
            if info.backbone is not None and isinstance(exc, (DownloadRejected, BackboneError)):
                reason = f"backbone {info.backbone.id} ({info.backbone.sha256[:12]}): {reason}"[
                    :MAX_ERROR_CHARS
                ]
            now = await asyncio.to_thread(self.installer.reject, det, info.version, previous)
            state.version = now
            await self._clean_up_backbones()
            return self._record_rejection(state, fetched.etag, info.version, reason)
        state.etag = fetched.etag
        state.version = result.version
        if source is None and result.previous_version in (None, result.version):
            return Outcome.UP_TO_DATE, None  # at most warmed up what `current` already named
        if source is not None:
            await self._clean_up_backbones()  # an install may have pruned the last user of one
        return self._record_deploy(state, info, deployed, result, source or Source.DISK)

    async def _clean_up_backbones(self) -> None:
        """Never fails the poll: a backbone left over is removed after the next install."""
        try:
            await self.backbones.clean_up()
        except OSError as exc:
            log.warning("backbone clean-up failed", extra={"fields": {"error": str(exc)}})

    async def _put_in_place(self, info: ModelFetchInfo) -> Source:
        """Make `current` name `info.version`: a kept copy when intact, else a verified download.
        A split bundle's backbone is installed by the caller first (SharedBackbones.needed)."""
        det, version = info.detector_id, info.version
        if await asyncio.to_thread(self.installer.has_version, det, version):
            try:
                await asyncio.to_thread(self.installer.activate, det, version)
                return Source.DISK
            except BundleError as exc:
                log.warning(
                    "kept version is damaged; downloading it again",
                    extra={"fields": {"detector_id": det, "version": version, "error": str(exc)}},
                )
                await asyncio.to_thread(self.installer.remove_version, det, version)
        archive = await asyncio.to_thread(self.installer.new_download_path)
        try:
            await self.registry.download(info, archive)
            await asyncio.to_thread(self.installer.install_archive, archive, det, version)
        finally:
            await asyncio.to_thread(archive.unlink, True)
        return Source.CLOUD

    def _record_deploy(
        self,
        state: DetectorState,
        info: ModelFetchInfo,
        before: str | None,
        result: SwapResult,
        source: Source,
    ) -> tuple[Outcome, str | None]:
        """`before`: what `current` named when the poll began (inference may have swapped on its own
        since, so the swap's own `previous_version` can already be the new one)."""
        state.deployed_at = time.time()
        state.deployed_from = source
        if state.rejected is not None and state.rejected.version != info.version:
            state.rejected = None
        log.info(
            "model deployed",
            extra={
                "fields": {
                    "detector_id": state.detector_id,
                    "version": result.version,
                    "previous": before,
                    "source": source.value,
                    "load_ms": result.load_ms,
                }
            },
        )
        return (
            Outcome.DEPLOYED,
            f"{before or 'nothing'} -> {result.version} ({source.value})",
        )

    def _record_rejection(
        self, state: DetectorState, etag: str | None, version: str, reason: str
    ) -> tuple[Outcome, str | None]:
        # Kept until the cloud's answer changes: the same bundle is not fetched again meanwhile.
        state.etag = etag
        state.rejected = RejectedVersion(version=version, reason=reason, at=time.time())
        state.last_error, state.last_error_at = f"version {version} rejected: {reason}", time.time()
        log.error(
            "model rejected; the previous version keeps serving",
            extra={
                "fields": {
                    "detector_id": state.detector_id,
                    "version": version,
                    "serving": state.version,
                    "reason": reason,
                }
            },
        )
        return Outcome.REJECTED, reason
