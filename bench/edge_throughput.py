"""Edge throughput: the model runtime in-process versus the full chain, client → nginx → edge-api → inference.

    python -m bench.edge_throughput [--quick] [--output PATH] [--profile] [--only lite0]

For each bundle (the 28x28 demo digit detector and a 224x224 camera-size CNN fed 640x480 JPEG frames)
and each concurrency (1, 4, 16) it measures, in one run:

(a) in-process: `ModelRuntime.predict` on the same frames. `concurrency` asyncio callers submit to a
    thread pool of `os.cpu_count()` workers (intra-op threads 1), which is exactly how the inference
    service runs predict (INFERENCE_WORKER_THREADS defaults to the CPU count). So real parallelism is
    capped at the number of cores, and at concurrency 16 latency includes waiting for a worker, as it
    does behind the service.
(b) the chain: `concurrency` closed-loop clients, each with one keep-alive connection, POST the frame
    to the nginx gateway (`/device-api/v1/image-queries`); every answer must be a 200.

Every request carries the credential its target needs, as in production: a device token
(`x-api-token`, listed in edge-api's local token file, since the cloud is dead) to the gateway and
edge-api, the internal token (`x-internal-token`) to the inference service. The headers are part of
the pre-encoded requests, so they add nothing to the load generator's per-request cost.

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

Lite0 split bundles (`lite0`, also alone with `--only lite0`): three heads trained by the training code
on the real EfficientNet-Lite0 backbone (built once under build/bench-models/), fed 1024 distinct
640x480 JPEG frames (more than the embedding cache holds, so nothing is reused over time, as with a
camera). (a) and (b) as above per concurrency give `lite0_ratio_c16`. Then `--multi-concurrency`
closed-loop cameras each send their next frame to 1, then to all 3 detectors at once (through the
chain, and straight to inference) and wait for every answer: `multi_detector_cost_ratio` is the time
per image with 3 detectors over the time per image with 1 (1.0: the extra heads cost nothing; 3.0:
no backbone reuse). The inference service's embedding-cache and backbone counters over each run are
recorded beside it.

Results are merged into the output file: keys of an earlier run that this one did not measure stay.

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
import asyncio
import contextlib
import datetime as dt
import functools
import io
import json
import math
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
from prometheus_client.parser import text_string_to_metric_families

from bench.fixtures import (
    CAMERA_JPEG_QUALITY,
    BenchBundle,
    bench_model_root,
    bundle_dir,
    camera_frames,
    load_bundles,
)
from bench.loadgen import (
    Caller,
    CpuMeter,
    HttpxCaller,
    InProcessCaller,
    MeasurementProtocol,
    RawHttpCaller,
    Sample,
    build_post,
    machine_busy_cores,
    measure,
    run,
    timings_from_json,
    timings_from_server_timing,
)
from bench.stack import BenchStack, edge_only_config
from common.backbone import BackboneStore
from common.bundle import (
    BundleError,
    DetectorMode,
    PredictorMetadata,
    current_bundle_dir,
    install_bundle,
    read_metadata,
    read_pipeline,
    verify_bundle,
    write_split_bundle,
)
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from edge.inference.settings import InferenceSettings

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
    client: str,
    port: int,
    path: str,
    frames: Sequence[bytes],
    c: int,
    timings: Callable[..., Any],
    headers: dict[str, str],
) -> tuple[list[Caller], httpx.AsyncClient | None]:
    """`headers`: the credential the target port needs (encoded into every pre-built request)."""
    step = max(1, len(frames) // c)
    if client == "raw":
        requests = [build_post("127.0.0.1", port, path, f, headers=headers) for f in frames]
        return [RawHttpCaller("127.0.0.1", port, requests, i * step, timings) for i in range(c)], None
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    shared = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30.0, trust_env=False
    )
    callers: list[Caller] = [HttpxCaller(shared, path, frames, i * step, timings, headers) for i in range(c)]
    return callers, shared


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
        callers, shared = http_callers(client, port, path, bundle.frames, c, timings, stack.headers_for(port))
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
    with httpx.Client(
        base_url=stack.gateway_url, headers=stack.device_headers, timeout=60.0, trust_env=False
    ) as client:
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


def run_and_write(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    """Run a benchmark (SIGTERM stops it like Ctrl-C), write its JSON to `args.output` or
    bench/results/<name>[.quick].json, and print its report; None when interrupted."""
    with terminate_as_interrupt():
        try:
            result = run(args)
        except KeyboardInterrupt:
            log("interrupted; everything started was stopped")
            return None
    output = args.output or RESULTS_DIR / (f"{name}.quick.json" if args.quick else f"{name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"\nwrote {output}")
    return result


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
            "auth": (
                "device token (local token file) to the gateway and edge-api, internal token to "
                "inference; a fresh pair per stack"
            ),
        },
        "sanity": sanity,
        "bundles": per_bundle,
    }
    result["hop_breakdown_p50_ms"] = hop_table(result)
    result["max_foreign_busy_cores"] = busiest_foreign(result)
    return result


# -- Lite0 split bundles ---------------------------------------------------------------------------------

LITE0_CACHE_DIR = Path(__file__).resolve().parents[1] / "build" / "bench-models"
LITE0_DETECTORS = tuple(f"det_BenchLite0Head{i}".ljust(31, "0") for i in range(3))
LITE0_TRAIN_ITEMS = 300  # Fashion-MNIST test images embedded by Lite0 (cached with the test models)
# Four times the frames the embedding cache holds (256 by default), cycled through: frames from a
# camera are new, so the in-process/chain ratio must not profit from reusing backbone outputs over time
# (a frame comes round again only after ~1024 others, however the clients drift apart).
LITE0_FRAMES = 1024
LITE0_BASE_FRAMES = 16
EMBEDDING_TTL_S = float(InferenceSettings.model_fields["embedding_cache_ttl_s"].default)


class Cooldown:
    """Waits out the embedding cache's TTL since the last HTTP run, so no run reuses another's outputs."""

    def __init__(self) -> None:
        self.last = -math.inf

    def wait(self) -> None:
        remaining = EMBEDDING_TTL_S + 1.0 - (time.monotonic() - self.last)
        if remaining > 0:
            time.sleep(remaining)

    def done(self) -> None:
        self.last = time.monotonic()


class FanOutCaller:
    """One image asked of several detectors at once (a connection each); done when all have answered."""

    def __init__(self, callers: Sequence[RawHttpCaller]) -> None:
        self._callers = callers

    async def __call__(self) -> Sample:
        samples = await asyncio.gather(*(call() for call in self._callers))
        return next((s for s in samples if not s.ok), Sample(True, 200, None))

    async def aclose(self) -> None:
        await asyncio.gather(*(call.aclose() for call in self._callers))


def _lite0_usable(model_root: Path, sha256: str) -> bool:
    if not BackboneStore.for_model_root(model_root).has(sha256):
        return False
    for detector_id in LITE0_DETECTORS:
        path = current_bundle_dir(model_root, detector_id)
        if path is None:
            return False
        try:
            verify_bundle(path)
            meta = read_metadata(path)
        except (BundleError, ValueError, OSError):
            return False
        if meta.backbone is None or meta.backbone.sha256 != sha256:
            return False
    return True


def lite0_model_root(rebuild: bool = False) -> Path:
    """A model root with the real Lite0 backbone and three heads trained on it, as the trainer writes them.

    Built once per backbone under build/bench-models/ (heads are fitted on cached Lite0 embeddings of
    Fashion-MNIST images in seconds); later runs reuse it while it verifies.
    """
    from tests.support.models import fashion_embeddings, lite0_backbone
    from training.datasets import FASHION_CLASSES
    from training.head_trainer import _export_graphs
    from training.heads import HeadOptions, fit_head
    from training.oodd import fit_lowrank_oodd, out_of_fold_distances

    backbone = lite0_backbone()
    ref = backbone.ref
    target = LITE0_CACHE_DIR / f"lite0-{ref.sha256[:12]}"
    if not rebuild and _lite0_usable(target, ref.sha256):
        return target
    log(f"building the Lite0 split bundles under {target} (once)")
    vectors, labels, _ = fashion_embeddings(LITE0_TRAIN_ITEMS)
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    k = len(FASHION_CLASSES)
    stats = ref.parts.get("stats")
    columns = (int(stats[0]), int(stats[1])) if stats else None
    LITE0_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-lite0-", dir=LITE0_CACHE_DIR))
    try:
        BackboneStore.for_model_root(staging).install_file(backbone.path, ref)
        for i, detector_id in enumerate(LITE0_DETECTORS):
            # Linear heads only (no MLP search): what a detector with a few hundred labels gets.
            options = HeadOptions(folds=3, final_folds=3, mlp_min_items=10**9, seed=i)
            head = fit_head(x, y, k, options, feature_columns=columns)
            features = head.features(x)
            present, compact = np.unique(y, return_inverse=True)
            distances = out_of_fold_distances(features, y, head.folds, k)
            oodd = fit_lowrank_oodd(features, compact, distances, present.size)
            head_onnx, oodd_onnx = _export_graphs(head, oodd, x[:16])
            meta = PredictorMetadata(
                detector_id=detector_id,
                version=f"v1-lite0head{i}",
                detector_name=f"bench lite0 head {i}",
                query="Which garment is this?",
                mode=DetectorMode.MULTI_CLASS,
                labels=list(FASHION_CLASSES),
                temperature=head.temperature,
                default_confidence_threshold=0.5,
                oodd=oodd.calibration(),
                backbone=ref,
                head_input="embedding",
            )
            with tempfile.TemporaryDirectory(dir=LITE0_CACHE_DIR) as tmp:
                out = Path(tmp) / "bundle"
                write_split_bundle(out, head_onnx, oodd_onnx, backbone.pipeline, meta)
                install_bundle(out, staging)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def distinct_frames(n: int) -> list[bytes]:
    """`n` different camera-size JPEG frames: the camera frames, each varied by a marked corner block."""
    from PIL import Image, ImageDraw

    bases = [Image.open(io.BytesIO(f)).convert("RGB") for f in camera_frames(LITE0_BASE_FRAMES)]
    frames = []
    for i in range(n):
        img = bases[i % len(bases)].copy()
        shade = (i * 37) % 256
        ImageDraw.Draw(img).rectangle((0, 0, 15, 15), fill=(shade, 255 - shade, (i // len(bases)) % 256))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=CAMERA_JPEG_QUALITY)
        frames.append(buffer.getvalue())
    if len(set(frames)) != n:
        raise RuntimeError("frames are not all distinct")
    return frames


def inference_counters(stack: BenchStack) -> dict[str, float]:
    """The inference service's embedding-cache lookups and backbone images so far (from /metrics)."""
    resp = httpx.get(
        f"{stack.inference_url}/metrics", headers=stack.internal_headers, timeout=10, trust_env=False
    )
    if resp.status_code != 200:
        raise RuntimeError(f"inference /metrics answered {resp.status_code}: {resp.text[:300]}")
    text = resp.text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_embedding_cache_total":
                name = f"embedding_{sample.labels.get('result', '')}"
                out[name] = out.get(name, 0.0) + sample.value
            elif sample.name in ("inference_backbone_images_total", "inference_backbone_loads_total"):
                name = sample.name.removeprefix("inference_").removesuffix("_total")
                out[name] = out.get(name, 0.0) + sample.value
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}


def measure_fanout(
    stack: BenchStack,
    port: int,
    path_for: Callable[[str], str],
    detector_ids: Sequence[str],
    frames: Sequence[bytes],
    c: int,
    protocol: MeasurementProtocol,
) -> dict[str, Any]:
    """`c` closed-loop cameras; each sends its next frame to every detector at once. Rates are images/s."""
    meter = CpuMeter({**stack.pid_groups(), "loadgen": [os.getpid()]})
    headers = stack.headers_for(port)
    per_detector = [
        [build_post("127.0.0.1", port, path_for(d), f, headers=headers) for f in frames] for d in detector_ids
    ]
    step = max(1, len(frames) // c)

    async def go() -> dict[str, Any]:
        callers: list[Caller] = [
            FanOutCaller([RawHttpCaller("127.0.0.1", port, requests, i * step) for requests in per_detector])
            for i in range(c)
        ]
        return await measure(callers, protocol, meter)

    before = inference_counters(stack)
    result = run(go)
    result["inference_counters"] = _delta(inference_counters(stack), before)
    result["detectors"] = len(detector_ids)
    stack.check_alive()
    return result


def _lite0_by_concurrency(
    stack: BenchStack,
    local: InProcess,
    bundle: BenchBundle,
    concurrencies: Sequence[int],
    protocol: MeasurementProtocol,
    args: argparse.Namespace,
    cooldown: Cooldown,
    out: dict[str, Any],
) -> None:
    """(a) in-process and (b) through the chain at each concurrency, alternated so drift hits both."""
    for c in concurrencies:
        res = local.measure(c, protocol, stack.pid_groups())
        out["in_process"][str(c)] = res
        log(f"  (a) in-process lite0  c={c:<3} {_short(res)}")
        cooldown.wait()
        before = inference_counters(stack)
        res = measure_http(
            stack,
            stack.gateway_port,
            f"{SUBMIT_PATH}?detector_id={bundle.detector_id}",
            bundle,
            c,
            protocol,
            args.client,
            timings_from_server_timing,
            edge_breakdown,
        )
        cooldown.done()
        res["inference_counters"] = _delta(inference_counters(stack), before)
        out["chain"][str(c)] = res
        log(f"  (b) chain      lite0  c={c:<3} {_short(res)}")


def _lite0_multi_detector(
    stack: BenchStack,
    frames: Sequence[bytes],
    multi_c: int,
    protocol: MeasurementProtocol,
    cooldown: Cooldown,
    into: dict[str, Any],
) -> None:
    """One image asked of one detector vs of all of them, through the chain and straight to inference:
    what the shared backbone saves."""
    targets: dict[str, tuple[int, Callable[[str], str]]] = {
        "chain": (stack.gateway_port, lambda d: f"{SUBMIT_PATH}?detector_id={d}"),
        "inference_direct": (stack.inference_port, lambda d: f"/infer?detector_id={d}"),
    }
    for name, (port, path_for) in targets.items():
        runs: dict[str, dict[str, Any]] = {}
        for n in (1, len(LITE0_DETECTORS)):
            cooldown.wait()
            res = measure_fanout(stack, port, path_for, LITE0_DETECTORS[:n], frames, multi_c, protocol)
            cooldown.done()
            runs[str(n)] = res
            log(f"  multi {name:<16} detectors={n} c={multi_c:<3} {_short(res)} (images/s)")
        one, many = runs["1"]["throughput_rps"], runs[str(len(LITE0_DETECTORS))]["throughput_rps"]
        ratio = round(one / many, 3) if one and many else None
        cpu_one = _chain_cpu_ms(runs["1"])
        cpu_many = _chain_cpu_ms(runs[str(len(LITE0_DETECTORS))])
        cpu_ratio = round(cpu_many / cpu_one, 3) if cpu_one and cpu_many else None
        into[name] = {
            "by_detectors": runs,
            "cost_ratio": ratio,
            "cpu_cost_ratio": cpu_ratio,
        }


def chain_ratios(out: dict[str, Any]) -> None:
    """Chain over in-process throughput, and each side's CPU per request, per concurrency."""
    out["ratio_by_concurrency"] = {
        c: round(out["chain"][c]["throughput_rps"] / a["throughput_rps"], 3)
        for c, a in out["in_process"].items()
        if c in out["chain"] and a["throughput_rps"]
    }
    out["cpu_ms_per_request_by_concurrency"] = {
        c: {"in_process": _inproc_cpu_ms(a), "chain": _chain_cpu_ms(out["chain"].get(c, {}))}
        for c, a in out["in_process"].items()
    }


def _lite0_ratios(out: dict[str, Any]) -> None:
    """Chain over in-process, in throughput and in CPU per request: the cost of the service hops."""
    chain_ratios(out)
    out["cpu_ratio_by_concurrency"] = {
        c: round(v["in_process"] / v["chain"], 3)
        for c, v in out["cpu_ms_per_request_by_concurrency"].items()
        if v["in_process"] and v["chain"]
    }


def _lite0_errors(out: dict[str, Any]) -> int:
    """Every failed request of the Lite0 runs, warm-up included: any is a reason to distrust the rates."""
    errors: int = sum(r["errors_including_warmup"] for r in out["chain"].values())
    errors += sum(
        r["errors_including_warmup"]
        for multi in out["multi_detector"].values()
        for r in multi["by_detectors"].values()
    )
    return errors


def run_lite0(args: argparse.Namespace) -> dict[str, Any]:
    """Lite0 split bundles: in-process vs chain per concurrency, then the cost of asking one image of
    three detectors on the backbone against asking it of one."""
    protocol = QUICK if args.quick else FULL
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    multi_c = args.multi_concurrency
    log("preparing the Lite0 split bundles and frames...")
    model_root = lite0_model_root(rebuild=args.rebuild_models)
    frames = distinct_frames(LITE0_FRAMES)
    first = bundle_dir(model_root, LITE0_DETECTORS[0])
    pipe, meta = read_pipeline(first), read_metadata(first)
    bundle = BenchBundle(
        "lite0",
        LITE0_DETECTORS[0],
        meta.version,
        f"{pipe.input_width}x{pipe.input_height} {pipe.channels}, split bundle on a shared backbone",
        frames,
    )
    threads = os.cpu_count() or 1
    out: dict[str, Any] = {
        "detector_ids": list(LITE0_DETECTORS),
        "backbone": meta.backbone.model_dump(include={"id", "sha256", "bytes"}) if meta.backbone else None,
        "input": bundle.input_desc,
        "frames": len(frames),
        "mean_frame_bytes": bundle.mean_frame_bytes,
        "in_process": {},
        "chain": {},
        "multi_detector": {},
    }
    busy_before = wait_until_quiet(args.wait_quiet)
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="edge-bench-lite0-") as tmp:
        stack = BenchStack(
            Path(tmp), model_root, edge_only_config(list(LITE0_DETECTORS)), worker_threads=threads
        )
        with stack:
            out["sanity"] = sanity_check(
                stack,
                [BenchBundle("lite0", d, meta.version, bundle.input_desc, frames) for d in LITE0_DETECTORS],
            )
            cooldown = Cooldown()
            cooldown.done()
            local = InProcess(model_root, bundle, threads)
            provider = local.provider
            try:
                _lite0_by_concurrency(stack, local, bundle, concurrencies, protocol, args, cooldown, out)
            finally:
                local.close()
            _lite0_multi_detector(stack, frames, multi_c, protocol, cooldown, out["multi_detector"])
    _lite0_ratios(out)
    errors = _lite0_errors(out)
    out["setup"] = {
        "concurrency": concurrencies,
        "multi_concurrency": multi_c,
        "protocol": protocol.as_dict(),
        "quick": bool(args.quick),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "busy_cores_before_start": round(busy_before, 3),
        "provider": provider,
        "code": code_version(),
        "inference_worker_threads": threads,
        "frames": (
            f"{LITE0_FRAMES} distinct 640x480 JPEGs cycled through, more than the embedding cache holds: "
            "the in-process/chain ratio gets no reuse of backbone outputs over time (see inference_counters)"
        ),
        "multi_detector": (
            f"{multi_c} closed-loop cameras, each sending its next frame to 1 or {len(LITE0_DETECTORS)} "
            "detectors on the backbone at once and waiting for every answer; rates are images/s; "
            "cost_ratio = time per image with all detectors / with one"
        ),
    }
    multi_chain = out["multi_detector"].get("chain", {})
    return {
        "lite0_ratio_c16": out["ratio_by_concurrency"].get("16"),
        "lite0_cpu_ratio_c16": out["cpu_ratio_by_concurrency"].get("16"),
        "multi_detector_cost_ratio": multi_chain.get("cost_ratio"),
        "multi_detector_cpu_cost_ratio": multi_chain.get("cpu_cost_ratio"),
        "multi_detector_cost_ratio_note": (
            f"time per image when one image is asked of {len(LITE0_DETECTORS)} detectors on one Lite0 "
            f"backbone / time per image asked of one, through the chain, {multi_c} cameras "
            "(lite0.multi_detector also has it straight to inference); 1.0 = the other heads are free, "
            f"{len(LITE0_DETECTORS)}.0 = no reuse. multi_detector_cpu_cost_ratio: the same from CPU ms per "
            "image of every chain process, which hardly depends on what else the machine runs; "
            "lite0_cpu_ratio_c16 is cpu_ratio_c16 for the Lite0 split bundle"
        ),
        "lite0_errors_total": errors,
        "lite0": out,
    }


def print_lite0_report(result: dict[str, Any]) -> None:
    out = result.get("lite0")
    if not out:
        return
    print()
    print(
        "| Lite0 split bundle | conc | in-process req/s | p50 ms | chain req/s | p50 ms | ratio b/a | embedding hits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, a in out["in_process"].items():
        b = out["chain"].get(c, {})
        hits = b.get("inference_counters", {}).get("embedding_hit")
        print(
            f"| lite0 | {c} | {_fmt(a['throughput_rps'], 1)} | {_fmt(a['p50_ms'])} "
            f"| {_fmt(b.get('throughput_rps'), 1)} | {_fmt(b.get('p50_ms'))} "
            f"| {_fmt(out['ratio_by_concurrency'].get(c), 3)} | {_fmt(hits, 0)} |"
        )
    print()
    print(
        "| one image asked of n detectors | n | images/s | p50 ms | CPU ms/image | backbone images | cost ratio (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, multi in out["multi_detector"].items():
        ratio = f"{_fmt(multi['cost_ratio'], 3)} ({_fmt(multi['cpu_cost_ratio'], 3)})"
        for n, res in multi["by_detectors"].items():
            images = res.get("inference_counters", {}).get("backbone_images")
            print(
                f"| {name} | {n} | {_fmt(res['throughput_rps'], 1)} | {_fmt(res['p50_ms'])} "
                f"| {_fmt(_chain_cpu_ms(res))} | {_fmt(images, 0)} "
                f"| {ratio if n != '1' else ''} |"
            )
    print()
    for name in (
        "lite0_ratio_c16",
        "lite0_cpu_ratio_c16",
        "multi_detector_cost_ratio",
        "multi_detector_cpu_cost_ratio",
    ):
        print(f"{name} = {_fmt(result.get(name), 3)}")
    print(f"lite0 errors: {result.get('lite0_errors_total')}")


def merge_into(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The file's existing keys, updated with this run's (a partial run drops nothing measured before)."""
    merged: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                merged = loaded
    merged.update(result)
    return merged


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
    parser.add_argument(
        "--bundles",
        default="digit,camera,lite0,detection",
        help="comma-separated: digit, camera, lite0, detection",
    )
    parser.add_argument(
        "--only",
        choices=("lite0", "detection"),
        help=(
            "run only these cases (lite0: the split-bundle ones; detection: a detection bundle, "
            "bench/edge_throughput_detection.py) and merge them into the existing JSON"
        ),
    )
    parser.add_argument(
        "--multi-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="cameras for the one-image-to-several-detectors runs (lite0)",
    )
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
            keys = [args.only] if args.only else args.bundles.split(",")
            base = [k for k in keys if k not in ("lite0", "detection")]
            result: dict[str, Any] = {}
            if base:
                args.bundles = ",".join(base)
                result = run_benchmark(args)
            if "lite0" in keys:
                result.update(run_lite0(args))
            if "detection" in keys:
                from bench.edge_throughput_detection import run_detection

                result.update(run_detection(args))
        except KeyboardInterrupt:
            log("interrupted; everything started was stopped")
            return 130
    output = args.output or RESULTS_DIR / (
        "edge_throughput.quick.json" if args.quick else "edge_throughput.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merge_into(output, result), indent=2) + "\n")
    if "bundles" in result:
        print_report(result)
    print_lite0_report(result)
    if "detection" in result:
        from bench.edge_throughput_detection import print_detection_report

        print_detection_report(result)
    print(f"\nwrote {output}")
    errors = [
        result.get(k, 0)
        for k in ("chain_errors_total", "hop_errors_total", "lite0_errors_total", "detection_errors_total")
    ]
    return 0 if not any(errors) else 1


if __name__ == "__main__":
    sys.exit(main())
