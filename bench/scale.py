"""Scale-out: many edges on a replicated cloud, through an outage and back, then reviewers at full speed.

    python -m bench.scale [--edges 20] [--replicas 2] [--outage-s 300] [--reviewers 16] [--quick]
        [--rate 50] [--outage-rate 30] [--retry-max-s 2] [--output PATH]

The deployment is tests/support/scale.py's, as real processes on this machine: a fresh PostgreSQL
database, `--replicas` cloud-api replicas (`python -m cloud.app`, one uvicorn worker each, one shared
data directory) behind the cloud gateway (nginx, round robin), one cloud worker, the demo detectors
seeded (cloud.app.seed_demo), and `--edges` edges (inference + edge-api + updater each), every one
escalating each query it is sent (no rate limit between escalations, no confident audits) and talking
to the cloud only through the gateway. The edges' outbox sends four at a time and, after a failure,
retries from 0.05 s doubling up to `--retry-max-s` (default 2 s: the test stack's 0.5 s would have every
edge resend its batch of 16 about three times a second all through the outage); their cloud probe runs
every 5 s and their updaters at the updater's defaults (edge config every 10 s, a heartbeat every 30 s;
the test updater's 0.5 s and 1 s would keep most of a core busy with 20 edges).

Cameras are one uvloop event loop in this process: an open-loop generator that sends queries on a fixed
schedule (`k / rate`), round robin over the edges, each over an idle keep-alive connection to that
edge-api (bench.loadgen's minimal HTTP/1.1 caller; a new connection when all are busy). Every query
escalates: `want_async=true` on two in three, `confidence_threshold=1.0` on the others, alternating
between the two demo detectors, on demo digits and out-of-domain photos. The camera keeps the id and
the `intellioptics.escalated` flag of every answer.

1. Steady escalation. Cameras at `--rate` queries/s; after a warm-up, fixed windows (perf_analyzer's
   practice, bench/loadgen.py) until the last 3 agree within 10 % on escalations/s, counted as new rows
   of the cloud's `escalations` table per window. `escalations_per_s` is their mean; `edge_p95_ms`
   (the headline latency) is the p95 of the cameras' edge answers sent in those windows, with p50/p99
   beside it; `escalation_delay_ms` is how long an escalation took from the edge's record to the
   cloud's row (its `edge_created_at` to `received_at`). The outboxes are left to empty before phase 2.
2. Outage and drain. Every replica is stopped (SIGTERM), the gateway and the worker keep running, so
   the edges' sends meet nginx's 502 as they would. Cameras keep sending at `--outage-rate` for
   `--outage-s` seconds (their answer latency while the cloud is down is reported too); the backlog is
   the sum of the edges' `/status` outbox.pending then. Cameras stop, every replica is started again at
   once, and the drain is watched until the cloud holds every escalation the cameras were told of
   (its row count, every 0.1 s) and every edge's `/status` shows outbox.pending 0 (asked every 5 s
   until then, every 0.5 s after: a /status also asks the edge's inference service, updater and
   streams service, so polling 20 of them fast would take CPU from the drain it measures). `drain_s` runs from the moment the first replica is ready
   to the last row's arrival (or to the /status round that found every outbox empty, when that came
   later); `drain_per_s` = escalations that reached the cloud meanwhile / `drain_s` (the cloud's own
   view, first to last `received_at`, is beside it).
   Then the database: `lost` = ids the cameras were told were escalated that have no `escalations`
   row; `duplicated` = ids with more than one `escalations` row plus queries with more than one
   review item. Queries with no review item, rows nobody was told about, dead outbox entries and
   camera errors are reported beside them.
3. Review rate. `--reviewers` reviewers, each with an account of its own (written into the database
   like bench/review_queue.py does) and a browser session from `POST /login` at the gateway, claim and
   answer through the gateway, so over every replica, on a new detector seeded with more pending items
   than the run can answer: bench/review_queue.py's `measure_reviewers` (closed loop, perf_analyzer
   windows) and its database checks (`verify`: two standing labels, acknowledged answers missing,
   labels nobody was told about, items held by two reviewers at overlapping times; their sum is
   `double_assignments`). No cameras run during this phase.

CPU time is sampled per process group (cloud-api replicas, worker, gateway, edge-api, inference,
updater, PostgreSQL, this load generator) over each phase's measured span, with the machine's total,
so other work on the machine shows up as `foreign_busy_cores`.

Targets (reported as met or missed; a miss does not fail the run): `drain_per_s` >= 200, `lost` 0,
`duplicated` 0, `review_rate_16` >= 500 items/s (16 reviewers), `double_assignments` 0.

`--quick` (4 edges, 20 rate, a 20 s outage, short windows) is a smoke run of a few minutes and writes
`scale.quick.json` unless `--output` says otherwise; the full run writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.edge_throughput import code_version, run_and_write, wait_until_quiet
from bench.loadgen import (
    CpuMeter,
    CpuSnapshot,
    MeasurementProtocol,
    RawHttpCaller,
    _pct,
    _window_throughputs_stable,
    build_post,
    process_group_pids,
)
from bench.review_queue import (
    FULL as REVIEW_FULL,
)
from bench.review_queue import (
    ITEMS_FULL,
    ITEMS_QUICK,
    QUIET_CORES,
    BenchMeter,
    PostgresCpu,
    _login,
    machine_info,
    measure_reviewers,
    postgres_settings,
    run,
    verify,
)
from bench.review_queue import (
    QUICK as REVIEW_QUICK,
)
from cloud.app.seed_demo import DEMO_DETECTOR_IDS
from launcher.processes import ManagedProcess
from tests.support.cloud import DEVICE_TOKEN, PG_ADMIN_URL, TestDatabase
from tests.support.cloud_factories import CloudFactory
from tests.support.models import demo_model_root
from tests.support.scale import IQ_PATH, CloudReplicas, ScaledEdge, start_edges, stop_edges
from tests.support.stack import ADMIN

RESULTS_DIR = Path(__file__).resolve().parent / "results"

TARGET_DRAIN_PER_S = 200.0
TARGET_REVIEW_RATE_16 = 500.0

# Steady escalation windows (open loop, so they settle fast); the review phase uses review_queue's.
STEADY_FULL = MeasurementProtocol(
    warmup_s=10.0, window_s=10.0, stable_windows=3, tolerance=0.10, max_windows=6
)
STEADY_QUICK = MeasurementProtocol(
    warmup_s=4.0, window_s=3.0, stable_windows=3, tolerance=0.10, max_windows=4
)

REFRESH_S = 60.0
EDGE_CONFIG: dict[str, Any] = {
    "global_config": {"refresh_rate": REFRESH_S, "confident_audit_rate": 0.0},
    # Never rate-limited: every query the camera marks escalates.
    "edge_inference_configs": {"scale": {"min_time_between_escalations": 1e-6}},
    "detectors": [
        {"detector_id": detector_id, "edge_inference_config": "scale", "confidence_threshold": 0.9}
        for detector_id in DEMO_DETECTOR_IDS
    ],
}
EDGE_ENV = {"EDGE_OUTBOX_CONCURRENCY": "4", "EDGE_CLOUD_PROBE_INTERVAL_S": "5"}
# The updater's own defaults, not the test updater's (config every 0.5 s, a heartbeat every second):
# with many edges those polls alone would keep a core of this machine busy.
UPDATER_ENV = {"UPDATER_CONFIG_POLL_S": "10", "UPDATER_HEARTBEAT_INTERVAL_S": "30"}
# More queries in flight than this and the camera drops the next one (counted): the edges are stuck.
MAX_IN_FLIGHT = 512
POLL_S = 0.5
STATUS_EVERY_S = 5.0
REPLICA_START_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- cameras ------------------------------------------------------------------------------------------------


@dataclass
class Shot:
    """One camera query: when it was sent (perf_counter), how it went, what the edge said."""

    phase: str
    edge: int
    sent: float
    latency_ms: float
    ok: bool
    status: int
    image_query_id: str | None
    escalated: bool | None
    error: str | None


class Camera:
    """One keep-alive connection to one edge-api, keeping the id and escalation flag of its answer."""

    def __init__(self, port: int, requests: Sequence[bytes], offset: int) -> None:
        self.answer: tuple[str, bool] | None = None
        self.http = RawHttpCaller("127.0.0.1", port, requests, offset, timings=self._read, timeout_s=30.0)

    def _read(self, headers: dict[bytes, bytes], body: bytes) -> dict[str, float] | None:
        try:
            doc = json.loads(body)
            self.answer = (str(doc["id"]), bool(doc["intellioptics"]["escalated"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"unexpected answer: {body[:120]!r}") from exc
        return None


def camera_requests(port: int, images: Sequence[bytes]) -> list[bytes]:
    """The requests one edge is sent, in turn: every one escalates (asked for, or unsure at 1.0)."""
    out = []
    for n, image in enumerate(images):
        mode = "want_async=true" if n % 3 else "confidence_threshold=1.0"
        path = f"{IQ_PATH}?detector_id={DEMO_DETECTOR_IDS[n % 2]}&{mode}"
        out.append(build_post("127.0.0.1", port, path, image, headers={"x-api-token": DEVICE_TOKEN}))
    return out


class Cameras:
    """Open-loop cameras: query k goes to edge k mod N at start + k / rate, whatever the answers take."""

    def __init__(self, edges: Sequence[ScaledEdge], images: Sequence[bytes]) -> None:
        assert all(e.stack is not None for e in edges)
        self.ports = [e.stack.edge_port for e in edges if e.stack is not None]
        self.requests = [camera_requests(port, images) for port in self.ports]
        self.idle: list[list[Camera]] = [[] for _ in self.ports]
        self.cameras: list[Camera] = []
        self.in_flight = 0
        self.dropped = 0
        self.max_lag_ms = 0.0

    async def _one(self, phase: str, edge: int, shots: list[Shot]) -> None:
        idle = self.idle[edge]
        if idle:
            camera = idle.pop()
        else:
            camera = Camera(self.ports[edge], self.requests[edge], len(self.cameras))
            self.cameras.append(camera)
        camera.answer = None
        clock = time.perf_counter
        t0 = clock()
        try:
            sample = await camera.http()
        finally:
            self.in_flight -= 1
            idle.append(camera)
        t1 = clock()
        iq, escalated = camera.answer if sample.ok and camera.answer else (None, None)
        shots.append(
            Shot(phase, edge, t0, (t1 - t0) * 1e3, sample.ok, sample.status, iq, escalated, sample.error)
        )

    async def send(self, phase: str, rate: float, stop: asyncio.Event, shots: list[Shot]) -> None:
        """Send at `rate` until `stop` is set, then wait for the answers still out."""
        tasks: set[asyncio.Task[None]] = set()
        clock = time.perf_counter
        start = clock()
        k = 0
        while not stop.is_set():
            due = start + k / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self.max_lag_ms = max(self.max_lag_ms, -delay * 1e3)
            edge = k % len(self.ports)
            k += 1
            if self.in_flight >= MAX_IN_FLIGHT:
                self.dropped += 1
                shots.append(
                    Shot(phase, edge, clock(), 0.0, False, 0, None, None, "dropped: too many in flight")
                )
                continue
            self.in_flight += 1
            task = asyncio.create_task(self._one(phase, edge, shots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.http.aclose() for c in self.cameras), return_exceptions=True)


def latency_summary(shots: Sequence[Shot]) -> dict[str, Any]:
    good = [s.latency_ms for s in shots if s.ok]
    kinds: dict[str, int] = {}
    for s in shots:
        if not s.ok:
            key = (s.error or f"HTTP {s.status}")[:80]
            kinds[key] = kinds.get(key, 0) + 1
    return {
        "queries": len(shots),
        "answered": len(good),
        "errors": len(shots) - len(good),
        "error_kinds": kinds,
        "p50_ms": _pct(good, 50),
        "p95_ms": _pct(good, 95),
        "p99_ms": _pct(good, 99),
        "max_ms": round(max(good), 3) if good else None,
    }


# -- the deployment: processes, CPU groups, outboxes, database ----------------------------------------------


def _group(processes: Iterable[ManagedProcess | None]) -> list[int]:
    pids: list[int] = []
    for process in processes:
        if process is not None and process.pid is not None and process.is_running():
            pids += process_group_pids(process.pid)
    return pids


def pid_groups(cloud: CloudReplicas, edges: Sequence[ScaledEdge]) -> dict[str, Sequence[int]]:
    """Every process of the deployment by role (each ManagedProcess leads its own process group)."""
    stacks = [e.stack for e in edges if e.stack is not None]
    return {
        "cloud_api": _group(cloud.replicas),
        "cloud_worker": _group([cloud.worker]),
        "gateway": _group([cloud.gateway.process if cloud.gateway else None]),
        "edge_api": _group(s.edge for s in stacks),
        "inference": _group(s.inference for s in stacks),
        "updater": _group(e.updater for e in edges),
        "loadgen": [os.getpid()],
    }


async def outboxes(client: httpx.AsyncClient, edges: Sequence[ScaledEdge]) -> list[dict[str, Any]]:
    """Each edge's /status outbox (pending, dead, ...), all asked at once."""

    async def one(edge: ScaledEdge) -> dict[str, Any]:
        resp = await client.get(f"{edge.edge_url}/status", headers=ADMIN)
        resp.raise_for_status()
        outbox: dict[str, Any] = resp.json()["outbox"]
        return outbox

    return list(await asyncio.gather(*(one(e) for e in edges)))


@dataclass(frozen=True)
class Drained:
    drained: bool
    end: float  # perf_counter: the cloud held every escalation and every outbox was empty
    confirmed: float  # perf_counter: the /status round that showed every outbox empty
    rows: int


async def wait_drained(
    edges: Sequence[ScaledEdge], database_url: str, expected: int, timeout_s: float, progress: str
) -> Drained:
    """Wait until the cloud holds `expected` escalations and every edge's /status shows an empty outbox.

    The cloud's row count is polled every 0.1 s (one cheap query). A /status also asks the edge's
    inference service, updater and streams service, so the edges are asked only every 5 s until the rows
    are all there (in case some never arrive), then every 0.5 s. When the first round after that shows
    every outbox empty, the drain ended when the last row arrived.
    """
    clock = time.perf_counter
    start = clock()
    arrived: float | None = None
    next_status = start + STATUS_EVERY_S
    last_log = start
    pending: int | None = None
    rows = 0
    conn = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            while True:
                first_after_arrival = False
                if arrived is None:
                    rows = await escalation_count(conn)
                    if rows >= expected:
                        arrived = next_status = clock()
                        first_after_arrival = True
                if clock() >= next_status:
                    pending = sum(d["pending"] for d in await outboxes(client, edges))
                    now = clock()
                    if pending == 0:
                        rows = await escalation_count(conn)
                        end = arrived if arrived is not None and first_after_arrival else now
                        return Drained(True, end, now, rows)
                    next_status = now + (POLL_S if arrived is not None else STATUS_EVERY_S)
                now = clock()
                if now - start > timeout_s:
                    return Drained(False, now, now, await escalation_count(conn))
                if now - last_log >= 10:
                    last_log = now
                    log(
                        f"  {progress}: {rows} of {expected} escalations in the cloud; outboxes: {pending} pending"
                    )
                await asyncio.sleep(0.1 if arrived is None else POLL_S)
    finally:
        await conn.close()


async def escalation_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM escalations"))


def cpu_between(a: CpuSnapshot, b: CpuSnapshot, requests: int) -> dict[str, Any]:
    return CpuMeter.between(a, b, requests)


# -- phase 1: steady escalation -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every camera query of the run, across phases."""

    shots: list[Shot] = field(default_factory=list)
    dropped: int = 0

    def escalated_ids(self) -> list[str]:
        return [s.image_query_id for s in self.shots if s.image_query_id is not None and s.escalated]


async def steady_phase(
    edges: Sequence[ScaledEdge],
    images: Sequence[bytes],
    database_url: str,
    rate: float,
    protocol: MeasurementProtocol,
    meter: CpuMeter,
    ledger: Ledger,
) -> dict[str, Any]:
    cameras = Cameras(edges, images)
    shots: list[Shot] = []
    stop = asyncio.Event()
    conn = await asyncpg.connect(database_url)
    sender = asyncio.create_task(cameras.send("steady", rate, stop, shots))
    clock = time.perf_counter
    try:
        await asyncio.sleep(protocol.warmup_s)
        bounds = [clock()]
        counts = [await escalation_count(conn)]
        snaps = [meter.snapshot()]
        rates: list[float] = []
        while len(rates) < protocol.max_windows and not sender.done():
            await asyncio.sleep(protocol.window_s)
            bounds.append(clock())
            counts.append(await escalation_count(conn))
            snaps.append(meter.snapshot())
            rates.append((counts[-1] - counts[-2]) / (bounds[-1] - bounds[-2]))
            log(f"  window {len(rates)}: {rates[-1]:.1f} escalations/s in the cloud")
            if _window_throughputs_stable(rates, protocol.stable_windows, protocol.tolerance):
                break
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await sender
        await cameras.aclose()
    used = min(protocol.stable_windows, len(rates))
    lo, hi = bounds[-used - 1], bounds[-1]
    in_window = [s for s in shots if lo <= s.sent < hi]
    delays: list[float] = []
    ids = [s.image_query_id for s in in_window if s.image_query_id]
    try:
        rows = await conn.fetch(
            "SELECT edge_created_at, received_at FROM escalations WHERE image_query_id = ANY($1::text[])", ids
        )
        for row in rows:
            created = dt.datetime.fromisoformat(row["edge_created_at"])
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.UTC)
            delays.append((row["received_at"] - created).total_seconds() * 1e3)
    finally:
        await conn.close()
    ledger.shots += shots
    ledger.dropped += cameras.dropped
    window_escalations = counts[-1] - counts[-used - 1]
    return {
        "offered_rate_per_s": rate,
        "stabilized": _window_throughputs_stable(rates, protocol.stable_windows, protocol.tolerance),
        "windows_measured": len(rates),
        "windows_used": used,
        "window_escalations_per_s": [round(r, 2) for r in rates],
        "escalations_per_s": round(window_escalations / (hi - lo), 2),
        "camera_queries_per_s": round(len(in_window) / (hi - lo), 2),
        "edge_answers": latency_summary(in_window),
        "all_queries_including_warmup": latency_summary(shots),
        "escalation_delay_ms": {
            "p50": _pct(delays, 50),
            "p95": _pct(delays, 95),
            "p99": _pct(delays, 99),
            "rows": len(delays),
        },
        "camera_connections": len(cameras.cameras),
        "camera_max_lag_ms": round(cameras.max_lag_ms, 3),
        "dropped": cameras.dropped,
        "cpu": cpu_between(snaps[-used - 1], snaps[-1], window_escalations),
    }


# -- phase 2: outage and drain ------------------------------------------------------------------------------


async def outage_traffic(
    edges: Sequence[ScaledEdge],
    images: Sequence[bytes],
    rate: float,
    duration_s: float,
    meter: CpuMeter,
    ledger: Ledger,
) -> dict[str, Any]:
    cameras = Cameras(edges, images)
    shots: list[Shot] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(duration_s, stop.set)
    before = meter.snapshot()
    try:
        await cameras.send("outage", rate, stop, shots)
    finally:
        await cameras.aclose()
    after = meter.snapshot()
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        depths = await outboxes(client, edges)
    ledger.shots += shots
    ledger.dropped += cameras.dropped
    return {
        "offered_rate_per_s": rate,
        "duration_s": duration_s,
        "edge_answers": latency_summary(shots),
        "escalated": sum(1 for s in shots if s.escalated),
        "backlog": sum(d["pending"] for d in depths),
        "backlog_per_edge": {e.edge_id: d["pending"] for e, d in zip(edges, depths, strict=True)},
        "camera_connections": len(cameras.cameras),
        "camera_max_lag_ms": round(cameras.max_lag_ms, 3),
        "dropped": cameras.dropped,
        "cpu": cpu_between(before, after, len(shots)),
    }


def stop_replicas(cloud: CloudReplicas) -> None:
    """Every replica down (SIGTERM, then the kill after 10 s); the gateway and worker keep running."""

    def stop(index: int) -> None:
        process = cloud.replicas[index]
        if process is not None:
            process.stop()
            cloud.replicas[index] = None

    with ThreadPoolExecutor(len(cloud.replicas)) as pool:
        list(pool.map(stop, range(len(cloud.replicas))))


async def restart_and_drain(
    cloud: CloudReplicas,
    edges: Sequence[ScaledEdge],
    database_url: str,
    timeout_s: float,
    postgres: PostgresCpu,
    expected: int,
) -> dict[str, Any]:
    """Start every replica at once, and time the edges' outboxes from the first one ready to empty.

    The replicas are started from this (the main) thread: a child dies with the thread that started it.
    """
    clock = time.perf_counter
    conn = await asyncpg.connect(database_url)
    try:
        count_before = await escalation_count(conn)
        wall_before = dt.datetime.now(dt.UTC)
        t_restart = clock()
        processes = [cloud.start_replica(i) for i in range(cloud.count)]
        ready: list[float] = []

        async def wait_ready(index: int, process: ManagedProcess) -> None:
            url = f"{cloud.replica_url(index)}/health/ready"
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                while True:
                    if not process.is_running():
                        raise RuntimeError(f"cloud-api-{index} exited:\n{process.output_tail()}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(url)).status_code == 200:
                            break
                    if clock() - t_restart > REPLICA_START_TIMEOUT_S:
                        raise RuntimeError(f"cloud-api-{index} not ready in {REPLICA_START_TIMEOUT_S:g} s")
                    await asyncio.sleep(0.05)
            ready.append(clock())

        await asyncio.gather(*(wait_ready(i, p) for i, p in enumerate(processes)))
        t_first = min(ready)
        # The replicas are known now: CPU from every one ready to every outbox empty.
        meter = BenchMeter(pid_groups(cloud, edges), postgres)
        snap = meter.snapshot()
        count_all_ready = await escalation_count(conn)
        done = await wait_drained(edges, database_url, expected, timeout_s, "draining")
        t_empty = done.end
        end = meter.snapshot()
        count_after = await escalation_count(conn)
        span = await conn.fetchrow(
            "SELECT count(*) AS n, min(received_at) AS first, max(received_at) AS last"
            " FROM escalations WHERE received_at > $1",
            wall_before,
        )
    finally:
        await conn.close()
    drain_s = t_empty - t_first
    drained_n = count_after - count_before
    cloud_span = (span["last"] - span["first"]).total_seconds() if span and span["n"] > 1 else None
    return {
        "drained": done.drained,
        "replicas_ready_s": [round(t - t_restart, 3) for t in sorted(ready)],
        "drain_s": round(drain_s, 3),
        "drain_s_from_restart": round(t_empty - t_restart, 3),
        "escalations_drained": drained_n,
        "drain_per_s": round(drained_n / drain_s, 2) if drain_s > 0 else None,
        "cloud_received_span_s": round(cloud_span, 3) if cloud_span is not None else None,
        "cloud_received_per_s": round(span["n"] / cloud_span, 2) if cloud_span else None,
        "escalations_before_all_ready": count_all_ready - count_before,
        "status_confirmed_after_s": round(done.confirmed - t_first, 3),
        "cpu_after_all_ready": cpu_between(snap, end, count_after - count_all_ready),
    }


async def exactly_once(
    database_url: str, escalated: Sequence[str], edges: Sequence[ScaledEdge]
) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        esc = {
            r["image_query_id"]: int(r["n"])
            for r in await conn.fetch("SELECT image_query_id, count(*) AS n FROM escalations GROUP BY 1")
        }
        items = {
            r["image_query_id"]: int(r["n"])
            for r in await conn.fetch(
                "SELECT image_query_id, count(*) AS n FROM review_items"
                " WHERE detector_id = ANY($1::text[]) GROUP BY 1",
                list(DEMO_DETECTOR_IDS),
            )
        }
        per_edge = {
            r["edge_id"]: int(r["n"])
            for r in await conn.fetch("SELECT edge_id, count(*) AS n FROM escalations GROUP BY 1")
        }
    finally:
        await conn.close()
    told = set(escalated)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        depths = await outboxes(client, edges)
    duplicated_escalations = sum(1 for n in esc.values() if n > 1)
    duplicated_items = sum(1 for n in items.values() if n > 1)
    return {
        "escalated_told": len(escalated),
        "escalated_ids_repeated_in_answers": len(escalated) - len(told),
        "escalation_rows": sum(esc.values()),
        "lost": sum(1 for iq in told if iq not in esc),
        "duplicated": duplicated_escalations + duplicated_items,
        "duplicated_escalations": duplicated_escalations,
        "duplicated_review_items": duplicated_items,
        "escalated_without_review_item": sum(1 for iq in told if iq not in items),
        "rows_nobody_was_told_about": sum(1 for iq in esc if iq not in told),
        "outbox_pending": sum(d["pending"] for d in depths),
        "outbox_dead": sum(d["dead"] for d in depths),
        "escalations_per_edge": per_edge,
    }


# -- orchestration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    edges: int
    replicas: int
    outage_s: float
    reviewers: int
    rate: float
    outage_rate: float
    steady: MeasurementProtocol
    review: MeasurementProtocol
    items: int
    drain_timeout_s: float
    retry_max_s: float

    @property
    def edge_env(self) -> dict[str, str]:
        return {**EDGE_ENV, "EDGE_OUTBOX_RETRY_MAX_S": f"{self.retry_max_s:g}"}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)

        def pick(value: Any, full: Any, smoke: Any) -> Any:
            return value if value is not None else (smoke if quick else full)

        outage_s = float(pick(args.outage_s, 300.0, 20.0))
        return cls(
            edges=int(pick(args.edges, 20, 4)),
            replicas=int(args.replicas),
            outage_s=outage_s,
            reviewers=int(args.reviewers),
            rate=float(pick(args.rate, 50.0, 20.0)),
            outage_rate=float(pick(args.outage_rate, 30.0, 20.0)),
            steady=STEADY_QUICK if quick else STEADY_FULL,
            review=REVIEW_QUICK if quick else REVIEW_FULL,
            items=int(args.items or (ITEMS_QUICK if quick else ITEMS_FULL)),
            drain_timeout_s=max(120.0, 3 * outage_s),
            retry_max_s=float(args.retry_max_s),
        )


def camera_images() -> list[bytes]:
    """Eight demo digits and four out-of-domain photos, as tests/test_scale_out.py sends."""
    from training.sample_images import demo_digit_images, out_of_domain_images

    return [image for image, _ in demo_digit_images(8)] + list(out_of_domain_images(4))


def _steady(
    plan: Plan,
    cloud: CloudReplicas,
    edges: list[ScaledEdge],
    images: list[bytes],
    database: TestDatabase,
    pg_cpu: PostgresCpu,
    ledger: Ledger,
) -> dict[str, Any]:
    """1. Steady escalation, then its leftovers drained so the outage starts from empty outboxes."""
    log(f"steady: {plan.rate:g} escalating queries/s over {plan.edges} edges")
    meter = BenchMeter(pid_groups(cloud, edges), pg_cpu)
    steady = run(
        functools.partial(steady_phase, edges, images, database.url, plan.rate, plan.steady, meter, ledger)
    )
    leftovers = run(
        functools.partial(
            wait_drained, edges, database.url, len(ledger.escalated_ids()), 120.0, "steady leftovers"
        )
    )
    steady["drained_after"] = leftovers.drained
    log(
        f"  {steady['escalations_per_s']} escalations/s; edge p95 "
        f"{steady['edge_answers']['p95_ms']} ms; errors {steady['edge_answers']['errors']}"
    )
    return steady


def _outage(
    plan: Plan,
    cloud: CloudReplicas,
    edges: list[ScaledEdge],
    images: list[bytes],
    pg_cpu: PostgresCpu,
    ledger: Ledger,
) -> dict[str, Any]:
    """2a. Every replica down while cameras keep sending: the edges must answer and queue."""
    log(f"outage: every replica stopped; {plan.outage_rate:g} queries/s for {plan.outage_s:g} s")
    stop_replicas(cloud)
    meter = BenchMeter(pid_groups(cloud, edges), pg_cpu)
    outage = run(
        functools.partial(outage_traffic, edges, images, plan.outage_rate, plan.outage_s, meter, ledger)
    )
    log(
        f"  backlog {outage['backlog']}; edge p95 {outage['edge_answers']['p95_ms']} ms; "
        f"errors {outage['edge_answers']['errors']}"
    )
    return outage


def _drain(
    plan: Plan,
    cloud: CloudReplicas,
    edges: list[ScaledEdge],
    database: TestDatabase,
    pg_cpu: PostgresCpu,
    ledger: Ledger,
) -> dict[str, Any]:
    """2b. The replicas back: how fast the edges' backlog reaches the cloud."""
    log("drain: every replica started again")
    drain = run(
        functools.partial(
            restart_and_drain,
            cloud,
            edges,
            database.url,
            plan.drain_timeout_s,
            pg_cpu,
            len(ledger.escalated_ids()),
        )
    )
    log(
        f"  {drain['escalations_drained']} escalations in {drain['drain_s']} s = "
        f"{drain['drain_per_s']}/s" + ("" if drain["drained"] else " (NOT drained: timed out)")
    )
    return drain


def _review(
    plan: Plan,
    cloud: CloudReplicas,
    edges: list[ScaledEdge],
    database: TestDatabase,
    pg_cpu: PostgresCpu,
) -> dict[str, Any]:
    """3. The review rate through the gateway, with the queue's no-double-assignment check."""
    factory = CloudFactory(database.url, cloud.data_dir / "blobs")
    reviewers = [factory.reviewer() for _ in range(plan.reviewers)]
    cookies = [run(functools.partial(_login, cloud.url, r.username, r.password)) for r in reviewers]
    detector_id = factory.detector(name=f"scale-{plan.reviewers}-reviewers")
    log(f"review: seeding {plan.items} items for {plan.reviewers} reviewer(s)...")
    factory.review_items(detector_id, plan.items)
    meter = BenchMeter(pid_groups(cloud, edges), pg_cpu)
    review, review_ledger = run(
        functools.partial(measure_reviewers, cloud.server(), cookies, detector_id, plan.review, meter)
    )
    review_checks = run(
        functools.partial(
            verify, database.url, {str(plan.reviewers): review_ledger}, [r.user_id for r in reviewers]
        )
    )
    review["checks"] = review_checks
    log(f"  {review['items_per_s']} items/s; double assignments {review_checks['double_assignments']}")
    return review


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.from_args(args)
    started = dt.datetime.now(dt.UTC)
    code_at_start = code_version()
    load_start = [round(x, 2) for x in os.getloadavg()]
    busy_before = wait_until_quiet(args.wait_quiet, QUIET_CORES)
    models = demo_model_root()
    images = camera_images()
    ledger = Ledger()
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, PostgresCpu() as pg_cpu:
        workdir = Path(tmp)
        database = TestDatabase(workdir).create()
        cloud = CloudReplicas(workdir / "cloud", database, count=plan.replicas)
        (workdir / "cloud").mkdir()
        edges: list[ScaledEdge] = []
        try:
            t0 = time.monotonic()
            cloud.start()
            cloud.server().seed_demo(models, "--cloud-url", cloud.url)
            log(f"cloud: {plan.replicas} replica(s) behind {cloud.url}; database {database.name}")
            edges = start_edges(
                workdir / "edges", cloud.server(), models, plan.edges, EDGE_CONFIG, plan.edge_env, UPDATER_ENV
            )
            setup_s = time.monotonic() - t0
            log(f"{plan.edges} edges up ({setup_s:.0f} s since the cloud started)")

            phases["steady"] = _steady(plan, cloud, edges, images, database, pg_cpu, ledger)
            phases["outage"] = _outage(plan, cloud, edges, images, pg_cpu, ledger)
            phases["drain"] = _drain(plan, cloud, edges, database, pg_cpu, ledger)
            checks = run(functools.partial(exactly_once, database.url, ledger.escalated_ids(), edges))
            log(f"  lost {checks['lost']}, duplicated {checks['duplicated']}")
            phases["review"] = _review(plan, cloud, edges, database, pg_cpu)
            pg = run(functools.partial(postgres_settings, PG_ADMIN_URL))
        finally:
            log("stopping everything...")
            stop_edges(edges)
            cloud.stop()
            database.drop()
    return summarize(
        plan, args, phases, checks, ledger, pg, started, load_start, busy_before, setup_s, code_at_start
    )


def summarize(
    plan: Plan,
    args: argparse.Namespace,
    phases: dict[str, Any],
    checks: dict[str, Any],
    ledger: Ledger,
    pg: dict[str, str],
    started: dt.datetime,
    load_start: list[float],
    busy_before: float,
    setup_s: float,
    code_at_start: dict[str, Any],
) -> dict[str, Any]:
    steady, outage, drain, review = phases["steady"], phases["outage"], phases["drain"], phases["review"]
    review_rate = review["items_per_s"]
    review_rate_16 = review_rate if plan.reviewers == 16 else None
    double = review["checks"]["double_assignments"]
    drain_per_s = drain["drain_per_s"]
    met = {
        "drain_per_s": drain_per_s is not None and drain["drained"] and drain_per_s >= TARGET_DRAIN_PER_S,
        "lost": checks["lost"] == 0,
        "duplicated": checks["duplicated"] == 0,
        "review_rate_16": review_rate_16 is not None and review_rate_16 >= TARGET_REVIEW_RATE_16,
        "double_assignments": double == 0,
    }
    foreign = max(
        (
            p.get("cpu", p.get("cpu_after_all_ready", {})).get("foreign_busy_cores", 0.0)
            for p in phases.values()
        ),
        default=0.0,
    )
    return {
        "benchmark": "scale",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "edges": plan.edges,
        "replicas": plan.replicas,
        "edge_p95_ms": steady["edge_answers"]["p95_ms"],
        "escalations_per_s": steady["escalations_per_s"],
        "outage_s": plan.outage_s,
        "backlog": outage["backlog"],
        "drain_s": drain["drain_s"],
        "drain_per_s": drain_per_s,
        "lost": checks["lost"],
        "duplicated": checks["duplicated"],
        "reviewers": plan.reviewers,
        "review_rate": review_rate,
        "review_rate_16": review_rate_16,
        "double_assignments": double,
        "latency_ms": {
            "steady": {k: steady["edge_answers"][k] for k in ("p50_ms", "p95_ms", "p99_ms")},
            "outage": {k: outage["edge_answers"][k] for k in ("p50_ms", "p95_ms", "p99_ms")},
            "review_claim": review["claim_ms"],
            "review_answer": review["answer_ms"],
        },
        "targets": {
            "drain_per_s": f">= {TARGET_DRAIN_PER_S:g} escalations/s (and every outbox emptied)",
            "lost": "0",
            "duplicated": "0",
            "review_rate_16": f">= {TARGET_REVIEW_RATE_16:g} items/s at 16 reviewers",
            "double_assignments": "0",
        },
        "targets_met": met,
        "checks": checks,
        "camera_queries": len(ledger.shots),
        "camera_errors": sum(1 for s in ledger.shots if not s.ok),
        "camera_answers_not_escalated": sum(1 for s in ledger.shots if s.ok and s.escalated is False),
        "phases": phases,
        # The processes run the code as it was when each started (the replicas restart mid-run).
        "code": code_at_start,
        "code_at_end": code_version(),
        "machine": {
            **machine_info(),
            "loadavg_start": load_start,
            "busy_cores_before_start": round(busy_before, 3),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "max_foreign_busy_cores": foreign,
        "postgres": pg,
        "setup": {
            "startup_s": round(setup_s, 1),
            "steady_rate_per_s": plan.rate,
            "outage_rate_per_s": plan.outage_rate,
            "steady_protocol": plan.steady.as_dict(),
            "review_protocol": plan.review.as_dict(),
            "review_items_seeded": plan.items,
            "drain_timeout_s": plan.drain_timeout_s,
            "edge_config": EDGE_CONFIG,
            "edge_env": {"EDGE_OUTBOX_RETRY_BASE_S": "0.05", **plan.edge_env},
            "updater_env": UPDATER_ENV,
            "cloud": "python -m cloud.app per replica (CLOUD_WORKERS default 1), one cloud worker",
            "gateway": "launcher.cloud_gateway.CloudGateway (nginx, round robin)",
            "cameras": "open loop, round robin over edges, keep-alive connections to edge-api (no edge gateway)",
            "drain": "cameras stopped; every replica started at once; /status polled every 0.5 s",
            "review": "bench.review_queue.measure_reviewers through the gateway; no cameras meanwhile",
        },
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cores(cpu: dict[str, Any]) -> str:
    cores = cpu.get("cores", {})
    parts = [f"{name} {value:.2f}" for name, value in cores.items() if value >= 0.01]
    return ", ".join(parts) + f"; foreign {cpu.get('foreign_busy_cores', 0.0):.2f}"


def print_report(result: dict[str, Any]) -> None:
    met = result["targets_met"]
    targets = result["targets"]

    def verdict(key: str) -> str:
        return "met" if met[key] else "MISSED"

    steady, outage, drain, review = (result["phases"][k] for k in ("steady", "outage", "drain", "review"))
    print()
    print(f"{result['edges']} edges, {result['replicas']} cloud-api replicas behind the cloud gateway")
    print()
    print("| metric | value | target | |")
    print("|---|---:|---|---|")
    rows = [
        (
            "escalations_per_s (steady, cloud rows)",
            _fmt(result["escalations_per_s"]),
            f"offered {steady['offered_rate_per_s']:g}/s",
            "",
        ),
        (
            "edge_p95_ms (steady; p50 / p99)",
            f"{_fmt(result['edge_p95_ms'], 2)} ({_fmt(steady['edge_answers']['p50_ms'], 2)} / {_fmt(steady['edge_answers']['p99_ms'], 2)})",
            "",
            "",
        ),
        (
            "edge p95 ms during the outage (p50 / p99)",
            f"{_fmt(outage['edge_answers']['p95_ms'], 2)} ({_fmt(outage['edge_answers']['p50_ms'], 2)} / {_fmt(outage['edge_answers']['p99_ms'], 2)})",
            "",
            "",
        ),
        (
            "escalation delay p95 ms (steady, edge -> cloud row)",
            _fmt(steady["escalation_delay_ms"]["p95"]),
            "",
            "",
        ),
        ("outage_s / backlog", f"{result['outage_s']:g} s / {result['backlog']}", "", ""),
        ("drain_s", _fmt(result["drain_s"], 2), "", ""),
        ("drain_per_s", _fmt(result["drain_per_s"]), targets["drain_per_s"], verdict("drain_per_s")),
        ("lost", str(result["lost"]), targets["lost"], verdict("lost")),
        ("duplicated", str(result["duplicated"]), targets["duplicated"], verdict("duplicated")),
        (
            f"review_rate ({result['reviewers']} reviewers)",
            _fmt(result["review_rate"]),
            targets["review_rate_16"],
            verdict("review_rate_16"),
        ),
        (
            "double_assignments",
            str(result["double_assignments"]),
            targets["double_assignments"],
            verdict("double_assignments"),
        ),
    ]
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {ok} |")
    checks = result["checks"]
    print()
    print(
        f"camera queries {result['camera_queries']} (errors {result['camera_errors']}, not escalated "
        f"{result['camera_answers_not_escalated']}); escalated {checks['escalated_told']}, rows "
        f"{checks['escalation_rows']}, without review item {checks['escalated_without_review_item']}, rows "
        f"nobody was told about {checks['rows_nobody_was_told_about']}, outbox dead {checks['outbox_dead']}"
    )
    print(
        f"drain: replicas ready after {drain['replicas_ready_s']} s; cloud received "
        f"{_fmt(drain['cloud_received_per_s'])}/s over {_fmt(drain['cloud_received_span_s'], 2)} s"
    )
    print()
    print("CPU cores by phase:")
    print(f"  steady : {_cores(steady['cpu'])}")
    print(f"  outage : {_cores(outage['cpu'])}")
    print(f"  drain  : {_cores(drain['cpu_after_all_ready'])}")
    print(f"  review : {_cores(review.get('cpu', {}))}")
    if result["max_foreign_busy_cores"] > QUIET_CORES:
        print(
            f"WARNING: other work on this machine used up to {result['max_foreign_busy_cores']:.2f} of "
            f"{result['machine']['cpu_count']} cores during the measurements; the numbers are skewed."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="4 edges, a 20 s outage, short windows (smoke run)"
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/scale[.quick].json)")
    parser.add_argument("--edges", type=int, default=None, help="edges (default 20; quick 4)")
    parser.add_argument("--replicas", type=int, default=2, help="cloud-api replicas (default 2)")
    parser.add_argument(
        "--outage-s", type=float, default=None, help="cloud outage seconds (default 300; quick 20)"
    )
    parser.add_argument(
        "--reviewers", type=int, default=16, help="reviewers in the review phase (default 16)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="steady escalating queries/s, all edges (default 50; quick 20)",
    )
    parser.add_argument(
        "--outage-rate", type=float, default=None, help="queries/s during the outage (default 30; quick 20)"
    )
    parser.add_argument(
        "--retry-max-s",
        type=float,
        default=2.0,
        help="the edges' outbox retry cap, EDGE_OUTBOX_RETRY_MAX_S (default 2; the test stack's is 0.5)",
    )
    parser.add_argument("--items", type=int, default=0, help="review items seeded (default: plenty)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for other work on the machine to stop before starting",
    )
    args = parser.parse_args(argv)
    return 130 if run_and_write("scale", args, run_benchmark, print_report) is None else 0


if __name__ == "__main__":
    sys.exit(main())
