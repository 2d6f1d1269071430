"""Edge throughput: the model runtime in-process versus the full chain, client → nginx → edge-api → inference.

    python -m bench.edge_throughput [--quick] [--output PATH] [--profile]

For each bundle (the 28x28 demo digit detector and a 224x224 camera-size CNN fed 640x480 JPEG frames)
and each concurrency (1, 4, 16) it measures, in one run:

(a) in-process: `ModelRuntime.predict` on the same frames. `concurrency` asyncio callers submit to a
    thread pool of `os.cpu_count()` workers (intra-op threads 1), which is exactly how the inference
    service runs predict (INFERENCE_WORKER_THREADS defaults to the CPU count). So real parallelism is
    capped at the number of cores, and at concurrency 16 latency includes waiting for a worker, as it
    does behind the service.
(b) the chain: `concurrency` closed-loop clients, each with one keep-alive connection, POST the frame
    to the nginx gateway (`/device-api/v1/image-queries`); every answer must be a 200.

The load generator is one uvloop event loop in this process with a minimal HTTP/1.1 client (tens of
microseconds per request; `--client httpx` swaps in httpx.AsyncClient for comparison). While the chain
is measured this process runs nothing else (its in-process model and predict threads sit idle, and
the threads that collect child output sleep on pipes), so a separate load-generator process would isolate nothing
more: the services and the load generator share the two cores either way, and the CPU the load
generator takes is measured and reported (`cpu.cpu_ms_per_request.loadgen`).

Measurement follows perf_analyzer: a warm-up, then fixed windows repeated until the last 3 agree on
throughput within 10% (at most 10 windows; `stabilized` records whether they did). Throughput and
p50/p95/p99 latency come from those stable windows. CPU time of every process involved (nginx master
and workers, edge-api, inference, the load generator) and of the whole machine is sampled over the
same windows, so each point also says where the cores went and how busy the machine was with work
that is not ours (`foreign_busy_cores`).

The stack is started once; for each bundle and concurrency (a) is measured and then (b), so the two
numbers of a ratio are taken under the same background conditions (the stack sits idle during (a);
its idle CPU is measured too and not counted as foreign).

Then, at concurrency 1, the same load is sent through the chain, straight to edge-api and straight to
the inference service, one window each in turn for three rounds ("hops"); the `Server-Timing` header
of each answer (edge, inference, decode, model) and the differences between the three targets split
a request's latency into its hops.

`--quick` (1 s windows, short warm-up) is a smoke run and writes `edge_throughput.quick.json` unless
`--output` says otherwise, so it never overwrites a real result. `--profile` instead runs the chain
with edge-api and inference under cProfile and writes their hottest functions to
`bench/results/profile/` (or `--profile-dir`).

Headline keys in the JSON: `ratio_c16` (chain / in-process throughput at concurrency 16, camera
bundle; target ≥ 0.8) and `added_p50_ms_c1` (chain p50 − in-process p50 at concurrency 1, digit
bundle; target ≤ 3 ms). `cpu_ratio_c16` (in-process CPU per request / CPU per request of all chain
processes, camera, concurrency 16) is what `ratio_c16` tends to on a dedicated machine: when other work
takes CPU during a run, the four chain processes win a larger share of it than the single in-process
benchmark does, which flatters `ratio_c16`; the CPU ratio does not depend on that share.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from bench.fixtures import BenchBundle, bench_model_root, bundle_dir, load_bundles
from bench.loadgen import (
    Caller,
    CpuMeter,
    HttpxCaller,
    InProcessCaller,
    MeasurementProtocol,
    RawHttpCaller,
    build_post,
    machine_busy_cores,
    measure,
    run,
    timings_from_json,
    timings_from_server_timing,
)
from bench.stack import BenchStack, edge_only_config
from common.imaging import ImageLimits
from common.runtime import ModelRuntime

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SUBMIT_PATH = "/device-api/v1/image-queries"
TARGET_RATIO_C16 = 0.8
TARGET_ADDED_P50_MS_C1 = 3.0
QUIET_CORES = 0.25
FULL = MeasurementProtocol(warmup_s=2.0, window_s=5.0, stable_windows=3, tolerance=0.10, max_windows=10)
QUICK = MeasurementProtocol(warmup_s=0.5, window_s=1.0, stable_windows=3, tolerance=0.10, max_windows=5)

Breakdown = Callable[[float, dict[str, float]], dict[str, float]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- per-request breakdowns (all in ms) ------------------------------------------------------------------


def inprocess_breakdown(total: float, t: dict[str, float]) -> dict[str, float]:
    decode, model = t.get("decode", 0.0), t.get("model", 0.0)
    return {"total": total, "queue_and_handoff": total - decode - model, "decode": decode, "model": model}


def edge_breakdown(total: float, t: dict[str, float]) -> dict[str, float]:
    """Splits a request that went through edge-api using its Server-Timing header."""
    edge, inference = t.get("edge", 0.0), t.get("inference", 0.0)
    decode, model = t.get("decode", 0.0), t.get("model", 0.0)
    return {
        "total": total,
        "outside_edge_answer": total - edge,
        "edge_answer_own": edge - inference,
        "inference_call_overhead": inference - decode - model,
        "decode": decode,
        "model": model,
    }


def inference_breakdown(total: float, t: dict[str, float]) -> dict[str, float]:
    decode, model = t.get("decode", 0.0), t.get("model", 0.0)
    return {"total": total, "service_overhead": total - decode - model, "decode": decode, "model": model}


# -- the two kinds of measurement ------------------------------------------------------------------------


class InProcess:
    """One bundle loaded in this process, predicting on a pool of `threads` workers."""

    def __init__(self, model_root: Path, bundle: BenchBundle, threads: int) -> None:
        self.bundle = bundle
        self.threads = threads
        self.limits = ImageLimits()
        self.runtime = ModelRuntime(bundle_dir(model_root, bundle.detector_id), intra_op_threads=1)
        self.provider = self.runtime.provider
        self.runtime.warmup()
        for frame in bundle.frames[:4]:
            self.runtime.predict(frame, self.limits)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bench-predict")

    def measure(
        self, c: int, protocol: MeasurementProtocol, idle_groups: dict[str, list[int]]
    ) -> dict[str, Any]:
        """`idle_groups`: the (idle) stack's processes, so their CPU is not counted as foreign."""
        step = max(1, len(self.bundle.frames) // c)
        callers: list[Caller] = [
            InProcessCaller(self.runtime, self.bundle.frames, i * step, self.pool, self.limits)
            for i in range(c)
        ]
        meter = CpuMeter({"bench": [os.getpid()], **idle_groups})
        res = run(functools.partial(measure, callers, protocol, meter, inprocess_breakdown))
        res["threads"] = self.threads
        return res

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.runtime.close()


def http_callers(
    client: str, port: int, path: str, frames: Sequence[bytes], c: int, timings: Callable[..., Any]
) -> tuple[list[Caller], httpx.AsyncClient | None]:
    step = max(1, len(frames) // c)
    if client == "raw":
        requests = [build_post("127.0.0.1", port, path, f) for f in frames]
        return [RawHttpCaller("127.0.0.1", port, requests, i * step, timings) for i in range(c)], None
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    shared = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30.0, trust_env=False
    )
    return [HttpxCaller(shared, path, frames, i * step, timings) for i in range(c)], shared


def measure_http(
    stack: BenchStack,
    port: int,
    path: str,
    bundle: BenchBundle,
    c: int,
    protocol: MeasurementProtocol,
    client: str,
    timings: Callable[..., Any],
    breakdown: Breakdown,
    on_windows: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    groups: dict[str, Sequence[int]] = {**stack.pid_groups(), "loadgen": [os.getpid()]}
    meter = CpuMeter(groups)

    async def go() -> dict[str, Any]:
        callers, shared = http_callers(client, port, path, bundle.frames, c, timings)
        try:
            return await measure(callers, protocol, meter, breakdown, on_windows)
        finally:
            if shared is not None:
                await shared.aclose()

    result = run(go)
    stack.check_alive()
    return result


def sanity_check(stack: BenchStack, bundles: Sequence[BenchBundle]) -> dict[str, Any]:
    """One request per detector through the gateway: 200, an edge answer, not escalated."""
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=stack.gateway_url, timeout=60.0, trust_env=False) as client:
        for b in bundles:
            resp = client.post(SUBMIT_PATH, params={"detector_id": b.detector_id}, content=b.frames[0])
            if resp.status_code != 200:
                raise RuntimeError(f"{b.key}: gateway answered {resp.status_code}: {resp.text[:300]}")
            body = resp.json()
            diag = body.get("intellioptics") or {}
            if not (body.get("result") or {}).get("from_edge") or diag.get("escalated"):
                raise RuntimeError(f"{b.key}: expected an edge answer without escalation, got {body}")
            if "server-timing" not in resp.headers:
                raise RuntimeError(f"{b.key}: edge-api sent no Server-Timing header")
            seen[b.key] = {
                "label": body["result"]["label"],
                "confidence": body["result"]["confidence"],
                "escalation_reason": diag.get("escalation_reason"),
                "server_timing": resp.headers["server-timing"],
            }
    return seen


# -- reporting -------------------------------------------------------------------------------------------


def _short(res: dict[str, Any]) -> str:
    flag = "" if res["stabilized"] else " (not stable)"
    errors = f" errors={res['errors_including_warmup']}" if res.get("errors_including_warmup") else ""
    return (
        f"{res['throughput_rps']:8.1f} req/s  p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms"
        f"  [{res['windows_measured']} windows]{flag}{errors}"
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether tracked files differed from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        proc = subprocess.run(
            ["git", *argv], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "", "dirty": None}


def machine_info(provider: str | None) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    nginx = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        from launcher.gateway import nginx_binary

        proc = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
        nginx = (proc.stderr or proc.stdout).strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "provider": provider,
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": nginx,
    }


HOP_ROUNDS = 3
HOP_LABELS = {
    "client_observed": "client-observed latency through the chain",
    "nginx": "nginx (chain minus edge-direct, outside edge-api's _answer)",
    "edge_api_outside_answer": "edge-api outside _answer: HTTP server, routing, idempotency lookup, sqlite record",
    "edge_api_answer_own": "edge-api inside _answer, excluding the inference call",
    "edge_api_inference_client": "edge-api -> inference HTTP client (edge's inference call minus direct overhead)",
    "inference_service": "inference service: HTTP server, checks, thread handoff, JSON (+ loopback, lean client)",
    "decode": "decode (inside inference)",
    "model": "model: primary + OODD ONNX (inside inference)",
}


def _hop_rows(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    cb = runs["chain"]["breakdown_p50_ms"]
    eb = runs["edge_direct"]["breakdown_p50_ms"]
    ib = runs["inference_direct"]["breakdown_p50_ms"]
    return {
        "client_observed": runs["chain"]["p50_ms"],
        "nginx": cb["outside_edge_answer"] - eb["outside_edge_answer"],
        "edge_api_outside_answer": eb["outside_edge_answer"],
        "edge_api_answer_own": cb["edge_answer_own"],
        "edge_api_inference_client": cb["inference_call_overhead"] - ib["service_overhead"],
        "inference_service": ib["service_overhead"],
        "decode": cb["decode"],
        "model": cb["model"],
    }


def measure_hops(
    stack: BenchStack, b: BenchBundle, c: int, protocol: MeasurementProtocol, client: str
) -> dict[str, Any]:
    """Chain, edge-api direct and inference direct, alternating one window each for HOP_ROUNDS rounds.

    Alternating puts the three under the same background load, so differences between them are
    the cost of the hop they skip; each hop's value is the median of its per-round values.
    """
    one = MeasurementProtocol(
        warmup_s=min(1.0, protocol.warmup_s),
        window_s=protocol.window_s,
        stable_windows=1,
        tolerance=1.0,
        max_windows=1,
    )
    submit = f"{SUBMIT_PATH}?detector_id={b.detector_id}"
    targets: dict[str, tuple[int, str, Callable[..., Any], Breakdown]] = {
        "chain": (stack.gateway_port, submit, timings_from_server_timing, edge_breakdown),
        "edge_direct": (stack.edge_port, submit, timings_from_server_timing, edge_breakdown),
        "inference_direct": (
            stack.inference_port,
            f"/infer?detector_id={b.detector_id}",
            timings_from_json,
            inference_breakdown,
        ),
    }
    rounds = []
    for _ in range(HOP_ROUNDS):
        rounds.append(
            {
                name: measure_http(stack, port, path, b, c, one, client, timings, breakdown)
                for name, (port, path, timings, breakdown) in targets.items()
            }
        )
    rows = [_hop_rows(r) for r in rounds]
    return {
        "concurrency": c,
        "rounds": rounds,
        "breakdown_p50_ms": {k: round(float(np.median([row[k] for row in rows])), 3) for k in rows[0]},
        "errors": sum(res["errors_including_warmup"] for r in rounds for res in r.values()),
    }


def hop_table(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-hop p50 latency per bundle and hop concurrency, with the in-process p50 for reference."""
    out: dict[str, dict[str, Any]] = {}
    for key, per in result["bundles"].items():
        for c, hops in per["hops"].items():
            inproc = per["in_process"].get(c, {})
            out.setdefault(key, {})[c] = {**hops["breakdown_p50_ms"], "in_process_p50": inproc.get("p50_ms")}
    return out


def _foreign(res: dict[str, Any]) -> float | None:
    value = res.get("cpu", {}).get("foreign_busy_cores")
    return float(value) if value is not None else None


def _inproc_cpu_ms(res: dict[str, Any]) -> float | None:
    value = res.get("cpu", {}).get("cpu_ms_per_request", {}).get("bench")
    return float(value) if value is not None else None


def _chain_cpu_ms(res: dict[str, Any]) -> float | None:
    per_group = res.get("cpu", {}).get("cpu_ms_per_request", {})
    values = [v for v in per_group.values() if v is not None]
    return round(sum(values), 3) if values else None


def busiest_foreign(result: dict[str, Any]) -> float:
    """The most CPU other work took during any measurement (cores)."""
    values = [0.0]
    for per in result["bundles"].values():
        runs = [*per["in_process"].values(), *per["chain"].values()]
        runs += [r for hops in per["hops"].values() for rnd in hops["rounds"] for r in rnd.values()]
        values += [v for v in map(_foreign, runs) if v is not None]
    return max(values)


def print_report(result: dict[str, Any]) -> None:
    print()
    print(
        "| bundle | conc | in-process req/s | p50 ms | p95 ms | p99 ms | chain req/s | p50 ms | p95 ms "
        "| p99 ms | ratio b/a | added p50 ms | stable a/b | foreign cores a/b | chain errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for key, per in result["bundles"].items():
        for c, a in per["in_process"].items():
            b = per["chain"].get(c, {})
            ratio = per["ratio_by_concurrency"].get(c)
            added = per["added_p50_ms_by_concurrency"].get(c)
            stable = f"{'y' if a['stabilized'] else 'n'}/{'y' if b.get('stabilized') else 'n'}"
            foreign = f"{_fmt(_foreign(a), 1)}/{_fmt(_foreign(b), 1)}"
            print(
                f"| {key} | {c} | {_fmt(a['throughput_rps'], 1)} | {_fmt(a['p50_ms'])} | {_fmt(a['p95_ms'])} "
                f"| {_fmt(a['p99_ms'])} | {_fmt(b.get('throughput_rps'), 1)} | {_fmt(b.get('p50_ms'))} "
                f"| {_fmt(b.get('p95_ms'))} | {_fmt(b.get('p99_ms'))} | {_fmt(ratio, 3)} | {_fmt(added)} "
                f"| {stable} | {foreign} | {b.get('errors_including_warmup', '-')} |"
            )
    print()
    print("CPU per chain request (ms) and cores busy during the stable windows:")
    print()
    print("| bundle | conc | nginx | edge-api | inference | loadgen | ours (cores) | foreign (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, per in result["bundles"].items():
        for c, b in per["chain"].items():
            cpu = b.get("cpu", {})
            ms = cpu.get("cpu_ms_per_request", {})
            print(
                f"| {key} | {c} | {_fmt(ms.get('nginx'))} | {_fmt(ms.get('edge-api'))} "
                f"| {_fmt(ms.get('inference'))} | {_fmt(ms.get('loadgen'))} "
                f"| {_fmt(cpu.get('ours_busy_cores'))} | {_fmt(cpu.get('foreign_busy_cores'))} |"
            )
    print()
    print("Chain latency breakdown, p50 of per-request values (ms), from Server-Timing:")
    print()
    print("| bundle | conc | total | outside edge _answer | edge own | inference hop | decode | model |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, per in result["bundles"].items():
        for c, b in per["chain"].items():
            bd = b.get("breakdown_p50_ms", {})
            print(
                f"| {key} | {c} | {_fmt(bd.get('total'))} | {_fmt(bd.get('outside_edge_answer'))} "
                f"| {_fmt(bd.get('edge_answer_own'))} | {_fmt(bd.get('inference_call_overhead'))} "
                f"| {_fmt(bd.get('decode'))} | {_fmt(bd.get('model'))} |"
            )
    for key, per_c in result.get("hop_breakdown_p50_ms", {}).items():
        for c, rows in per_c.items():
            print()
            print(f"Per-hop p50 (ms), {key} bundle, concurrency {c}:")
            print()
            print("| hop | ms |")
            print("|---|---:|")
            for name, value in rows.items():
                label = HOP_LABELS.get(name, "in-process p50 (decode + model + pool handoff)")
                print(f"| {label} | {_fmt(value, 3)} |")
    print()
    print(
        f"cpu_ratio_c16 = {_fmt(result.get('cpu_ratio_c16'), 3)}  (in-process CPU per request / chain CPU per "
        "request, camera, c=16: the load-robust estimate of ratio_c16)"
    )
    for name in ("ratio_c16", "added_p50_ms_c1"):
        value, target = result.get(name), result["targets"][name]
        print(
            f"{name} = {_fmt(value, 3)}  (target {target}; {'met' if result['targets_met'].get(name) else 'MISSED'})"
        )
    print(f"chain errors: {result['chain_errors_total']}, direct-hop errors: {result['hop_errors_total']}")
    foreign = result["max_foreign_busy_cores"]
    if foreign > QUIET_CORES:
        print(
            f"WARNING: other work on this machine used up to {foreign:.2f} of "
            f"{result['machine']['cpu_count']} cores during the measurements; the numbers are skewed."
        )


# -- orchestration ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped on the way out."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_quiet(max_wait_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait (up to `max_wait_s`) for the machine to be nearly idle; returns the busy cores last seen."""
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy_cores(2.0)
    while busy > threshold and time.monotonic() < deadline:
        log(f"  machine busy ({busy:.2f} cores used by other work); waiting for it to quieten...")
        busy = machine_busy_cores(5.0)
    return busy


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    protocol = QUICK if args.quick else FULL
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    hop_concurrencies = [int(x) for x in args.hop_concurrency.split(",")] if args.hop_concurrency else []
    log("preparing bundles (first run builds the camera bundle)...")
    model_root = bench_model_root(rebuild=args.rebuild_models)
    bundles = load_bundles(model_root, args.bundles.split(","))
    busy_before = wait_until_quiet(args.wait_quiet)
    if busy_before > QUIET_CORES:
        log(f"  warning: other work keeps {busy_before:.2f} cores busy; results will be skewed")
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = dt.datetime.now(dt.UTC)
    threads = os.cpu_count() or 1
    per_bundle: dict[str, Any] = {}
    provider = None

    for b in bundles:
        per_bundle[b.key] = {
            "detector_id": b.detector_id,
            "version": b.version,
            "input": b.input_desc,
            "frames": len(b.frames),
            "mean_frame_bytes": b.mean_frame_bytes,
            "in_process": {},
            "chain": {},
            "hops": {},
        }

    log("starting inference, edge-api and nginx")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        stack = BenchStack(
            Path(tmp),
            model_root,
            edge_only_config([b.detector_id for b in bundles]),
            worker_threads=threads,
            intra_op_threads=1,
        )
        with stack:
            sanity = sanity_check(stack, bundles)
            # (a) and (b) alternate per point, so both see the same background conditions.
            for b in bundles:
                local = InProcess(model_root, b, threads)
                provider = local.provider
                try:
                    for c in concurrencies:
                        res = local.measure(c, protocol, stack.pid_groups())
                        per_bundle[b.key]["in_process"][str(c)] = res
                        log(f"  (a) in-process {b.key:<6} c={c:<3} {_short(res)}")
                        res = measure_http(
                            stack,
                            stack.gateway_port,
                            f"{SUBMIT_PATH}?detector_id={b.detector_id}",
                            b,
                            c,
                            protocol,
                            args.client,
                            timings_from_server_timing,
                            edge_breakdown,
                        )
                        per_bundle[b.key]["chain"][str(c)] = res
                        log(f"  (b) chain      {b.key:<6} c={c:<3} {_short(res)}")
                finally:
                    local.close()
            for b in bundles:
                for c in hop_concurrencies:
                    hops = measure_hops(stack, b, c, protocol, args.client)
                    per_bundle[b.key]["hops"][str(c)] = hops
                    log(f"  hops {b.key:<6} c={c:<3} {json.dumps(hops['breakdown_p50_ms'])}")
        log("stack stopped")

    for per in per_bundle.values():
        per["ratio_by_concurrency"] = {
            c: round(per["chain"][c]["throughput_rps"] / a["throughput_rps"], 3)
            for c, a in per["in_process"].items()
            if c in per["chain"] and a["throughput_rps"]
        }
        per["added_p50_ms_by_concurrency"] = {
            c: round(per["chain"][c]["p50_ms"] - a["p50_ms"], 3)
            for c, a in per["in_process"].items()
            if c in per["chain"] and a["p50_ms"] is not None and per["chain"][c]["p50_ms"] is not None
        }
        per["cpu_ms_per_request_by_concurrency"] = {
            c: {"in_process": _inproc_cpu_ms(a), "chain": _chain_cpu_ms(per["chain"].get(c, {}))}
            for c, a in per["in_process"].items()
        }
        per["cpu_ratio_by_concurrency"] = {
            c: round(v["in_process"] / v["chain"], 3)
            for c, v in per["cpu_ms_per_request_by_concurrency"].items()
            if v["in_process"] and v["chain"]
        }
    camera, digit = per_bundle.get("camera", {}), per_bundle.get("digit", {})
    ratio_c16 = camera.get("ratio_by_concurrency", {}).get("16")
    added_c1 = digit.get("added_p50_ms_by_concurrency", {}).get("1")
    errors = sum(r["errors_including_warmup"] for per in per_bundle.values() for r in per["chain"].values())
    hop_errors = sum(h["errors"] for per in per_bundle.values() for h in per["hops"].values())
    result: dict[str, Any] = {
        "benchmark": "edge_throughput",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "ratio_c16": ratio_c16,
        "added_p50_ms_c1": added_c1,
        "cpu_ratio_c16": camera.get("cpu_ratio_by_concurrency", {}).get("16"),
        "cpu_ratio_note": (
            "in-process CPU ms per request / CPU ms per request of every chain process (nginx, edge-api, "
            "inference, load generator), camera bundle, concurrency 16: what ratio_c16 tends to on a "
            "dedicated machine where both sides are CPU-bound; unlike ratio_c16 it hardly depends on "
            "how much CPU other work takes during the run"
        ),
        "targets": {"ratio_c16": f">= {TARGET_RATIO_C16}", "added_p50_ms_c1": f"<= {TARGET_ADDED_P50_MS_C1}"},
        "targets_met": {
            "ratio_c16": ratio_c16 is not None and ratio_c16 >= TARGET_RATIO_C16,
            "added_p50_ms_c1": added_c1 is not None and added_c1 <= TARGET_ADDED_P50_MS_C1,
        },
        "chain_errors_total": errors,
        "hop_errors_total": hop_errors,
        "code": code_version(),
        "machine": {
            **machine_info(provider),
            "loadavg_start": load_start,
            "busy_cores_before_start": round(busy_before, 3),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "protocol": protocol.as_dict(),
        "setup": {
            "concurrency": concurrencies,
            "hop_concurrency": hop_concurrencies,
            "client": args.client,
            "order": "per bundle and concurrency: in-process, then chain (stack idle during in-process)",
            "in_process": f"asyncio callers -> ThreadPoolExecutor({threads}) -> ModelRuntime.predict, intra-op 1",
            "inference_worker_threads": threads,
            "inference_intra_op_threads": 1,
            "edge_config": "edge_only: always_return_edge_prediction, disable_cloud_escalation, audit rate 0",
            "cloud": "dead port (nothing should reach it)",
        },
        "sanity": sanity,
        "bundles": per_bundle,
    }
    result["hop_breakdown_p50_ms"] = hop_table(result)
    result["max_foreign_busy_cores"] = busiest_foreign(result)
    return result


# -- profiling -------------------------------------------------------------------------------------------


def run_profile(args: argparse.Namespace) -> None:
    """Chain load with edge-api and inference under cProfile (steady state only); hottest functions to text."""
    out_dir: Path = args.profile_dir or RESULTS_DIR / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = MeasurementProtocol(
        warmup_s=2.0, window_s=args.profile_seconds, stable_windows=1, tolerance=1.0, max_windows=1
    )
    model_root = bench_model_root(rebuild=args.rebuild_models)
    bundles = {b.key: b for b in load_bundles(model_root, ["digit", "camera"])}
    threads = os.cpu_count() or 1
    for key, c in (("digit", 1), ("digit", 16), ("camera", 16)):
        b = bundles[key]
        scenario = f"{key}_c{c}"
        with tempfile.TemporaryDirectory(prefix="edge-bench-prof-") as tmp:
            stack = BenchStack(
                Path(tmp),
                model_root,
                edge_only_config([b.detector_id]),
                threads,
                1,
                profile_dir=Path(tmp) / "prof",
            )
            with stack:
                sanity_check(stack, [b])
                res = measure_http(
                    stack,
                    stack.gateway_port,
                    f"{SUBMIT_PATH}?detector_id={b.detector_id}",
                    b,
                    c,
                    protocol,
                    args.client,
                    timings_from_server_timing,
                    edge_breakdown,
                    on_windows=(stack.start_profiling, stack.stop_profiling),
                )
                log(f"  profiled {scenario}: {_short(res)} (cProfile slows the services)")
                profiles = stack.profiles()
            summary = {k: res[k] for k in ("throughput_rps", "p50_ms", "requests")}
            for prof in profiles:
                service = prof.stem
                shutil.copyfile(prof, out_dir / f"{scenario}.{service}.prof")
                text = out_dir / f"{scenario}.{service}.txt"
                with text.open("w") as fh:
                    fh.write(f"# {scenario}, {service}, event-loop thread only: {json.dumps(summary)}\n")
                    stats = pstats.Stats(str(prof), stream=fh)
                    stats.strip_dirs().sort_stats("tottime").print_stats(40)
                    stats.sort_stats("cumulative").print_stats(60)
                log(f"  wrote {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s windows and a short warm-up (smoke run)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/edge_throughput[.quick].json)"
    )
    parser.add_argument("--bundles", default="digit,camera", help="comma-separated: digit, camera")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrencies")
    parser.add_argument(
        "--hop-concurrency", default="1", help="concurrencies for the per-hop runs ('' skips them)"
    )
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="HTTP load generator client"
    )
    parser.add_argument(
        "--rebuild-models", action="store_true", help="build fresh bundles instead of reusing cached ones"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for other work on the machine to stop before measuring",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile edge-api and inference under cProfile"
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0, help="load per profiled scenario")
    parser.add_argument(
        "--profile-dir", type=Path, help="where --profile writes (default bench/results/profile)"
    )
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        try:
            if args.profile:
                run_profile(args)
                return 0
            result = run_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; everything started was stopped")
            return 130
    output = args.output or RESULTS_DIR / (
        "edge_throughput.quick.json" if args.quick else "edge_throughput.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nwrote {output}")
    return 0 if result["chain_errors_total"] == 0 and result["hop_errors_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
