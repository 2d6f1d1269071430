"""The set of running stream workers, kept in step with the edge config.

The edge config comes from edge-api (`GET /edge-config`, polled every `config_poll_s`): edge-api owns
the config (the file, or the newer copy a `PUT /edge-config` saved in its data directory), so polling
it sees exactly what edge-api applies, with no shared volume and no restart. While edge-api cannot be
reached the streams keep running on the last config they got.

A stream whose settings changed is restarted with its new settings (its counters start again); one
that was removed or disabled is stopped; streams that did not change are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import httpx

from common.edge_config import EdgeConfigError, StreamConfig, parse_edge_config, redact_url
from common.internal_auth import internal_headers
from common.wire.streams_status import DisabledStreamStatus, StreamStatus
from edge.streams.sources import kind_of
from edge.streams.worker import EdgeClient, StreamWorker

log = logging.getLogger("edge.streams")

# edge-api's edge config with the cameras' credentials, for the edge's own services only.
CONFIG_PATH = "/internal/edge-config"


class StreamSupervisor:
    def __init__(self, client: EdgeClient, jpeg_quality: int = 90) -> None:
        self._client = client
        self._jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._configs: list[StreamConfig] = []
        self._workers: dict[str, StreamWorker] = {}

    @property
    def configs(self) -> list[StreamConfig]:
        return list(self._configs)

    def apply(self, streams: list[StreamConfig]) -> None:
        """Start, restart and stop workers so that exactly the enabled streams run (blocks briefly)."""
        with self._lock:
            wanted = {s.name: s for s in streams if s.enabled}
            stopping = [
                w for name, w in self._workers.items() if name not in wanted or wanted[name] != w.config
            ]
            for worker in stopping:
                del self._workers[worker.name]
                worker.request_stop()
                log.info("stream stopped", extra={"fields": {"stream": worker.name}})
            deadline = time.monotonic() + 1.0
            for worker in stopping:
                worker.join(max(0.0, deadline - time.monotonic()))
            for name, config in wanted.items():
                if name not in self._workers:
                    self._workers[name] = StreamWorker(config, self._client, self._jpeg_quality).start()
                    log.info(
                        "stream started",
                        extra={"fields": {"stream": name, "url": redact_url(config.url), "fps": config.fps}},
                    )
            self._configs = list(streams)

    def stop_all(self) -> None:
        self.apply([])

    def workers(self) -> list[StreamWorker]:
        with self._lock:
            return list(self._workers.values())

    def snapshot(self) -> list[StreamStatus | DisabledStreamStatus]:
        with self._lock:
            workers = dict(self._workers)
            configs = list(self._configs)
        out: list[StreamStatus | DisabledStreamStatus] = []
        for config in configs:
            worker = workers.get(config.name)
            if worker is not None:
                out.append(worker.snapshot())
            else:
                out.append(
                    DisabledStreamStatus(
                        name=config.name,
                        url=redact_url(config.url),
                        kind=kind_of(config.url),
                        detector_id=config.detector_id,
                        enabled=False,
                        fps=config.fps,
                        state="disabled",
                        connected=False,
                        error=None,
                    )
                )
        return out


class ConfigPoller:
    """Polls edge-api's edge config and applies its `streams:` to the supervisor.

    It reads the internal route, the only one that keeps the cameras' passwords in their URLs (every
    other answer redacts them), with the internal token.
    """

    def __init__(
        self, supervisor: StreamSupervisor, edge_api_url: str, interval_s: float, internal_token: str = ""
    ) -> None:
        self._supervisor = supervisor
        self.url = edge_api_url
        self._headers = internal_headers(internal_token)
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._applied: list[StreamConfig] | None = None
        self.fetched_at: float | None = None
        self.applied_at: float | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="streams-config-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(5.0, connect=2.0),
            headers=self._headers,
            trust_env=False,
        ) as http:
            while True:
                await self.poll_once(http)
                await asyncio.sleep(self._interval)

    async def poll_once(self, http: httpx.AsyncClient) -> None:
        try:
            response = await http.get(CONFIG_PATH)
            if response.status_code != 200:
                raise ValueError(f"edge-api answered {response.status_code} to GET {CONFIG_PATH}")
            config = parse_edge_config(response.json())
        except httpx.HTTPError as exc:
            self._failed(f"edge-api unreachable at {self.url}: {type(exc).__name__}")
            return
        except EdgeConfigError as exc:
            self._failed("edge config rejected: " + "; ".join(exc.errors))
            return
        except ValueError as exc:
            self._failed(str(exc))
            return
        self.fetched_at = time.time()
        self.error = None
        if config.streams != self._applied:
            await asyncio.to_thread(self._supervisor.apply, config.streams)
            self._applied = list(config.streams)
            self.applied_at = time.time()
            log.info("stream config applied", extra={"fields": {"streams": len(config.streams)}})

    def _failed(self, message: str) -> None:
        if message != self.error:
            log.warning("edge config not fetched", extra={"fields": {"error": message}})
        self.error = message
