"""Frame sources: what a stream's URL names, opened through OpenCV's FFmpeg backend (or read from a folder).

Every source is used from one reader thread only. `read()` blocks until the next frame and returns
None when the source ended (end of a file that does not loop) and raises `SourceError` when it failed
or stalled; the worker then closes it and reconnects with backoff.

Live sources (RTSP, HTTP MJPEG) are read as fast as they deliver. A video file is paced at its own
frame rate and an image folder at the stream's, so both behave like a camera instead of racing
through their frames.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
from numpy.typing import NDArray

from common.edge_config import StreamConfig, redact_url
from common.wire.streams_status import SourceKind as SourceKind  # the status reports it

Frame = NDArray[np.uint8]
"""A decoded BGR image, height x width x 3."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# OpenCV reads its FFmpeg options from this variable at every open (`key;value|key;value`).
CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_DEFAULT_FILE_FPS = 25.0


class SourceError(RuntimeError):
    """The source cannot be opened, failed, or stopped delivering frames."""


def local_path(url: str) -> Path | None:
    """The filesystem path a stream URL names, or None for a network URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return Path(unquote(parts.path))
    if len(parts.scheme) > 1:
        return None
    return Path(url).expanduser()


def kind_of(url: str) -> SourceKind:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        return SourceKind.RTSP
    if scheme in ("http", "https"):
        return SourceKind.HTTP
    path = local_path(url)
    return SourceKind.FOLDER if path is not None and path.is_dir() else SourceKind.FILE


def diagnose(url: str) -> str:
    """Why a source likely failed to open, in words an operator can act on."""
    kind = kind_of(url)
    shown = redact_url(url)
    if kind in (SourceKind.FILE, SourceKind.FOLDER):
        path = local_path(url)
        if path is None or not path.exists():
            return f"no such file or directory: {path}"
        if not os.access(path, os.R_OK):
            return f"not readable: {path}"
        return f"not a video file OpenCV/FFmpeg can decode: {path}"
    parts = urlsplit(url)
    default_port = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}[parts.scheme.lower()]
    host, port = parts.hostname or "", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or type(exc).__name__}"
    return f"{shown} is reachable but did not deliver a video stream (wrong path, credentials or format?)"


class FrameSource(Protocol):
    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


class _OptionsGate:
    """Lets opens that need the same FFmpeg options run together; a different value waits its turn.

    The options travel in a process-wide environment variable that OpenCV reads at the start of each
    open, so two opens with different RTSP transports must not overlap. The usual case, every stream
    with the same transport, never waits.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value: str | None = None
        self._holders = 0

    @contextlib.contextmanager
    def hold(self, value: str | None) -> Iterator[None]:
        """None: any value will do (an input that ignores RTSP options); it only keeps the variable
        from being rewritten while OpenCV may be reading it."""
        with self._cond:
            while value is not None and self._holders and self._value != value:
                self._cond.wait()
            if value is not None and self._value != value:
                os.environ[CAPTURE_OPTIONS_ENV] = value
                self._value = value
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()


_OPTIONS_GATE = _OptionsGate()


def _capture_options(config: StreamConfig, kind: SourceKind) -> str | None:
    return f"rtsp_transport;{config.rtsp_transport}" if kind is SourceKind.RTSP else None


class CaptureSource:
    """RTSP, HTTP MJPEG or a video file through cv2.VideoCapture with the FFmpeg backend."""

    def __init__(self, config: StreamConfig, kind: SourceKind, stop: threading.Event) -> None:
        self._config = config
        self._kind = kind
        self._stop = stop
        self._timeout_s = config.timeout_s
        target = str(local_path(config.url)) if kind is SourceKind.FILE else config.url
        timeout_ms = int(config.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        with _OPTIONS_GATE.hold(_capture_options(config, kind)):
            self._cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(diagnose(config.url))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._file_period = 1.0 / (fps if 0.1 <= fps <= 240 else _DEFAULT_FILE_FPS)
        self._started = time.monotonic()
        self._frames = 0

    def read(self) -> Frame | None:
        if self._kind is SourceKind.FILE:
            return self._read_file()
        started = time.monotonic()
        ok, frame = self._cap.read()
        # A read that ran into the timeout means the source stalled, whatever it returned (FFmpeg
        # may hand out a frame it still had buffered before giving up).
        if not ok or time.monotonic() - started >= self._timeout_s:
            raise SourceError(f"no frame from {redact_url(self._config.url)} for {self._timeout_s:g} s")
        return np.asarray(frame, dtype=np.uint8)

    def _read_file(self) -> Frame | None:
        # Pace at the file's own rate; when decoding falls behind, skip frames without converting them.
        due = self._started + self._frames * self._file_period
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        while time.monotonic() - due > self._file_period and self._cap.grab():
            self._frames += 1
            due += self._file_period
        ok, frame = self._cap.read()
        if not ok:
            if not self._config.loop:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            # `due` is when a next frame would have been shown: the first one again.
            self._started, self._frames = max(due, time.monotonic()), 0
            self._stop.wait(max(0.0, self._started - time.monotonic()))
            ok, frame = self._cap.read()
            if not ok:
                raise SourceError(f"cannot read {self._config.url} again from the start")
        self._frames += 1
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        self._cap.release()


class FolderSource:
    """A directory of images shown in name order at the stream's rate; listed again on every pass, and
    each image read when it is due, so files added or replaced on disk show up."""

    def __init__(self, config: StreamConfig, stop: threading.Event) -> None:
        path = local_path(config.url)
        assert path is not None
        self._path = path
        self._config = config
        self._stop = stop
        self._period = 1.0 / config.fps
        self._queue: list[Path] = []
        self._next_due = time.monotonic()
        self._passes = 0
        if not self._list():
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")

    def _list(self) -> list[Path]:
        try:
            return sorted(p for p in self._path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceError(f"cannot list {self._path}: {exc.strerror or exc}") from None

    def read(self) -> Frame | None:
        while True:
            if not self._queue:
                if self._passes and not self._config.loop:
                    return None
                self._queue = self._list()
                self._passes += 1
                if not self._queue:
                    raise SourceError(f"no images left in {self._path}")
            delay = self._next_due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
            self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
            path = self._queue.pop(0)
            try:
                data = np.fromfile(path, dtype=np.uint8)
            except OSError:
                continue  # removed or replaced under us: the next one
            frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if frame is not None:
                return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        self._queue = []


def open_source(config: StreamConfig, stop: threading.Event) -> tuple[SourceKind, FrameSource]:
    kind = kind_of(config.url)
    if kind is SourceKind.FOLDER:
        return kind, FolderSource(config, stop)
    if kind is SourceKind.FILE:
        path = local_path(config.url)
        if path is None or not path.is_file():
            raise SourceError(diagnose(config.url))
    return kind, CaptureSource(config, kind, stop)
