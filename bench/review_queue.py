"""Review queue throughput: reviewers claiming and answering over HTTP against the real cloud process.

    python -m bench.review_queue [--quick] [--output PATH] [--reviewers 1,4,16] [--workers N]

A fresh PostgreSQL database (the local server, durable commits as configured there) and `python -m
cloud.app` on a free port, as the tests start them, with CLOUD_WORKERS=2 (one per core of the 2-core
machine the target is set for; `--workers` changes it). For each reviewer count a new detector is seeded
with more pending items than the run can answer, and that many reviewers, each logged in with its own
account (session cookie) and its own keep-alive connection, loop as the labeling page does: claim
(`POST /api/v1/review/claim?detector_id=`) once, then answer with the next claim in the same request
(`POST /api/v1/review/items/{id}/answer?next=true&detector_id=`), so one item is one round trip; a
reviewer whose answer brings no next item claims again. Throughput is items per second.

Measurement follows perf_analyzer (bench/loadgen.py): a warm-up, then fixed windows until the last 3
agree on throughput within 10 % (at most 10 windows; `stabilized` records whether they did). Claim and
answer latencies (p50/p95/p99) come from the items finished in those windows. CPU time of the cloud
process(es), of the PostgreSQL server's processes and of the load generator is sampled over the same
windows, with the machine's total, so other work on the machine shows up as `foreign_busy_cores`.

The load generator is one uvloop event loop with a minimal HTTP/1.1 client (tens of microseconds per
request), so it takes as little CPU as possible from the cloud and PostgreSQL on a small machine.

Afterwards the database is checked: no item holds two standing labels, every answer the reviewers were
told succeeded is in the database under the reviewer who gave it (and nothing else is), and no item was
claimed by two reviewers whose holds (claim response to answer response) overlap. Their sum is
`double_assignments`, which must be 0.

`--quick` (1 s windows, short warm-up) is a smoke run and writes `review_queue.quick.json` unless
`--output` says otherwise. Headline keys: `rate_16` (items/s at 16 reviewers; target >= 300) and
`double_assignments`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import numpy as np

from bench.edge_throughput import code_version, terminate_as_interrupt, wait_until_quiet
from bench.loadgen import (
    CpuMeter,
    CpuSnapshot,
    MeasurementProtocol,
    Sample,
    _proc_ticks,
    measure,
    process_group_pids,
)
from cloud.app.auth import SESSION_COOKIE
from tests.support.cloud import PG_ADMIN_URL, CloudServer, TestDatabase
from tests.support.cloud_factories import CloudFactory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_RATE_16 = 300.0
QUIET_CORES = 0.25
FULL = MeasurementProtocol(warmup_s=2.0, window_s=5.0, stable_windows=3, tolerance=0.10, max_windows=10)
QUICK = MeasurementProtocol(warmup_s=0.5, window_s=1.0, stable_windows=3, tolerance=0.10, max_windows=5)
# Seeded per reviewer count: enough for the whole run at well above the target rate.
ITEMS_FULL = 30_000
ITEMS_QUICK = 6_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- one reviewer over one keep-alive connection -----------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """Just enough HTTP/1.1 for two request kinds over one keep-alive connection."""

    def __init__(self, host: str, port: int, cookie: str) -> None:
        self.host, self.port = host, port
        # Origin, as a browser sends it: the cloud refuses cookie-authenticated writes without one.
        self._head = (
            f"Host: {host}:{port}\r\nOrigin: http://{host}:{port}\r\nCookie: {SESSION_COOKIE}={cookie}\r\n"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        kind = "Content-Type: application/json\r\n" if body else ""
        writer.write(
            f"POST {path} HTTP/1.1\r\n{self._head}{kind}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise HttpError("chunked responses are not expected here")
        data = await reader.readexactly(length) if length and status not in (204, 304) else b""
        if close:
            await self.aclose()
        return status, data

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@dataclass
class Hold:
    """One claimed item: who, and when (monotonic) the claim and the answer came back."""

    item_id: int
    reviewer: int
    claimed: float
    released: float
    answer_status: int
    claim_ms: float | None  # None: claimed within the previous answer
    answer_ms: float


@dataclass
class Ledger:
    holds: list[Hold] = field(default_factory=list)
    empty_claims: int = 0


class ReviewerCaller:
    """One call = one item: answer the item held (claimed first when none is) and receive the next."""

    def __init__(self, index: int, conn: Connection, detector_id: str, ledger: Ledger) -> None:
        self.index = index
        self.conn = conn
        self.ledger = ledger
        self.claim_path = f"/api/v1/review/claim?detector_id={detector_id}"
        self.answer_query = f"?next=true&detector_id={detector_id}"
        self.bodies = [b'{"label":"YES"}', b'{"label":"NO"}']
        # (item id, when its claim came back, how long that claim took), from the last answer's `next`.
        self.held: tuple[int, float, float | None] | None = None

    async def __call__(self) -> Sample:
        clock = time.perf_counter
        try:
            if self.held is None:
                t0 = clock()
                status, body = await self.conn.post(self.claim_path)
                t1 = clock()
                if status == 204:
                    self.ledger.empty_claims += 1
                    return Sample(False, 204, None, "queue ran dry")
                if status != 200:
                    return Sample(False, status, None, f"claim HTTP {status}: {body[:120]!r}")
                self.held = (int(json.loads(body)["id"]), t1, (t1 - t0) * 1e3)
            item_id, claimed, claim_ms = self.held
            self.held = None
            t1 = clock()
            status, body = await self.conn.post(
                f"/api/v1/review/items/{item_id}/answer{self.answer_query}", self.bodies[item_id % 2]
            )
            t2 = clock()
            if status == 200:
                following = json.loads(body).get("next")
                if following is not None:
                    # Claimed within the answer: its claim took no round trip of its own.
                    self.held = (int(following["id"]), t2, None)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            HttpError,
            ValueError,
        ) as exc:
            await self.conn.aclose()
            self.held = None
            return Sample(False, 0, None, type(exc).__name__)
        answer_ms = (t2 - t1) * 1e3
        self.ledger.holds.append(Hold(item_id, self.index, claimed, t2, status, claim_ms, answer_ms))
        if status != 200:
            return Sample(False, status, None, f"answer HTTP {status}: {body[:120]!r}")
        return Sample(
            True, 200, {"answer": answer_ms} if claim_ms is None else {"claim": claim_ms, "answer": answer_ms}
        )

    async def aclose(self) -> None:
        await self.conn.aclose()


# -- CPU of PostgreSQL ------------------------------------------------------------------------------------


def postgres_pids() -> list[int]:
    """Every process of the local PostgreSQL server (postmaster, background workers, backends)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv0 = fh.read(64).split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.startswith(b"postgres") or argv0.endswith(b"/postgres"):
            pids.append(int(entry))
    return pids


class PostgresCpu:
    """CPU ticks of the PostgreSQL server's processes, backends that come and go included.

    Connection pools close and open backends under load, so a fixed pid list undercounts: a thread
    rescans every 100 ms and keeps each pid's latest ticks (a backend that exits loses at most its
    last 100 ms). The server is shared, so other databases' work is counted too: on a quiet machine
    that is nothing, and `foreign_busy_cores` shows when it is not.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.latest: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._scan_forever, name="pg-cpu", daemon=True)

    def _scan(self) -> None:
        seen = {pid: _proc_ticks(pid) for pid in postgres_pids()}
        with self.lock:
            for pid, ticks in seen.items():
                if ticks >= self.latest.get(pid, 0):
                    self.latest[pid] = ticks

    def _scan_forever(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self._scan()

    def total(self) -> int:
        self._scan()
        with self.lock:
            return sum(self.latest.values())

    def __enter__(self) -> PostgresCpu:
        self._scan()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)


class BenchMeter(CpuMeter):
    """CpuMeter plus a `postgres` group measured by PostgresCpu."""

    def __init__(self, groups: dict[str, Sequence[int]], postgres: PostgresCpu) -> None:
        super().__init__(groups)
        self.postgres = postgres

    def snapshot(self) -> CpuSnapshot:
        snap = super().snapshot()
        return CpuSnapshot(
            snap.at, snap.machine_busy, snap.machine_total, {**snap.groups, "postgres": self.postgres.total()}
        )


# -- one reviewer count ------------------------------------------------------------------------------------


T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """One coroutine on a fresh uvloop event loop (the cloud serves on uvloop too)."""
    import uvloop

    async def main() -> T:
        return await factory()

    return uvloop.run(main())


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def _login(url: str, username: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        resp = await client.post("/login", data={"username": username, "password": password})
        if resp.status_code != 303:
            raise RuntimeError(f"login failed for {username}: HTTP {resp.status_code}")
        return resp.cookies[SESSION_COOKIE]


async def measure_reviewers(
    server: CloudServer,
    cookies: list[str],
    detector_id: str,
    protocol: MeasurementProtocol,
    meter: CpuMeter,
) -> tuple[dict[str, Any], Ledger]:
    ledger = Ledger()
    callers = [
        ReviewerCaller(i, Connection("127.0.0.1", server.port, cookie), detector_id, ledger)
        for i, cookie in enumerate(cookies)
    ]
    marks: dict[str, float] = {}
    hooks = (
        lambda: marks.__setitem__("start", time.perf_counter()),
        lambda: marks.__setitem__("end", time.perf_counter()),
    )
    result = await measure(callers, protocol, meter, None, hooks)
    # The stable windows are the last `windows_used` before the end mark.
    end = marks.get("end", time.perf_counter())
    since = end - result["windows_used"] * protocol.window_s
    window = [h for h in ledger.holds if since <= h.released <= end and h.answer_status == 200]
    claims = [h.claim_ms for h in window if h.claim_ms is not None]
    answers = [h.answer_ms for h in window]
    result["items_per_s"] = result["throughput_rps"]
    result["claim_ms"] = {"p50": _pct(claims, 50), "p95": _pct(claims, 95), "p99": _pct(claims, 99)}
    # An answer's time includes claiming the next item (`?next=true`); `claim_ms` is the separate claims.
    result["answer_ms"] = {"p50": _pct(answers, 50), "p95": _pct(answers, 95), "p99": _pct(answers, 99)}
    result["separate_claims"] = len(claims)
    result["queue_ran_dry"] = ledger.empty_claims
    return result, ledger


# -- checks against the database ---------------------------------------------------------------------------


def overlapping_holds(holds: list[Hold]) -> tuple[int, int]:
    """(items claimed more than once, items held by two reviewers at overlapping times)."""
    by_item: dict[int, list[Hold]] = defaultdict(list)
    for h in holds:
        by_item[h.item_id].append(h)
    repeated = overlapping = 0
    for held in by_item.values():
        if len(held) < 2:
            continue
        repeated += 1
        spans = sorted((h.claimed, h.released, h.reviewer) for h in held)
        if any(b[0] < a[1] and a[2] != b[2] for a, b in itertools.pairwise(spans)):
            overlapping += 1
    return repeated, overlapping


async def verify(database_url: str, ledgers: dict[str, Ledger], user_ids: list[str]) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT review_item_id FROM labels WHERE undone_at IS NULL"
            " AND review_item_id IS NOT NULL GROUP BY review_item_id HAVING count(*) > 1) AS d"
        )
        rows = await conn.fetch("SELECT review_item_id, user_id FROM labels WHERE undone_at IS NULL")
    finally:
        await conn.close()
    in_db = {r["review_item_id"]: r["user_id"] for r in rows}
    told_ok = {
        h.item_id: user_ids[h.reviewer]
        for ledger in ledgers.values()
        for h in ledger.holds
        if h.answer_status == 200
    }
    missing = sum(1 for item, user in told_ok.items() if in_db.get(item) != user)
    unexpected = sum(1 for item in in_db if item not in told_ok)
    repeated = overlapping = 0
    for ledger in ledgers.values():
        r, o = overlapping_holds(ledger.holds)
        repeated += r
        overlapping += o
    conflicts = sum(1 for ledger in ledgers.values() for h in ledger.holds if h.answer_status == 409)
    return {
        "labels_in_db": len(in_db),
        "answers_acknowledged": len(told_ok),
        "items_with_two_standing_labels": int(doubled),
        "acknowledged_answers_missing_or_misattributed": missing,
        "labels_nobody_was_told_about": unexpected,
        "items_claimed_more_than_once": repeated,
        "items_held_by_two_reviewers_at_once": overlapping,
        "answers_refused_409": conflicts,
        "double_assignments": int(doubled) + overlapping + missing + unexpected,
    }


# -- orchestration ------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def postgres_settings(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        names = ("server_version", "synchronous_commit", "fsync", "max_connections", "shared_buffers")
        return {n: await conn.fetchval(f"SHOW {n}") for n in names}
    finally:
        await conn.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    protocol = QUICK if args.quick else FULL
    counts = [int(x) for x in args.reviewers.split(",")]
    items_per_level = args.items or (ITEMS_QUICK if args.quick else ITEMS_FULL)
    started = dt.datetime.now(dt.UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    busy_before = wait_until_quiet(args.wait_quiet, QUIET_CORES)
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        workdir = Path(tmp)
        db = TestDatabase(workdir).create()
        server: CloudServer | None = None
        try:
            server = CloudServer(
                db.url,
                workdir,
                env={
                    "CLOUD_WORKERS": str(args.workers),
                    "CLOUD_REVIEW_LEASE_S": "60",
                    "CLOUD_LOG_LEVEL": "warning",
                },
            ).start()
            factory = CloudFactory(db.url, server.data_dir / "blobs")
            log(f"cloud on {server.url} ({args.workers} worker(s)); database {db.name}")
            reviewers = [factory.reviewer() for _ in range(max(counts))]
            cookies = [run(functools.partial(_login, server.url, r.username, r.password)) for r in reviewers]
            assert server.process is not None and server.process.pid is not None
            cloud_pids = process_group_pids(os.getpgid(server.process.pid))
            levels: dict[str, Any] = {}
            ledgers: dict[str, Ledger] = {}
            for n in counts:
                detector_id = factory.detector(name=f"bench-{n}-reviewers")
                log(f"seeding {items_per_level} items for {n} reviewer(s)...")
                factory.review_items(detector_id, items_per_level)
                with PostgresCpu() as pg_cpu:
                    meter = BenchMeter({"cloud": cloud_pids, "loadgen": [os.getpid()]}, pg_cpu)
                    res, ledger = run(
                        functools.partial(
                            measure_reviewers, server, cookies[:n], detector_id, protocol, meter
                        )
                    )
                levels[str(n)] = res
                ledgers[str(n)] = ledger
                log(
                    f"  {n:>2} reviewers: {res['items_per_s']:8.1f} items/s  claim p50 {res['claim_ms']['p50']} ms"
                    f"  answer p50 {res['answer_ms']['p50']} ms  [{res['windows_measured']} windows]"
                    + ("" if res["stabilized"] else " (not stable)")
                    + (f" errors={res['errors_including_warmup']}" if res["errors_including_warmup"] else "")
                )
            checks = run(functools.partial(verify, db.url, ledgers, [r.user_id for r in reviewers]))
            pg = run(functools.partial(postgres_settings, PG_ADMIN_URL))
        finally:
            if server is not None:
                server.stop()
            db.drop()
    rate_16 = levels.get("16", {}).get("items_per_s")
    return {
        "benchmark": "review_queue",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "rate_16": rate_16,
        "double_assignments": checks["double_assignments"],
        "targets": {"rate_16": f">= {TARGET_RATE_16} items/s", "double_assignments": "0"},
        "targets_met": {
            "rate_16": rate_16 is not None and rate_16 >= TARGET_RATE_16,
            "double_assignments": checks["double_assignments"] == 0,
        },
        "checks": checks,
        "code": code_version(),
        "machine": {
            **machine_info(),
            "loadavg_start": load_start,
            "busy_cores_before_start": round(busy_before, 3),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "postgres": pg,
        "protocol": protocol.as_dict(),
        "setup": {
            "reviewers": counts,
            "cloud_workers": args.workers,
            "items_seeded_per_level": items_per_level,
            "loop": "claim (POST /api/v1/review/claim?detector_id=) then answer; one item = both",
            "auth": "one account per reviewer, browser session cookie from POST /login",
            "connections": "one keep-alive HTTP/1.1 connection per reviewer, minimal client on uvloop",
            "database": "fresh database on the local PostgreSQL server (its durability settings above)",
        },
        "levels": levels,
        "max_foreign_busy_cores": max(
            (lv.get("cpu", {}).get("foreign_busy_cores", 0.0) for lv in levels.values()), default=0.0
        ),
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(result: dict[str, Any]) -> None:
    print()
    print(
        "| reviewers | items/s | claim p50 | p95 | p99 ms | answer p50 | p95 | p99 ms | errors | stable "
        "| cloud cores | postgres cores | loadgen cores | foreign cores |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for n, lv in result["levels"].items():
        cores = lv.get("cpu", {}).get("cores", {})
        print(
            f"| {n} | {_fmt(lv['items_per_s'], 1)} | {_fmt(lv['claim_ms']['p50'])} | {_fmt(lv['claim_ms']['p95'])} "
            f"| {_fmt(lv['claim_ms']['p99'])} | {_fmt(lv['answer_ms']['p50'])} | {_fmt(lv['answer_ms']['p95'])} "
            f"| {_fmt(lv['answer_ms']['p99'])} | {lv['errors_including_warmup']} | {'y' if lv['stabilized'] else 'n'} "
            f"| {_fmt(cores.get('cloud'))} | {_fmt(cores.get('postgres'))} | {_fmt(cores.get('loadgen'))} "
            f"| {_fmt(lv.get('cpu', {}).get('foreign_busy_cores'))} |"
        )
    checks = result["checks"]
    print()
    print(
        f"double assignments: {checks['double_assignments']}  (two standing labels: "
        f"{checks['items_with_two_standing_labels']}, overlapping holds: {checks['items_held_by_two_reviewers_at_once']}, "
        f"acknowledged but missing: {checks['acknowledged_answers_missing_or_misattributed']}, "
        f"unacknowledged labels: {checks['labels_nobody_was_told_about']}; "
        f"items claimed more than once: {checks['items_claimed_more_than_once']}; "
        f"{checks['labels_in_db']} labels for {checks['answers_acknowledged']} acknowledged answers)"
    )
    rate = result["rate_16"]
    print(
        f"rate_16 = {_fmt(rate, 1)} items/s  (target {result['targets']['rate_16']}; "
        f"{'met' if result['targets_met']['rate_16'] else 'MISSED'})"
    )
    foreign = result["max_foreign_busy_cores"]
    if foreign > QUIET_CORES:
        print(
            f"WARNING: other work on this machine used up to {foreign:.2f} of "
            f"{result['machine']['cpu_count']} cores during the measurements; the numbers are skewed."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s windows and a short warm-up (smoke run)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/review_queue[.quick].json)"
    )
    parser.add_argument("--reviewers", default="1,4,16", help="comma-separated reviewer counts")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="cloud API worker processes (CLOUD_WORKERS; default: one per core of a 2-core box)",
    )
    parser.add_argument(
        "--items", type=int, default=0, help="items seeded per reviewer count (default: plenty)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for other work on the machine to stop before measuring",
    )
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        try:
            result = run_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; everything started was stopped")
            return 130
    output = args.output or RESULTS_DIR / ("review_queue.quick.json" if args.quick else "review_queue.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nwrote {output}")
    errors = sum(lv["errors_including_warmup"] for lv in result["levels"].values())
    return 0 if result["double_assignments"] == 0 and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
