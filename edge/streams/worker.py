"""One stream: a reader thread that keeps only the newest frame, and a submit loop that posts it.

Reader: opens the source, reads frames as the source delivers them and keeps the newest one in a
one-frame slot (older frames are dropped, so nothing queues up). When the source fails or stalls it
closes it and opens it again after a backoff that doubles from `reconnect_initial_s` up to
`reconnect_max_s` and starts over once frames flow again.

Submit loop: every 1/fps seconds it takes the newest frame it has not taken yet, skips it when motion
gating says the scene has not changed since the last submitted frame, and otherwise posts it as an
image query, one request at a time. A slow answer only lowers the rate: the next frame taken is the
newest one at that moment, never one that waited in a queue.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import httpx

from common.edge_config import StreamConfig, redact_url
from common.error_detail import error_detail as _detail
from common.internal_auth import internal_headers
from common.wire.streams_status import LastImageQuery, StreamStatus
from edge.streams.gating import MotionGate, thumbnail
from edge.streams.sources import Frame, SourceError, SourceKind, kind_of, open_source

log = logging.getLogger("edge.streams")

SUBMIT_PATH = "/device-api/v1/image-queries"
_RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class TakenFrame:
    seq: int
    image: Frame
    captured: float
    """time.monotonic() when the reader got the frame."""


class FrameSlot:
    """Holds the newest frame only; the submit loop waits here for one newer than it last took."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: TakenFrame | None = None

    def put(self, image: Frame) -> None:
        with self._cond:
            seq = self._latest.seq + 1 if self._latest else 1
            self._latest = TakenFrame(seq, image, time.monotonic())
            self._cond.notify_all()

    def newer_than(self, seq: int, timeout: float) -> TakenFrame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None and self._latest.seq > seq, timeout)
            latest = self._latest
            return latest if latest is not None and latest.seq > seq else None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class EdgeClient:
    """Posts frames to edge-api (or the gateway) over one keep-alive connection pool shared by all
    streams; thread-safe."""

    def __init__(
        self, base_url: str, timeout_s: float, api_token: str = "", internal_token: str = ""
    ) -> None:
        # The device token for the cloud (a gateway fallback), the internal token for the edge itself.
        headers = {"x-api-token": api_token} if api_token else {}
        headers.update(internal_headers(internal_token))
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s, connect=3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers=headers,
            trust_env=False,
        )

    def submit(self, detector_id: str, jpeg: bytes, metadata: dict[str, Any]) -> httpx.Response:
        meta = base64.urlsafe_b64encode(json.dumps(metadata, separators=(",", ":")).encode()).decode()
        return self._http.post(
            SUBMIT_PATH,
            params={"detector_id": detector_id, "metadata": meta.rstrip("=")},
            content=jpeg,
            headers={"Content-Type": "image/jpeg"},
        )

    def close(self) -> None:
        self._http.close()


class StreamWorker:
    def __init__(self, config: StreamConfig, client: EdgeClient, jpeg_quality: int = 90) -> None:
        self.config = config
        self._client = client
        self._jpeg_quality = jpeg_quality
        self._stop = threading.Event()
        self._slot = FrameSlot()
        self._gate = MotionGate(config.motion_threshold) if config.motion_threshold is not None else None
        self._threads: list[threading.Thread] = []
        self.started_at = time.time()
        # Reader side.
        self.kind: SourceKind | None = None
        self.state = "starting"
        self.connected = False
        self.error: str | None = None
        self.error_at: float | None = None
        self.frames_read = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.next_attempt_at: float | None = None
        self._ever_connected = False
        self._last_frame_mono: float | None = None
        # Submit side.
        self.frames_submitted = 0
        self.frames_skipped_motion = 0
        self.submit_errors = 0
        self.last_submit_error: str | None = None
        self.last_image_query: LastImageQuery | None = None
        self.last_submit_age_s: float | None = None
        self.max_submit_age_s: float | None = None
        self._submit_times: collections.deque[float] = collections.deque()

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> StreamWorker:
        for role, target in (("read", self._read_loop), ("submit", self._submit_loop)):
            thread = threading.Thread(target=target, name=f"stream-{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def request_stop(self) -> None:
        """Ask both threads to finish; a reader blocked inside OpenCV ends by itself within timeout_s."""
        self._stop.set()
        self._slot.wake()
        self.state = "stopped"

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.connected = False

    def stop(self, timeout: float = 2.0) -> None:
        self.request_stop()
        self.join(timeout)

    # --- reader ------------------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return float(min(self.config.reconnect_initial_s * 2**attempt, self.config.reconnect_max_s))

    def _fail(self, message: str) -> None:
        self.error = message
        self.error_at = time.time()
        self.connected = False

    def _read_loop(self) -> None:
        attempt = 0
        url = redact_url(self.config.url)
        while not self._stop.is_set():
            self.state = "reconnecting" if self._ever_connected else "connecting"
            self.next_attempt_at = None
            try:
                self.kind, source = open_source(self.config, self._stop)
            except (SourceError, cv2.error, OSError) as exc:
                self.connect_failures += 1
                # Once per distinct error, not once per retry of a camera that stays away.
                level = logging.DEBUG if str(exc) == self.error else logging.WARNING
                self._fail(str(exc))
                log.log(
                    level, "stream cannot open", extra={"fields": {"stream": self.name, "error": str(exc)}}
                )
            else:
                if self._ever_connected:
                    self.reconnects += 1
                self._ever_connected = True
                self.connected, self.state, self.error = True, "connected", None
                log.info("stream connected", extra={"fields": {"stream": self.name, "url": url}})
                ended = False
                try:
                    while not self._stop.is_set():
                        frame = source.read()
                        if frame is None:
                            ended = not self._stop.is_set()
                            break
                        self.frames_read += 1
                        self._last_frame_mono = time.monotonic()
                        self._slot.put(frame)
                        attempt = 0
                except (SourceError, cv2.error, OSError) as exc:
                    self._fail(str(exc))
                    log.warning("stream dropped", extra={"fields": {"stream": self.name, "error": str(exc)}})
                except Exception as exc:
                    # Never let a surprise end the thread and leave the stream looking alive.
                    self._fail(f"unexpected error reading the source: {exc!r}")
                    log.exception("stream reader failed", extra={"fields": {"stream": self.name}})
                finally:
                    source.close()
                    self.connected = False
                if ended:
                    self.state = "ended"
                    log.info("stream source ended", extra={"fields": {"stream": self.name}})
                    return
            if self._stop.is_set():
                return
            delay = self._backoff(attempt)
            attempt += 1
            self.state = "waiting to reconnect" if self._ever_connected else "waiting to connect"
            self.next_attempt_at = time.time() + delay
            self._stop.wait(delay)

    # --- submit loop -------------------------------------------------------------------------------------

    def _submit_loop(self) -> None:
        period = 1.0 / self.config.fps
        next_due = time.monotonic()
        last_seq = 0
        while not self._stop.is_set():
            delay = next_due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            taken = self._slot.newer_than(last_seq, timeout=max(period, 0.5))
            if taken is None:
                continue
            last_seq = taken.seq
            now = time.monotonic()
            if now - next_due > period:
                next_due = now  # lost the cadence (no frames, slow answers): start a new one
            next_due += period
            try:
                self._gate_and_submit(taken)
            except Exception as exc:
                self._submit_failed(f"unexpected error submitting a frame: {exc!r}")
                log.exception("stream submit failed", extra={"fields": {"stream": self.name}})

    def _gate_and_submit(self, taken: TakenFrame) -> None:
        thumb = None
        if self._gate is not None:
            thumb = thumbnail(taken.image)
            if not self._gate.changed(thumb):
                self.frames_skipped_motion += 1
                return
        if self._submit(taken) and self._gate is not None and thumb is not None:
            self._gate.submitted(thumb)

    def _submit(self, taken: TakenFrame) -> bool:
        ok, encoded = cv2.imencode(".jpg", taken.image, [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
        if not ok:
            self._submit_failed("cannot encode the frame as JPEG")
            return False
        sent = time.monotonic()
        age = sent - taken.captured
        metadata = {
            "stream": self.name,
            "frame": taken.seq,
            "captured_at": round(time.time() - age, 3),
        }
        try:
            response = self._client.submit(self.config.detector_id, encoded.tobytes(), metadata)
        except httpx.HTTPError as exc:
            self._submit_failed(f"edge-api unreachable at {self._client.base_url}: {type(exc).__name__}")
            return False
        if response.status_code != 200:
            self._submit_failed(f"edge-api answered {response.status_code}: {_detail(response)}")
            return False
        try:
            body = response.json()
            result = body.get("result") or {}
            self.last_image_query = LastImageQuery(
                id=body["id"],
                label=result.get("label"),
                confidence=result.get("confidence"),
                done_processing=body.get("done_processing"),
            )
        except (ValueError, KeyError, AttributeError):  # ValueError: not JSON, or not these types
            self._submit_failed("edge-api answered 200 without an image query")
            return False
        self.frames_submitted += 1
        self.last_submit_error = None
        self.last_submit_age_s = age
        self.max_submit_age_s = age if self.max_submit_age_s is None else max(self.max_submit_age_s, age)
        self._submit_times.append(sent)
        while self._submit_times and sent - self._submit_times[0] > _RATE_WINDOW_S:
            self._submit_times.popleft()
        return True

    def _submit_failed(self, message: str) -> None:
        self.submit_errors += 1
        # Once per distinct error: an edge-api that is down would otherwise log every frame.
        level = logging.DEBUG if message == self.last_submit_error else logging.WARNING
        self.last_submit_error = message
        log.log(level, "stream submit failed", extra={"fields": {"stream": self.name, "error": message}})

    # --- status ------------------------------------------------------------------------------------------

    def submit_rate(self) -> float:
        """Submitted frames per second over the last few seconds."""
        times = list(self._submit_times)
        if len(times) < 2 or time.monotonic() - times[-1] > _RATE_WINDOW_S:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def last_frame_age_s(self) -> float | None:
        last = self._last_frame_mono
        return None if last is None else time.monotonic() - last

    def snapshot(self) -> StreamStatus:
        age = self.last_frame_age_s()
        return StreamStatus(
            name=self.name,
            url=redact_url(self.config.url),
            kind=self.kind or kind_of(self.config.url),
            detector_id=self.config.detector_id,
            enabled=True,
            fps=self.config.fps,
            motion_threshold=self.config.motion_threshold,
            state=self.state,
            connected=self.connected,
            error=self.error,
            error_at=self.error_at,
            next_attempt_at=self.next_attempt_at,
            frames_read=self.frames_read,
            frames_submitted=self.frames_submitted,
            frames_skipped_motion=self.frames_skipped_motion,
            submit_errors=self.submit_errors,
            last_submit_error=self.last_submit_error,
            reconnects=self.reconnects,
            connect_failures=self.connect_failures,
            last_frame_age_s=None if age is None else round(age, 3),
            last_submit_age_s=None if self.last_submit_age_s is None else round(self.last_submit_age_s, 4),
            max_submit_age_s=None if self.max_submit_age_s is None else round(self.max_submit_age_s, 4),
            submit_fps=round(self.submit_rate(), 2),
            last_motion_difference=None if self._gate is None else self._gate.last_difference,
            last_image_query=self.last_image_query,
            started_at=self.started_at,
        )
