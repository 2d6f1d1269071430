"""Shared backbones on one edge: downloaded once, whatever number of detectors need them, and removed
once no version kept on disk names them.

A split bundle's fetch answer names its backbone (`ModelFetchInfo.backbone`). Before the bundle is
installed, `SharedBackbones.needed` makes sure that backbone is in the model root: absent (or damaged),
it is streamed from the cloud with its size and sha256 checked as the bytes arrive and installed
atomically (common.backbone). Polls of several detectors that need the same new backbone at the same
time wait on one lock per sha256, so it is downloaded once; the others find it installed.

While a poll holds `needed`, its backbone is pinned: the clean-up that follows installs and rejections
(`clean_up`) never removes a backbone a poll under way is about to use, nor one that any version kept on
disk names (a rollback re-verifies the kept version, which needs its backbone).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.backbone import MAX_BACKBONE_BYTES, SHA256_RE, BackboneError
from common.wire.model_registry import BackboneFetchInfo
from edge.updater.clients import DownloadRejected, RegistryClient
from edge.updater.installer import Installer
from edge.updater.metrics import UpdaterMetrics

log = logging.getLogger("updater")


class SharedBackbones:
    """One per updater, shared by every detector's polls (they run on one event loop)."""

    def __init__(
        self, registry: RegistryClient, installer: Installer, metrics: UpdaterMetrics | None = None
    ) -> None:
        self.registry = registry
        self.installer = installer
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._pins: Counter[str] = Counter()
        # Held while pinning and while cleaning up: a pin taken is seen by every later clean-up.
        self._cleanup_lock = asyncio.Lock()
        self.downloads: Counter[str] = Counter()  # sha256 -> downloads that were installed

    @asynccontextmanager
    async def needed(self, info: BackboneFetchInfo | None) -> AsyncIterator[bool]:
        """Install `info`'s backbone unless it is there (True when it was downloaded now), and keep it
        from clean-up until the block ends. DownloadRejected or BackboneError: it must not be used."""
        if info is None:
            yield False
            return
        if not SHA256_RE.match(info.sha256):
            raise DownloadRejected(f"backbone id {info.sha256[:80]!r} is not a sha256")
        if not 0 < info.size_bytes <= MAX_BACKBONE_BYTES:
            raise DownloadRejected(
                f"backbone of {info.size_bytes} bytes is over the {MAX_BACKBONE_BYTES} an edge accepts"
            )
        async with self._cleanup_lock:
            self._pins[info.sha256] += 1
        try:
            yield await self._ensure(info)
        finally:
            self._pins[info.sha256] -= 1
            if self._pins[info.sha256] <= 0:
                del self._pins[info.sha256]

    async def _ensure(self, info: BackboneFetchInfo) -> bool:
        lock = self._locks.setdefault(info.sha256, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(self.installer.has_backbone, info.sha256):
                return False
            path = await asyncio.to_thread(self.installer.new_download_path, ".onnx")
            try:
                await self.registry.download_backbone(info, path)
                await asyncio.to_thread(self.installer.install_backbone, path, info.sha256)
            except (DownloadRejected, BackboneError):
                if self.metrics is not None:
                    self.metrics.backbone_downloads.labels("rejected").inc()
                raise
            finally:
                await asyncio.to_thread(path.unlink, True)
        self.downloads[info.sha256] += 1
        if self.metrics is not None:
            self.metrics.backbone_downloads.labels("installed").inc()
        log.info(
            "backbone installed",
            extra={"fields": {"id": info.id, "sha256": info.sha256, "bytes": info.size_bytes}},
        )
        return True

    async def clean_up(self) -> list[str]:
        """Remove the backbones nothing on disk and no poll under way needs; their sha256s."""
        async with self._cleanup_lock:
            removed = await asyncio.to_thread(self.installer.remove_unreferenced_backbones, set(self._pins))
        if self.metrics is not None and removed:
            self.metrics.backbones_removed.inc(len(removed))
        for sha256 in removed:
            log.info("backbone removed: no kept version needs it", extra={"fields": {"sha256": sha256}})
        return removed
