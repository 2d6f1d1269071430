"""Closed-loop load generation with perf_analyzer's measurement practice.

`measure` keeps `concurrency` callers busy back to back (each issues its next call as soon as the last
one returns), lets them warm up, then cuts time into fixed windows until the last `stable_windows`
windows agree on throughput within `tolerance` (or `max_windows` is reached, which is recorded).
Throughput and latency percentiles come from the stable windows only.

Callers are small async callables: `InProcessCaller` runs `ModelRuntime.predict` on a thread pool,
the way the inference service does; `RawHttpCaller` speaks just enough HTTP/1.1 over one keep-alive
connection to cost a few tens of microseconds per request, so the load generator takes as little CPU
as possible from the services under test; `HttpxCaller` is there to compare against a stock client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np

from common.imaging import ImageLimits
from common.runtime import ModelRuntime

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MeasurementProtocol:
    warmup_s: float = 2.0
    window_s: float = 5.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 10

    def as_dict(self) -> dict[str, Any]:
        return {
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "stable_windows": self.stable_windows,
            "tolerance": self.tolerance,
            "max_windows": self.max_windows,
            "stability_rule": "(max - min) / mean of the last `stable_windows` window throughputs <= tolerance",
        }


@dataclass
class Sample:
    ok: bool
    status: int = 200
    timings: dict[str, float] | None = None
    error: str | None = None


class Caller(Protocol):
    async def __call__(self) -> Sample: ...

    async def aclose(self) -> None: ...


# -- CPU accounting -------------------------------------------------------------------------------------


def _proc_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return 0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs since boot."""
    with open("/proc/stat", "rb") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def process_group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (nginx's master and its workers, for instance)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def machine_busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine keeps busy over the next `seconds`."""
    busy0, total0 = _machine_ticks()
    time.sleep(seconds)
    busy1, total1 = _machine_ticks()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    machine_busy: int
    machine_total: int
    groups: dict[str, int]


class CpuMeter:
    """Samples CPU time of named process groups and of the whole machine."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}

    def snapshot(self) -> CpuSnapshot:
        busy, total = _machine_ticks()
        groups = {name: sum(_proc_ticks(pid) for pid in pids) for name, pids in self.groups.items()}
        return CpuSnapshot(time.perf_counter(), busy, total, groups)

    @staticmethod
    def between(a: CpuSnapshot, b: CpuSnapshot, requests: int) -> dict[str, Any]:
        """Cores used (machine, each group, everything else) and CPU ms per request per group."""
        elapsed = max(b.at - a.at, 1e-9)
        total_ticks = max(b.machine_total - a.machine_total, 1)
        ncpu = os.cpu_count() or 1
        machine_cores = (b.machine_busy - a.machine_busy) / total_ticks * ncpu
        group_s = {name: (b.groups[name] - a.groups[name]) / CLOCK_TICKS for name in b.groups}
        ours = sum(group_s.values()) / elapsed
        return {
            "machine_busy_cores": round(machine_cores, 3),
            "ours_busy_cores": round(ours, 3),
            "foreign_busy_cores": round(max(machine_cores - ours, 0.0), 3),
            "cores": {name: round(s / elapsed, 3) for name, s in group_s.items()},
            "cpu_ms_per_request": {
                name: round(s * 1e3 / requests, 3) if requests else None for name, s in group_s.items()
            },
        }


# -- measurement ------------------------------------------------------------------------------------------


@dataclass
class _Record:
    done: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    timings: list[dict[str, float] | None] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, sample: Sample, t0: float, t1: float) -> None:
        """One finished call, in completion order (the windows are slices of these lists)."""
        self.done.append(t1)
        self.latency.append(t1 - t0)
        self.ok.append(sample.ok)
        self.timings.append(sample.timings)
        if not sample.ok:
            key = sample.error or f"HTTP {sample.status}"
            self.errors[key] = self.errors.get(key, 0) + 1


@dataclass
class _Windows:
    """Window boundaries (perf_counter), CPU snapshots at them, the first completion index of each
    window, and each window's throughput."""

    boundaries: list[float]
    snapshots: list[CpuSnapshot]
    starts: list[int]
    rates: list[float] = field(default_factory=list)


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    if len(values) == 0:
        return None
    return round(float(np.percentile(values, q)), 3)


def _window_throughputs_stable(rates: list[float], n: int, tolerance: float) -> bool:
    if len(rates) < n:
        return False
    last = rates[-n:]
    mean = sum(last) / n
    return mean > 0 and (max(last) - min(last)) / mean <= tolerance


async def measure(
    callers: Sequence[Caller],
    protocol: MeasurementProtocol,
    cpu: CpuMeter | None = None,
    breakdown: Callable[[float, dict[str, float]], dict[str, float]] | None = None,
    on_windows: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run one closed loop with len(callers) concurrent callers; returns a JSON-ready summary.

    `breakdown(latency_ms, timings)` turns one request's latency and reported timings into named
    components; their medians over the stable windows are reported. `on_windows` is called (start,
    end) around the measured windows, after the warm-up.
    """
    rec = _Record()
    stopping = False

    async def worker(call: Caller) -> None:
        clock = time.perf_counter
        while not stopping:
            t0 = clock()
            try:
                sample = await call()
            except Exception as exc:  # a caller never raises on purpose; count it, keep going
                sample = Sample(False, 0, None, f"{type(exc).__name__}: {exc}")
            rec.add(sample, t0, clock())

    tasks = [asyncio.create_task(worker(c)) for c in callers]
    try:
        await asyncio.sleep(protocol.warmup_s)
        if on_windows:
            on_windows[0]()
        win = await _measure_windows(rec, tasks, protocol, cpu)
        if on_windows:
            on_windows[1]()
    finally:
        stopping = True
        await _stop(tasks, callers)
    return _summary(rec, win, protocol, len(callers), cpu, breakdown)


async def _measure_windows(
    rec: _Record, tasks: Sequence[asyncio.Task[None]], protocol: MeasurementProtocol, cpu: CpuMeter | None
) -> _Windows:
    """Fixed windows until the last few agree on throughput (or max_windows, or every caller died)."""
    win = _Windows(
        boundaries=[time.perf_counter()],
        snapshots=[cpu.snapshot()] if cpu else [],
        starts=[len(rec.done)],
    )
    boundaries, starts, rates = win.boundaries, win.starts, win.rates
    while len(rates) < protocol.max_windows:
        await asyncio.sleep(protocol.window_s)
        boundaries.append(time.perf_counter())
        if cpu:
            win.snapshots.append(cpu.snapshot())
        # Completions are appended in time order (one event loop), so a window is a slice.
        end = len(rec.done)
        while end > starts[-1] and rec.done[end - 1] >= boundaries[-1]:
            end -= 1
        starts.append(end)
        rates.append((starts[-1] - starts[-2]) / (boundaries[-1] - boundaries[-2]))
        if _window_throughputs_stable(rates, protocol.stable_windows, protocol.tolerance):
            break
        if all(t.done() for t in tasks):
            break
    return win


async def _stop(tasks: Sequence[asyncio.Task[None]], callers: Sequence[Caller]) -> None:
    """Let in-flight calls finish (30 s at most), then close every caller's connection."""
    _, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(c.aclose() for c in callers), return_exceptions=True)


def _window_rows(rec: _Record, rates: list[float], starts: list[int]) -> list[dict[str, Any]]:
    """Every window, stable or not, so a reader can see how the run settled."""
    windows = []
    for i, rate in enumerate(rates):
        a, b = starts[i], starts[i + 1]
        w_lat = np.asarray(rec.latency[a:b]) * 1e3
        windows.append(
            {
                "throughput_rps": round(rate, 2),
                "requests": b - a,
                "errors": int(b - a - sum(rec.ok[a:b])),
                "p50_ms": _pct(w_lat, 50),
            }
        )
    return windows


def _add_reported_timings(
    result: dict[str, Any],
    lat_ms: np.ndarray,
    timings: list[dict[str, float] | None],
    ok: np.ndarray,
    breakdown: Callable[[float, dict[str, float]], dict[str, float]] | None,
) -> None:
    """Medians of what the successful calls reported about themselves (and of their breakdown)."""
    timed = [(lat, t) for lat, t, good_ in zip(lat_ms, timings, ok, strict=True) if good_ and t]
    if timed:
        names = sorted({k for _, t in timed for k in t})
        result["reported_timings_p50_ms"] = {k: _pct([t[k] for _, t in timed if k in t], 50) for k in names}
        if breakdown is not None:
            parts = [breakdown(float(lat), t) for lat, t in timed]
            result["breakdown_p50_ms"] = {k: _pct([p[k] for p in parts], 50) for k in parts[0]}


def _summary(
    rec: _Record,
    win: _Windows,
    protocol: MeasurementProtocol,
    concurrency: int,
    cpu: CpuMeter | None,
    breakdown: Callable[[float, dict[str, float]], dict[str, float]] | None,
) -> dict[str, Any]:
    """Throughput and latency from the stable windows only; the warm-up and early windows are left out."""
    boundaries, starts, rates, snapshots = win.boundaries, win.starts, win.rates, win.snapshots
    stable = _window_throughputs_stable(rates, protocol.stable_windows, protocol.tolerance)
    used = min(protocol.stable_windows, len(rates))
    lo, hi = starts[-used - 1], starts[-1]
    span = boundaries[-1] - boundaries[-used - 1]
    lat_ms = np.asarray(rec.latency[lo:hi]) * 1e3
    ok = np.asarray(rec.ok[lo:hi], dtype=bool)
    windows = _window_rows(rec, rates, starts)
    good = lat_ms[ok] if len(lat_ms) else lat_ms
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "stabilized": stable,
        "windows_measured": len(rates),
        "windows_used": used,
        "throughput_rps": round((hi - lo) / span, 2) if span > 0 else 0.0,
        "requests": hi - lo,
        "p50_ms": _pct(good, 50),
        "p95_ms": _pct(good, 95),
        "p99_ms": _pct(good, 99),
        "mean_ms": round(float(good.mean()), 3) if len(good) else None,
        "errors": int(len(ok) - ok.sum()),
        "errors_including_warmup": len(rec.ok) - sum(rec.ok),
        "error_kinds": dict(rec.errors),
        "windows": windows,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    _add_reported_timings(result, lat_ms, rec.timings[lo:hi], ok, breakdown)
    if cpu and snapshots:
        result["cpu"] = CpuMeter.between(snapshots[-used - 1], snapshots[-1], hi - lo)
    return result


# -- callers ----------------------------------------------------------------------------------------------


class InProcessCaller:
    """`ModelRuntime.predict` on `pool`, exactly as the inference service calls it (minus HTTP)."""

    def __init__(
        self, runtime: ModelRuntime, frames: Sequence[bytes], offset: int, pool: Executor, limits: ImageLimits
    ) -> None:
        self._runtime = runtime
        self._frames = frames
        self._next = offset
        self._pool = pool
        self._limits = limits

    async def __call__(self) -> Sample:
        frame = self._frames[self._next % len(self._frames)]
        self._next += 1
        loop = asyncio.get_running_loop()
        prediction = await loop.run_in_executor(self._pool, self._runtime.predict, frame, self._limits)
        return Sample(True, 200, prediction.timings_ms)

    async def aclose(self) -> None:
        return None


def build_post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete request, encoded once: `headers` (credentials, say) go into the bytes sent."""
    extra = ""
    for name, value in (headers or {}).items():
        if any(c in name or c in value for c in "\r\n") or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent as is")
        extra += f"{name}: {value}\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode("latin-1")
    return head + body


def parse_server_timing(value: str) -> dict[str, float]:
    """`edge;dur=1.2, inference;dur=0.8` → {"edge": 1.2, "inference": 0.8}."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key == "dur":
                with contextlib.suppress(ValueError):
                    out[name] = float(val)
    return out


TimingSource = Callable[[dict[bytes, bytes], bytes], dict[str, float] | None]


def timings_from_server_timing(headers: dict[bytes, bytes], body: bytes) -> dict[str, float] | None:
    raw = headers.get(b"server-timing")
    return parse_server_timing(raw.decode("latin-1")) if raw else None


def timings_from_json(headers: dict[bytes, bytes], body: bytes) -> dict[str, float] | None:
    timings = json.loads(body).get("timings_ms")
    return dict(timings) if isinstance(timings, dict) else None


class RawHttpCaller:
    """POSTs pre-encoded requests over one keep-alive HTTP/1.1 connection, cycling through them."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        offset: int,
        timings: TimingSource | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._host = host
        self._port = port
        self._requests = requests
        self._next = offset
        self._timings = timings
        self._timeout = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __call__(self) -> Sample:
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(request)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            await self.aclose()
            return Sample(False, 0, None, type(exc).__name__)

    async def _exchange(self, request: bytes) -> Sample:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._read_chunked(reader)
        else:
            body = await reader.read()  # HTTP/1.1 without length: body ends with the connection
            headers[b"connection"] = b"close"
        if headers.get(b"connection", b"").lower() == b"close":
            await self.aclose()
        if status != 200:
            return Sample(False, status, None, f"HTTP {status}: {body[:120]!r}")
        return Sample(True, status, self._timings(headers, body) if self._timings else None)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected: the final empty line
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HttpxCaller:
    """The same requests through a shared httpx.AsyncClient (for comparison with RawHttpCaller)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        path: str,
        bodies: Sequence[bytes],
        offset: int,
        timings: TimingSource | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._client = client
        self._path = path
        self._bodies = bodies
        self._next = offset
        self._timings = timings
        self._headers = {"Content-Type": "image/jpeg", **(headers or {})}

    async def __call__(self) -> Sample:
        body = self._bodies[self._next % len(self._bodies)]
        self._next += 1
        try:
            resp = await self._client.post(self._path, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            return Sample(False, 0, None, type(exc).__name__)
        if resp.status_code != 200:
            return Sample(False, resp.status_code, None, f"HTTP {resp.status_code}: {resp.content[:120]!r}")
        headers = {k.encode("latin-1"): v.encode("latin-1") for k, v in resp.headers.items()}
        return Sample(True, 200, self._timings(headers, resp.content) if self._timings else None)

    async def aclose(self) -> None:
        return None


def run(coro_factory: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one measurement on a fresh uvloop event loop (the services under test use uvloop too)."""
    import uvloop

    async def main() -> dict[str, Any]:
        return await coro_factory()

    return uvloop.run(main())
