"""Child processes for the local stack and for tests: start, wait until healthy, stop without orphans.

Each child leads its own process group, so stopping it also stops anything it spawned, and on Linux it
is told to die with its parent, so not even a SIGKILLed launcher or test run leaves servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self

import httpx

LineSink = Callable[[str], None]
"""Receives each line a child prints, without its line ending."""


class ProcessError(RuntimeError):
    """A child failed to start, died, or never became healthy."""


class StartupCancelled(RuntimeError):
    """Waiting for a child was abandoned because a stop was requested."""


class StopRequest(Protocol):
    """What waits watch to give up early: threading.Event, or a StopFlag where a signal sets it."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class StopFlag:
    """A stop request that a signal handler may raise.

    `threading.Event.set` takes a lock that the interrupted main thread may be holding: inside
    `Event.wait`, or inside a first handler when make forwards the same SIGTERM a moment later. The
    handler then waits for itself forever. Setting a bool takes no lock; `wait` polls it.
    """

    _POLL_S = 0.02

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True as soon as the flag is set, False once `timeout` seconds passed without it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = self._POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._POLL_S, left))
        return True


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook that makes the child receive SIGTERM when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: the child must not import or load anything between fork and exec.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def prefixed_printer(name: str, stream: IO[str] | None = None, width: int = 10) -> LineSink:
    """Print a child's lines as `name | line`, like docker compose does; safe from several threads."""
    lock = threading.Lock()

    def sink(line: str) -> None:
        target = stream if stream is not None else sys.stdout
        with lock, contextlib.suppress(ValueError, OSError):
            target.write(f"{name:<{width}}| {line}\n")
            target.flush()

    return sink


class ManagedProcess:
    """One child process with its output collected line by line.

    The child's environment is this process's environment updated with `env` (unless `inherit_env`
    is false). Its stdout and stderr are merged; every line goes to `output` if given and into a short
    tail kept for error messages. `stop_signal` asks it to finish (SIGQUIT for nginx: graceful).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        output: LineSink | None = None,
        die_with_parent: bool = True,
        tail_lines: int = 200,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.output = output
        self.die_with_parent = die_with_parent
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def start(self) -> Self:
        if self._popen is not None:
            raise ProcessError(f"{self.name} was already started")
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        self._popen = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent() if self.die_with_parent else None,
        )
        self._reader = threading.Thread(target=self._pump, name=f"output-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _pump(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._tail.append(line)
            if self.output is not None:
                self.output(line)

    def output_tail(self, lines: int = 40) -> str:
        """The last lines the child printed, for error messages."""
        return "\n".join(list(self._tail)[-lines:])

    def poll(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the child's whole process group."""
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit on its own; raises subprocess.TimeoutExpired."""
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self._popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the child to stop, kill it (and its group) after `timeout`, and collect its output."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.send_signal(self.stop_signal)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self._popen.wait()
        # Anything the child spawned and left behind goes with it.
        self.send_signal(signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._popen.stdout is not None:
            self._popen.stdout.close()
        return self._popen.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.poll()})"


def _check_alive(process: ManagedProcess | None, what: str) -> None:
    if process is not None and process.poll() is not None:
        raise ProcessError(
            f"{process.name} exited with status {process.poll()} before {what}:\n{process.output_tail()}"
        )


def _pause(interval: float, stop_event: StopRequest | None) -> None:
    if stop_event is None:
        time.sleep(interval)
    elif stop_event.wait(interval):
        raise StartupCancelled("stop requested")


def wait_for_http(
    url: str,
    *,
    timeout: float = 30.0,
    process: ManagedProcess | None = None,
    stop_event: StopRequest | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits or `stop_event` is set."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    # trust_env=False: a proxy configured in the environment must not intercept loopback checks.
    with httpx.Client(trust_env=False, timeout=min(2.0, timeout)) as client:
        while True:
            _check_alive(process, f"{url} answered")
            try:
                response = client.get(url)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if time.monotonic() >= deadline:
                tail = f"\n{process.output_tail()}" if process is not None else ""
                raise ProcessError(f"{url} not healthy after {timeout:.0f} s ({last}){tail}")
            _pause(interval, stop_event)


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 30.0,
    process: ManagedProcess | None = None,
    stop_event: StopRequest | None = None,
    interval: float = 0.05,
) -> None:
    """Wait until `host:port` accepts TCP connections; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(process, f"listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                tail = f"\n{process.output_tail()}" if process is not None else ""
                raise ProcessError(
                    f"nothing listens on {host}:{port} after {timeout:.0f} s ({error}){tail}"
                ) from None
        _pause(interval, stop_event)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
