"""Cloud image-query latency while failed logins hammer the review UI's login form.

    python -m bench.login_storm [--quick] [--output PATH] [--storm 50] [--callers 1]

A fresh PostgreSQL database and `python -m cloud.app` on a free port, as the tests start them, with
one detector. `--callers` devices post a small JPEG to `POST /device-api/v1/image-queries` back to back
(closed loop) and their latencies are recorded in two phases: idle, then while `--storm` clients post
wrong passwords to `/login` as fast as they are answered. Each storm attempt uses a new username and a
new client address (X-Forwarded-For, which the cloud trusts from loopback), the worst case for the
server: the throttle never short-circuits them, so each one asks for a scrypt check.

Each phase has a warm-up, then fixed windows (`window_s`, `windows` of them); latency percentiles
(p50, p95, p99) come from the image queries that finished inside the windows. The storm's answers are
counted by status (401 wrong password, 429 throttled or busy). Goal: p95 under the storm within 2x of
idle (`ratio_p95`, `within_goal`).

`--quick` (1 s windows, short warm-up) is a smoke run and writes `login_storm.quick.json` unless
`--output` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import itertools
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.edge_throughput import code_version, run_and_write
from tests.support.cloud import DEVICE_TOKEN, CloudServer, TestDatabase
from tests.support.cloud_factories import CloudFactory

IQ_PATH = "/device-api/v1/image-queries"
GOAL_RATIO = 2.0


@dataclass(frozen=True)
class Protocol:
    warmup_s: float
    window_s: float
    windows: int


FULL = Protocol(warmup_s=3.0, window_s=5.0, windows=4)
QUICK = Protocol(warmup_s=0.5, window_s=1.0, windows=3)


@dataclass
class Recorder:
    """(finish time, latency) of every image query, and the storm's answers by status."""

    latencies: list[tuple[float, float]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    storm: Counter[int] = field(default_factory=Counter)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 200)).save(out, format="JPEG")
    return out.getvalue()


async def query_loop(http: httpx.AsyncClient, detector_id: str, image: bytes, rec: Recorder) -> None:
    while True:
        start = time.perf_counter()
        try:
            resp = await http.post(IQ_PATH, params={"detector_id": detector_id}, content=image)
        except httpx.HTTPError as exc:
            rec.failures[type(exc).__name__] += 1
            continue
        end = time.perf_counter()
        if resp.status_code == 200:
            rec.latencies.append((end, end - start))
        else:
            rec.failures[f"HTTP {resp.status_code}"] += 1


async def storm_loop(http: httpx.AsyncClient, index: int, rec: Recorder) -> None:
    for n in itertools.count():
        address = f"10.{index % 250}.{(n // 250) % 250}.{n % 250 + 1}"
        try:
            resp = await http.post(
                "/login",
                data={"username": f"storm-{index}-{n}", "password": "not the password"},
                headers={"x-forwarded-for": address},
            )
        except httpx.HTTPError:
            rec.storm[0] += 1
            continue
        rec.storm[resp.status_code] += 1


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ms = np.asarray(values) * 1e3
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}


def storm_process(
    url: str, clients: int, ready: EventType, stop: EventType, out: Queue[dict[int, int]]
) -> None:
    """The storm, in a process of its own, so its client work does not delay the measured queries."""

    async def main() -> dict[int, int]:
        rec = Recorder()
        limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as web:
            tasks = [asyncio.create_task(storm_loop(web, i, rec)) for i in range(clients)]
            ready.set()
            await asyncio.to_thread(stop.wait)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return dict(rec.storm)

    out.put(asyncio.run(main()))


async def phase(
    url: str,
    detector_id: str,
    image: bytes,
    protocol: Protocol,
    callers: int,
    storm: int,
) -> dict[str, Any]:
    """One phase: callers (and, if storm > 0, the storm) run through warm-up and the windows."""
    rec = Recorder()
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    storm_proc = ctx.Process(target=storm_process, args=(url, storm, ready, stop, out), daemon=True)
    if storm:
        storm_proc.start()  # and wait for it to be storming: its start-up must not fall in the windows
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the storm process did not start")
    headers = {"x-api-token": DEVICE_TOKEN, "content-type": "image/jpeg"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, trust_env=False) as dev:
        tasks = [asyncio.create_task(query_loop(dev, detector_id, image, rec)) for _ in range(callers)]
        try:
            await asyncio.sleep(protocol.warmup_s)
            bounds = []
            for _ in range(protocol.windows):
                start = time.perf_counter()
                await asyncio.sleep(protocol.window_s)
                bounds.append((start, time.perf_counter()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stop.set()
    statuses: dict[int, int] = {}
    if storm:
        statuses = await asyncio.to_thread(out.get, True, 60)
        storm_proc.join(10)
    inside = [lat for end, lat in rec.latencies if any(lo <= end < hi for lo, hi in bounds)]
    per_window = [sum(1 for end, _ in rec.latencies if lo <= end < hi) for lo, hi in bounds]
    elapsed = bounds[-1][1] - bounds[0][0] + protocol.warmup_s
    return {
        "image_queries": len(inside),
        "image_queries_per_window": per_window,
        "latency_ms": percentiles(inside),
        "image_query_failures": dict(rec.failures),
        "storm_clients": storm,
        # Over the whole phase (warm-up included): the storm runs from its start to its end.
        "storm_logins_per_s": round(sum(statuses.values()) / elapsed, 1) if storm else 0.0,
        "storm_statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


async def compare(
    url: str, detector_id: str, protocol: Protocol, callers: int = 1, storm: int = 50
) -> dict[str, Any]:
    """Idle, then under the storm; the ratio of their p95s."""
    image = jpeg()
    idle = await phase(url, detector_id, image, protocol, callers, 0)
    stormy = await phase(url, detector_id, image, protocol, callers, storm)
    p95_idle, p95_storm = idle["latency_ms"]["p95"], stormy["latency_ms"]["p95"]
    ratio = round(p95_storm / p95_idle, 2) if p95_idle and p95_storm else None
    return {
        "idle": idle,
        "storm": stormy,
        "ratio_p95": ratio,
        "within_goal": ratio is not None and ratio <= GOAL_RATIO,
    }


def table(result: dict[str, Any]) -> str:
    rows = [f"{'phase':<8} {'queries':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'logins/s':>9}  storm"]
    for name in ("idle", "storm"):
        ph = result[name]
        lat = ph["latency_ms"]
        rows.append(
            f"{name:<8} {ph['image_queries']:>8} {lat['p50']!s:>8} {lat['p95']!s:>8} {lat['p99']!s:>8}"
            f" {ph['storm_logins_per_s']:>9}  {ph['storm_statuses'] or '-'}"
        )
    rows.append(f"p95 storm / idle: {result['ratio_p95']} (goal <= {GOAL_RATIO:g})")
    return "\n".join(rows)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    protocol = QUICK if args.quick else FULL
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="login-storm-") as tmp:
        workdir = Path(tmp)
        db = TestDatabase(workdir).create()
        server: CloudServer | None = None
        try:
            server = CloudServer(db.url, workdir, env={"CLOUD_LOG_LEVEL": "warning"}).start()
            detector_id = CloudFactory(db.url, server.data_dir / "blobs").detector(name="login-storm")
            log(f"cloud on {server.url}; database {db.name}; {args.storm} storm clients")
            result = asyncio.run(compare(server.url, detector_id, protocol, args.callers, args.storm))
        finally:
            if server is not None:
                server.stop()
            db.drop()
    return {
        "benchmark": "login_storm",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "protocol": {
            "warmup_s": protocol.warmup_s,
            "window_s": protocol.window_s,
            "windows": protocol.windows,
        },
        "callers": args.callers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "code": code_version(),
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s windows and a short warm-up (smoke run)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/login_storm[.quick].json)"
    )
    parser.add_argument("--storm", type=int, default=50, help="concurrent clients posting wrong passwords")
    parser.add_argument("--callers", type=int, default=1, help="devices posting image queries back to back")
    args = parser.parse_args(argv)
    result = run_and_write("login_storm", args, run_benchmark, lambda r: print(table(r)))
    return 130 if result is None else 0


if __name__ == "__main__":
    raise SystemExit(main())
