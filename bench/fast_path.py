"""Fast path on and off: the same edge-api and inference apps as built, and with `app.fast_paths.clear()`.

    python -m bench.fast_path [--quick] [--output PATH] [--wait-quiet S] [--skip-app-layer] [--skip-e2e]

`common.http.FastPathApp` answers the hottest route of each service (edge-api's
`POST /device-api/v1/image-queries`, inference's `POST /infer`) through a plain ASGI endpoint ahead of
FastAPI's middleware, routing, dependencies and validation. Clearing `app.fast_paths` after the app is
built sends those requests down the declared FastAPI route instead, through the same middleware stack
(the body limit included), so "off" is exactly what removing the fast path would leave. Before
measuring, the benchmark checks that: a FastAPI dependency override on the declared route counts no
call with the fast path on and one with it off, and an over-the-cap body is refused by the body-limit
middleware (413, its own message, the route not reached) in both modes. docs/fast-path.md has the
decision these numbers support.

(a) app layer, in-process: requests one after another through `httpx.ASGITransport` (no sockets, no
    uvicorn). edge-api runs with its lifespan and a device token from its local token file; its
    inference hop is answered from memory with a real answer the inference app gave for the same
    detector, so only edge-api's own work is timed. inference runs the real digit model. Per request:
    latency p50/p95/p99 in µs and CPU µs (process CPU time over a window / requests; it includes the
    in-process httpx client, the same in both modes).
(b) end to end: edge-api and inference under real uvicorn on free ports (started like `python -m
    edge.api` / `python -m edge.inference`, via `python -m bench.fast_path --serve`, which switches the
    fast paths off on SIGUSR1 and on again on SIGUSR2), closed-loop keep-alive clients POSTing straight
    to edge-api, for the 28x28 digit bundle (where the framework's share is largest) and the 224x224
    camera-size bundle, at concurrency 1 and 16. "off" clears the fast paths of both services (what
    removing the fast path means). Throughput, p50/p95/p99 and CPU ms per request of each service.

Measurement (perf_analyzer practice): a warm-up, then fixed windows, on and off in turn. Windows come
in ABBA order (on, off, off, on, on, off, ...) so a linear drift in background load cancels out of the
paired differences; each window has its own short warm-up after the switch. Rounds (one on and one off
window) repeat until the last 3 windows of each mode agree on throughput within 10% (at least
`min_rounds`, at most `max_rounds`; `stabilized` records whether they did). The decision point
(camera bundle, concurrency 16) always runs `decision_rounds` rounds: its gain is a few percent, and
windows that agree on throughput say little about how precise a small paired difference is. A mode's
figures are the medians over its windows; the gain is the median over rounds of the paired (on vs
off) difference, with its interquartile range. `os.getloadavg()` and the CPU that processes other than
ours took (`foreign_busy_cores`) are recorded per window: this 2-core box runs other work
(`--wait-quiet S` waits for it first, as bench.edge_throughput does). A full run takes about 4 minutes.

`--quick` (short windows, 2 rounds) is a smoke run and writes `fast_path.quick.json` unless `--output`
says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
import yaml
from fastapi import FastAPI, Request

from bench.edge_throughput import (
    QUIET_CORES,
    _fmt,
    code_version,
    edge_breakdown,
    log,
    machine_info,
    measure_http,
    run_and_write,
    wait_until_quiet,
)
from bench.fixtures import BenchBundle, bench_model_root, load_bundles
from bench.loadgen import (
    MeasurementProtocol,
    _pct,
    _window_throughputs_stable,
    run,
    timings_from_server_timing,
)
from bench.stack import DEVICE_TOKEN_HEADER, BenchStack, edge_only_config
from common.http import FastPathApp
from common.internal_auth import INTERNAL_TOKEN_HEADER
from edge.api.auth.local_tokens import add_token
from edge.api.core.inference_client import InferenceHttp
from edge.api.deps import get_state
from edge.api.routes.image_queries import SUBMIT_PATH
from edge.api.settings import LOCAL_TOKENS_FILE, EdgeSettings
from edge.inference.routes import INFER_PATH, get_service
from edge.inference.settings import InferenceSettings
from tests.support.raw_http import raw_exchange

CONCURRENCIES = (1, 16)
# The decision rule (docs/fast-path.md): keep the fast path only if, on the camera-size bundle at
# concurrency 16, it buys more than this much throughput or p50 latency.
KEEP_THROUGHPUT_PCT = 3.0
KEEP_P50_MS = 0.3
DECISION_POINT = ("camera", "16")
# What the body-limit middleware (and only it) says when it refuses a declared length.
BODY_LIMIT_DETAIL = "the request body is "
DEVICE_TOKEN_PREFIX = "io_benchfastpathtoken_"


@dataclass(frozen=True)
class ABProtocol:
    """Alternating windows: see the module docstring."""

    warmup_s: float
    app_window_s: float  # (a): one window of sequential in-process requests
    e2e_window_s: float  # (b): one window of closed-loop load
    window_warmup_s: float  # (b): load before each window, after the switch (not counted)
    min_rounds: int
    max_rounds: int
    decision_rounds: int  # (b): rounds always run at DECISION_POINT, stable or not
    stable_windows: int = 3
    tolerance: float = 0.10

    def as_dict(self) -> dict[str, Any]:
        return {
            "warmup_s": self.warmup_s,
            "app_window_s": self.app_window_s,
            "e2e_window_s": self.e2e_window_s,
            "window_warmup_s": self.window_warmup_s,
            "min_rounds": self.min_rounds,
            "max_rounds": self.max_rounds,
            "decision_rounds": self.decision_rounds,
            "stable_windows": self.stable_windows,
            "tolerance": self.tolerance,
            "order": "ABBA: round r runs (on, off) for even r and (off, on) for odd r",
            "stability_rule": (
                "(max - min) / mean of the last `stable_windows` window throughputs <= tolerance, "
                "for both modes, after at least `min_rounds` rounds; at the decision point (camera, "
                "c=16) `decision_rounds` rounds are always run: windows that agree on throughput say "
                "little about how precise the small paired difference is"
            ),
        }


FULL = ABProtocol(
    warmup_s=1.0,
    app_window_s=0.5,
    e2e_window_s=1.0,
    window_warmup_s=0.3,
    min_rounds=6,
    max_rounds=12,
    decision_rounds=24,
)
QUICK = ABProtocol(
    warmup_s=0.2,
    app_window_s=0.25,
    e2e_window_s=0.5,
    window_warmup_s=0.2,
    min_rounds=2,
    max_rounds=2,
    decision_rounds=2,
)
MODES = ("on", "off")


def round_order(r: int) -> tuple[str, str]:
    return MODES if r % 2 == 0 else (MODES[1], MODES[0])


def stable(windows: dict[str, list[dict[str, Any]]], p: ABProtocol) -> bool:
    return all(
        _window_throughputs_stable([w["throughput_rps"] for w in ws], p.stable_windows, p.tolerance)
        for ws in windows.values()
    )


class FastPathToggle:
    """Takes an app's fast paths away (requests then take the declared FastAPI routes) and puts them
    back. The middleware stack is whatever the app built, so "off" runs exactly the middleware "on" does."""

    def __init__(self, app: FastPathApp) -> None:
        self.app = app
        self.saved = dict(app.fast_paths)
        if not self.saved:
            raise RuntimeError("the app has no fast paths to switch")

    def set(self, on: bool) -> None:
        self.app.fast_paths.clear()
        if on:
            self.app.fast_paths.update(self.saved)

    @property
    def is_on(self) -> bool:
        return bool(self.app.fast_paths)


# -- (a) app layer, in-process ------------------------------------------------------------------------


class StubInferenceHttp(InferenceHttp):
    """edge-api's inference hop answered from memory: canned `/models/{id}` and `/infer` bodies."""

    def __init__(self, model_info: dict[str, bytes], results: dict[str, bytes]) -> None:
        super().__init__("http://127.0.0.1:9", timeout_s=1.0)
        self.model_info = model_info
        self.results = results

    async def request(
        self, method: str, target: str, body: bytes | None = None, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        path, _, query = target.partition("?")
        if method == "POST" and path == INFER_PATH:
            answer = self.results.get(query.removeprefix("detector_id="))
        elif method == "GET" and path.startswith("/models/"):
            answer = self.model_info.get(path.removeprefix("/models/"))
        else:
            answer = None
        return (200, answer) if answer is not None else (404, b'{"detail":"not stubbed"}')

    async def close(self) -> None:
        return None


def as_fast_path_app(app: FastAPI) -> FastPathApp:
    if not isinstance(app, FastPathApp):
        raise TypeError(f"{type(app).__name__} is not a FastPathApp")
    return app


Send = Callable[[], Awaitable[httpx.Response]]


@dataclass
class InProcessTarget:
    """One app behind httpx.ASGITransport, with its hot request, and what proves the routing."""

    name: str
    toggle: FastPathToggle
    send: Send
    send_oversized: Send
    route_dependency: Callable[..., Awaitable[Any]]  # a dependency of the declared route only


async def verify_routing(target: InProcessTarget) -> dict[str, Any]:
    """With the fast path on the declared FastAPI route is not reached; with it off it is, and the
    body-limit middleware still refuses an over-the-cap body before the route sees it."""
    app = target.toggle.app
    calls = 0
    dependency = target.route_dependency

    async def counting(request: Request) -> Any:
        nonlocal calls
        calls += 1
        return await dependency(request)

    seen: dict[str, Any] = {}
    app.dependency_overrides[dependency] = counting
    try:
        for mode in MODES:
            target.toggle.set(mode == "on")
            before = calls
            good = await target.send()
            reached = calls - before
            big = await target.send_oversized()
            reached_big = calls - before - reached
            detail = big.json().get("detail", "")
            seen[mode] = {
                "status": good.status_code,
                "declared_route_calls": reached,
                "oversized_status": big.status_code,
                "oversized_detail": detail,
                "oversized_route_calls": reached_big,
            }
    finally:
        app.dependency_overrides.pop(dependency, None)
        target.toggle.set(True)
    on, off = seen["on"], seen["off"]
    problems = []
    if on["status"] != 200 or off["status"] != 200:
        problems.append("the hot request did not answer 200 in both modes")
    if on["declared_route_calls"] != 0:
        problems.append("with the fast path on, the declared FastAPI route was reached")
    if off["declared_route_calls"] != 1:
        problems.append("with the fast paths cleared, the declared FastAPI route was not reached")
    for mode, s in seen.items():
        if s["oversized_status"] != 413 or not s["oversized_detail"].startswith(BODY_LIMIT_DETAIL):
            problems.append(f"{mode}: an over-the-cap body was not refused by the body-limit middleware")
        if s["oversized_route_calls"]:
            problems.append(f"{mode}: an over-the-cap body reached the route")
    if problems:
        raise RuntimeError(f"{target.name}: " + "; ".join(problems) + f" ({seen})")
    return seen


async def app_window(send: Send, seconds: float) -> dict[str, Any]:
    """Sequential requests for `seconds`: per-request latency (µs), process CPU µs per request."""
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    cpu0, t0 = time.process_time(), clock()
    end = t0 + seconds
    while True:
        a = clock()
        resp = await send()
        b = clock()
        latencies.append(b - a)
        if resp.status_code != 200:
            errors += 1
        if b >= end:
            break
    wall, cpu = clock() - t0, time.process_time() - cpu0
    lat_us = np.asarray(latencies) * 1e6
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_us": _pct(lat_us, 50),
        "p95_us": _pct(lat_us, 95),
        "p99_us": _pct(lat_us, 99),
        "cpu_us_per_request": round(cpu * 1e6 / len(latencies), 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "_lat_us": lat_us,
    }


async def measure_app_layer(target: InProcessTarget, p: ABProtocol) -> dict[str, Any]:
    for mode in MODES:  # warm-up: both code paths, caches, the detector directory
        target.toggle.set(mode == "on")
        await app_window(target.send, p.warmup_s)
    windows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    rounds = 0
    while rounds < p.max_rounds:
        for mode in round_order(rounds):
            target.toggle.set(mode == "on")
            windows[mode].append(await app_window(target.send, p.app_window_s))
        rounds += 1
        if rounds >= p.min_rounds and stable(windows, p):
            break
    target.toggle.set(True)
    out: dict[str, Any] = {"rounds": rounds, "stabilized": stable(windows, p)}
    for mode, ws in windows.items():
        lat = np.concatenate([w.pop("_lat_us") for w in ws])
        requests = sum(w["requests"] for w in ws)
        out[mode] = {
            "requests": requests,
            "errors": sum(w["errors"] for w in ws),
            "p50_us": _pct(lat, 50),
            "p95_us": _pct(lat, 95),
            "p99_us": _pct(lat, 99),
            "cpu_us_per_request": round(
                sum(w["cpu_us_per_request"] * w["requests"] for w in ws) / requests, 2
            ),
            "windows": ws,
        }
    pairs = list(zip(windows["on"], windows["off"], strict=True))
    out["gain"] = {
        "p50_us": _median([off["p50_us"] - on["p50_us"] for on, off in pairs]),
        "p99_us": _median([off["p99_us"] - on["p99_us"] for on, off in pairs]),
        "cpu_us_per_request": _median(
            [off["cpu_us_per_request"] - on["cpu_us_per_request"] for on, off in pairs]
        ),
        "throughput_pct": _median(
            [(on["throughput_rps"] / off["throughput_rps"] - 1) * 100 for on, off in pairs]
        ),
        "note": "off minus on (positive: the fast path is faster); medians of the per-round differences",
    }
    return out


def _quartiles(values: list[float], digits: int) -> list[float]:
    """The interquartile range of the per-round differences: how far apart the rounds were."""
    return [round(float(q), digits) for q in np.percentile(values, [25, 75])]


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def _jpeg_request(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> Send:
    content_headers = {"content-type": "image/jpeg", **headers}

    async def send() -> httpx.Response:
        return await client.post(path, content=body, headers=content_headers)

    return send


def _write_edge_files(work: Path, detector_ids: list[str], device_token: str) -> tuple[Path, Path]:
    config_path = work / "edge-config.yaml"
    config_path.write_text(yaml.safe_dump(edge_only_config(detector_ids)))
    data_dir = work / "edge-data"
    add_token(data_dir / LOCAL_TOKENS_FILE, device_token, "bench-fast-path")
    return config_path, data_dir


def _cloud_down() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(503, json={"detail": "no cloud in this bench"}))


async def run_app_layer(
    model_root: Path, bundles: list[BenchBundle], p: ABProtocol, work: Path
) -> dict[str, Any]:
    """(a) for inference (digit) and edge-api (each bundle's frames, inference stubbed)."""
    from edge.api.app import create_app as create_edge_api
    from edge.inference.app import create_app as create_inference

    internal = "bench-internal-" + "i" * 32
    device = DEVICE_TOKEN_PREFIX + "d" * 24
    results: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        inference_options: dict[str, Any] = {
            "model_root": model_root,
            "worker_threads": os.cpu_count() or 1,
            "intra_op_threads": 1,
            "INTELLIOPTICS_INTERNAL_TOKEN": internal,
        }
        inference_settings = InferenceSettings(**inference_options)
        inference = as_fast_path_app(create_inference(inference_settings))
        await stack.enter_async_context(inference.router.lifespan_context(inference))
        inference_client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=inference), base_url="http://inference")
        )
        internal_headers = {INTERNAL_TOKEN_HEADER: internal}
        # Real answers of the inference app, for edge-api's stubbed hop.
        infos, answers = {}, {}
        for b in bundles:
            info = await inference_client.get(f"/models/{b.detector_id}", headers=internal_headers)
            answer = await inference_client.post(
                f"{INFER_PATH}?detector_id={b.detector_id}", content=b.frames[0], headers=internal_headers
            )
            if info.status_code != 200 or answer.status_code != 200:
                raise RuntimeError(f"inference could not answer for {b.key}: {answer.text[:200]}")
            infos[b.detector_id], answers[b.detector_id] = info.content, answer.content
        cap = inference_settings.max_image_bytes + 1024**2
        digit = next((b for b in bundles if b.key == "digit"), bundles[0])
        infer_path = f"{INFER_PATH}?detector_id={digit.detector_id}"
        target = InProcessTarget(
            name=f"inference ({digit.key})",
            toggle=FastPathToggle(inference),
            send=_jpeg_request(inference_client, infer_path, digit.frames[0], internal_headers),
            send_oversized=_jpeg_request(inference_client, infer_path, b"\0" * (cap + 1), internal_headers),
            route_dependency=get_service,
        )
        verified = {"inference": await verify_routing(target)}
        res = await measure_app_layer(target, p)
        results[f"inference_{digit.key}"] = {"service": "inference", "bundle": digit.key, **res}
        log(f"  (a) {target.name:<22} {_app_short(res)}")

        config_path, data_dir = _write_edge_files(work, [b.detector_id for b in bundles], device)
        edge_options: dict[str, Any] = {
            "data_dir": data_dir,
            "config_path": config_path,
            "inference_url": "http://127.0.0.1:9",
            "cloud_url": "http://cloud.invalid",
            "streams_url": "",
            "updater_url": "",
            "admin_token": "io_benchadmin_" + "a" * 30,
            "INTELLIOPTICS_INTERNAL_TOKEN": internal,
        }
        edge_settings = EdgeSettings(**edge_options)
        edge = as_fast_path_app(create_edge_api(edge_settings, cloud_transport=_cloud_down()))
        await stack.enter_async_context(edge.router.lifespan_context(edge))
        edge.state.edge.inference._http = StubInferenceHttp(infos, answers)
        edge_client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://edge")
        )
        device_headers = {DEVICE_TOKEN_HEADER: device}
        toggle = FastPathToggle(edge)
        edge_cap = edge_settings.max_image_bytes + 1024**2
        for b in bundles:
            submit = f"{SUBMIT_PATH}?detector_id={b.detector_id}"
            target = InProcessTarget(
                name=f"edge-api ({b.key})",
                toggle=toggle,
                send=_jpeg_request(edge_client, submit, b.frames[0], device_headers),
                send_oversized=_jpeg_request(edge_client, submit, b"\0" * (edge_cap + 1), device_headers),
                route_dependency=get_state,
            )
            verified[f"edge-api_{b.key}"] = await verify_routing(target)
            res = await measure_app_layer(target, p)
            results[f"edge-api_{b.key}"] = {
                "service": "edge-api",
                "bundle": b.key,
                "frame_bytes": len(b.frames[0]),
                **res,
            }
            log(f"  (a) {target.name:<22} {_app_short(res)}")
    return {"targets": results, "routing_checks": verified}


def _app_short(res: dict[str, Any]) -> str:
    g = res["gain"]
    return (
        f"p50 on {res['on']['p50_us']} µs / off {res['off']['p50_us']} µs, CPU/req on "
        f"{res['on']['cpu_us_per_request']} / off {res['off']['cpu_us_per_request']} µs; gain p50 "
        f"{g['p50_us']} µs, CPU {g['cpu_us_per_request']} µs [{res['rounds']} rounds"
        f"{'' if res['stabilized'] else ', not stable'}]"
    )


# -- (b) end to end, real uvicorn -----------------------------------------------------------------------


class ToggleStack(BenchStack):
    """BenchStack whose edge-api and inference run under `python -m bench.fast_path --serve`, so their
    fast paths can be cleared and put back while they run (SIGUSR1 off, SIGUSR2 on)."""

    def _argv(self, module: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.fast_path",
            "--serve",
            module,
            "--mode-file",
            str(self.mode_file(module)),
        ]

    def mode_file(self, module: str) -> Path:
        return self.workdir / f"{module}.fast-path"

    def set_fast_paths(self, on: bool, timeout_s: float = 10.0) -> None:
        """Switch both services and wait until each says it did ("on N" / "off 0" in its mode file)."""
        for module, proc in (("edge.api", self.edge), ("edge.inference", self.inference)):
            assert proc is not None
            path = self.mode_file(module)
            proc.send_signal(signal.SIGUSR2 if on else signal.SIGUSR1)
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(OSError):
                    state, _, count = path.read_text().strip().partition(" ")
                    if state == ("on" if on else "off") and (int(count) > 0) == on:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{module} did not switch its fast paths {'on' if on else 'off'}")
                time.sleep(0.01)


def serve_toggleable(module: str, mode_file: Path) -> None:
    """What `python -m edge.api` / `python -m edge.inference` do, plus the SIGUSR1/SIGUSR2 switch."""
    from common.http import configure_logging, serve
    from common.log_redaction import install_secret_redaction

    options: dict[str, Any] = {}
    settings: EdgeSettings | InferenceSettings
    if module == "edge.api":
        from edge.api.app import create_app as create_edge_api

        settings = EdgeSettings()
        configure_logging(settings.log_level)
        install_secret_redaction()
        app = as_fast_path_app(create_edge_api(settings))
    elif module == "edge.inference":
        from edge.inference.app import create_app as create_inference

        settings = InferenceSettings()
        configure_logging(settings.log_level)
        install_secret_redaction()
        app = as_fast_path_app(create_inference(settings))
        options["proxy_headers"] = False
    else:
        raise SystemExit(f"--serve takes edge.api or edge.inference, not {module!r}")
    toggle = FastPathToggle(app)

    def switch(on: bool) -> None:
        toggle.set(on)
        tmp = mode_file.with_suffix(".tmp")
        tmp.write_text(f"{'on' if toggle.is_on else 'off'} {len(app.fast_paths)}\n")
        tmp.replace(mode_file)

    def off(signum: int, frame: FrameType | None) -> None:
        switch(False)

    def on(signum: int, frame: FrameType | None) -> None:
        switch(True)

    signal.signal(signal.SIGUSR1, off)
    signal.signal(signal.SIGUSR2, on)
    switch(True)
    serve(app, settings.host, settings.port, **options)


def _sanity(stack: ToggleStack, b: BenchBundle) -> dict[str, Any]:
    """In each mode: a 200 edge answer, and an over-the-cap declared length refused unread by the
    body-limit middleware, at edge-api and at inference."""
    seen: dict[str, Any] = {}
    cap = EdgeSettings.model_fields["max_image_bytes"].default + 1024**2
    for mode in MODES:
        stack.set_fast_paths(mode == "on")
        resp = httpx.post(
            f"{stack.edge_url}{SUBMIT_PATH}",
            params={"detector_id": b.detector_id},
            content=b.frames[0],
            headers=stack.device_headers,
            timeout=60.0,
        )
        body = resp.json() if resp.status_code == 200 else {}
        if resp.status_code != 200 or not (body.get("result") or {}).get("from_edge"):
            raise RuntimeError(
                f"{b.key}, fast path {mode}: edge-api answered {resp.status_code}: {resp.text[:300]}"
            )
        refusals = {}
        for name, port, path, headers in (
            ("edge-api", stack.edge_port, f"{SUBMIT_PATH}?detector_id={b.detector_id}", stack.device_headers),
            (
                "inference",
                stack.inference_port,
                f"{INFER_PATH}?detector_id={b.detector_id}",
                stack.internal_headers,
            ),
        ):
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {cap + 1}\r\n\r\n"
            ).encode("latin-1")
            received, _ = raw_exchange(port, head, wait_s=10)
            status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/1.1 ") else "none"
            refused = status == "413" and BODY_LIMIT_DETAIL.encode() in received
            if not refused:
                raise RuntimeError(f"{name}, fast path {mode}: over-the-cap body got {received[:200]!r}")
            refusals[name] = int(status)
        seen[mode] = {"status": resp.status_code, "label": body["result"].get("label"), "oversized": refusals}
    stack.set_fast_paths(True)
    return seen


def _window_protocol(p: ABProtocol) -> MeasurementProtocol:
    return MeasurementProtocol(
        warmup_s=p.window_warmup_s, window_s=p.e2e_window_s, stable_windows=1, tolerance=1.0, max_windows=1
    )


def _e2e_point(stack: ToggleStack, b: BenchBundle, c: int, p: ABProtocol) -> dict[str, Any]:
    one = _window_protocol(p)
    path = f"{SUBMIT_PATH}?detector_id={b.detector_id}"
    warmup = MeasurementProtocol(
        warmup_s=p.warmup_s, window_s=p.window_warmup_s, stable_windows=1, tolerance=1.0, max_windows=1
    )

    def measure(protocol: MeasurementProtocol = one) -> dict[str, Any]:
        return measure_http(
            stack,
            stack.edge_port,
            path,
            b,
            c,
            protocol,
            client="raw",
            timings=timings_from_server_timing,
            breakdown=edge_breakdown,
        )

    for mode in MODES:  # warm-up of both modes at this load
        stack.set_fast_paths(mode == "on")
        measure(warmup)
    windows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    decisive = (b.key, str(c)) == DECISION_POINT
    least, most = (p.decision_rounds, p.decision_rounds) if decisive else (p.min_rounds, p.max_rounds)
    rounds = 0
    while rounds < most:
        for mode in round_order(rounds):
            stack.set_fast_paths(mode == "on")
            windows[mode].append(_e2e_row(measure()))
        rounds += 1
        if rounds >= least and stable(windows, p):
            break
    stack.set_fast_paths(True)
    return _e2e_summary(windows, rounds, stable(windows, p))


def _e2e_row(res: dict[str, Any]) -> dict[str, Any]:
    cpu = res.get("cpu", {})
    ms = cpu.get("cpu_ms_per_request", {})
    return {
        "throughput_rps": res["throughput_rps"],
        "requests": res["requests"],
        "errors": res["errors_including_warmup"],
        "p50_ms": res["p50_ms"],
        "p95_ms": res["p95_ms"],
        "p99_ms": res["p99_ms"],
        "edge_own_p50_ms": res.get("breakdown_p50_ms", {}).get("edge_answer_own"),
        "cpu_ms_per_request": {k: ms.get(k) for k in ("edge-api", "inference", "loadgen")},
        "foreign_busy_cores": cpu.get("foreign_busy_cores"),
        "loadavg_1m": res.get("loadavg_1m_end"),
    }


SERVICES = ("edge-api", "inference")


def _pooled_cpu_ms(ws: list[dict[str, Any]], svc: str) -> float | None:
    """CPU ms per request of one service over all of a mode's windows (request-weighted: a window
    holds a few hundred requests and CPU time comes in 10 ms ticks)."""
    rows = [(w["cpu_ms_per_request"][svc], w["requests"]) for w in ws]
    rows = [(v, n) for v, n in rows if v is not None and n]
    total = sum(n for _, n in rows)
    return round(sum(v * n for v, n in rows) / total, 4) if total else None


def _e2e_summary(windows: dict[str, list[dict[str, Any]]], rounds: int, stabilized: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds, "stabilized": stabilized}
    for mode, ws in windows.items():
        tput = [w["throughput_rps"] for w in ws]
        cpu = {svc: _pooled_cpu_ms(ws, svc) for svc in SERVICES}
        out[mode] = {
            "throughput_rps": _median(tput),
            "throughput_spread_pct": round((max(tput) - min(tput)) / float(np.median(tput)) * 100, 2),
            **{k: _median([w[k] for w in ws]) for k in ("p50_ms", "p95_ms", "p99_ms")},
            "cpu_ms_per_request": cpu,
            "service_cpu_ms_per_request": round(sum(v or 0.0 for v in cpu.values()), 4),
            "errors": sum(w["errors"] for w in ws),
            "foreign_busy_cores_max": max((w["foreign_busy_cores"] or 0.0) for w in ws),
            "loadavg_1m_max": max((w["loadavg_1m"] or 0.0) for w in ws),
            "windows": ws,
        }
    pairs = list(zip(windows["on"], windows["off"], strict=True))
    tput_pct = [(on["throughput_rps"] / off["throughput_rps"] - 1) * 100 for on, off in pairs]
    p50 = [off["p50_ms"] - on["p50_ms"] for on, off in pairs]
    cpu_on, cpu_off = out["on"]["service_cpu_ms_per_request"], out["off"]["service_cpu_ms_per_request"]
    out["gain"] = {
        "throughput_pct": _median(tput_pct),
        "throughput_pct_range": [round(min(tput_pct), 2), round(max(tput_pct), 2)],
        "throughput_pct_iqr": _quartiles(tput_pct, 2),
        "p50_ms": _median(p50),
        "p50_ms_range": [round(min(p50), 3), round(max(p50), 3)],
        "p50_ms_iqr": _quartiles(p50, 3),
        "p99_ms": _median([off["p99_ms"] - on["p99_ms"] for on, off in pairs]),
        "service_cpu_ms_per_request": round(cpu_off - cpu_on, 4),
        "cpu_bound_throughput_pct": round((cpu_off / cpu_on - 1) * 100, 2) if cpu_on else None,
        "note": (
            "on vs off, positive = the fast path is better; throughput and latency: medians, ranges and "
            "interquartile ranges of the per-round differences; service CPU = edge-api + inference CPU "
            "ms per request over all windows of a mode; cpu_bound_throughput_pct = what the CPU saved "
            "is worth in throughput when the two services are CPU-bound on a box of their own (less "
            "sensitive to other work on the machine, though contention inflates CPU time too)"
        ),
    }
    return out


def run_e2e(model_root: Path, bundles: list[BenchBundle], p: ABProtocol, work: Path) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    points: dict[str, dict[str, Any]] = {}
    stack = ToggleStack(
        work / "e2e", model_root, edge_only_config([b.detector_id for b in bundles]), worker_threads=threads
    )
    with stack:
        sanity = {b.key: _sanity(stack, b) for b in bundles}
        for b in bundles:
            for c in CONCURRENCIES:
                res = _e2e_point(stack, b, c, p)
                points.setdefault(b.key, {})[str(c)] = res
                log(f"  (b) {b.key:<6} c={c:<3} {_e2e_short(res)}")
                stack.check_alive()
    return {"points": points, "sanity": sanity, "inference_worker_threads": threads}


def _e2e_short(res: dict[str, Any]) -> str:
    on, off, g = res["on"], res["off"], res["gain"]
    return (
        f"on {on['throughput_rps']} req/s p50 {on['p50_ms']} ms | off {off['throughput_rps']} req/s "
        f"p50 {off['p50_ms']} ms | gain {g['throughput_pct']} % p50 {g['p50_ms']} ms "
        f"[{res['rounds']} rounds{'' if res['stabilized'] else ', not stable'}]"
    )


# -- decision, report ---------------------------------------------------------------------------------


def decide(e2e: dict[str, Any]) -> dict[str, Any]:
    key, c = DECISION_POINT
    point = e2e["points"].get(key, {}).get(c)
    if point is None:
        return {"verdict": None, "reason": f"the {key} bundle at c={c} was not measured"}
    gain = point["gain"]
    material = (gain["throughput_pct"] or 0.0) > KEEP_THROUGHPUT_PCT or (gain["p50_ms"] or 0.0) > KEEP_P50_MS
    return {
        "verdict": "keep" if material else "remove",
        "rule": (
            f"keep if, on the {key} bundle at concurrency {c}, the fast path gains more than "
            f"{KEEP_THROUGHPUT_PCT} % throughput or {KEEP_P50_MS} ms p50 (median of paired rounds)"
        ),
        "throughput_pct": gain["throughput_pct"],
        "p50_ms": gain["p50_ms"],
        "cpu_bound_throughput_pct": gain["cpu_bound_throughput_pct"],
    }


def print_report(result: dict[str, Any]) -> None:
    app = result.get("app_layer", {}).get("targets", {})
    if app:
        print()
        print("(a) app layer, in-process (httpx.ASGITransport, one request at a time):")
        print()
        print(
            "| service (frames) | p50 µs on / off | p95 µs on / off | p99 µs on / off "
            "| CPU µs/req on / off | gain p50 µs | gain CPU µs/req | rounds |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in app.items():
            on, off, g = r["on"], r["off"], r["gain"]
            print(
                f"| {name} | {_fmt(on['p50_us'], 1)} / {_fmt(off['p50_us'], 1)} "
                f"| {_fmt(on['p95_us'], 1)} / {_fmt(off['p95_us'], 1)} "
                f"| {_fmt(on['p99_us'], 1)} / {_fmt(off['p99_us'], 1)} "
                f"| {_fmt(on['cpu_us_per_request'], 1)} / {_fmt(off['cpu_us_per_request'], 1)} "
                f"| {_fmt(g['p50_us'], 1)} | {_fmt(g['cpu_us_per_request'], 1)} "
                f"| {r['rounds']}{'' if r['stabilized'] else '*'} |"
            )
    points = result.get("e2e", {}).get("points", {})
    if points:
        print()
        print("(b) end to end, client -> edge-api -> inference (real uvicorn), fast paths on / off:")
        print()
        print(
            "| bundle | conc | req/s on / off | gain req/s % (IQR) | p50 ms on / off | gain p50 ms (IQR) "
            "| p95 ms on / off | p99 ms on / off | CPU ms/req edge-api+inference on / off "
            "| CPU-bound gain % | rounds |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, per in points.items():
            for c, r in per.items():
                on, off, g = r["on"], r["off"], r["gain"]
                rng, p50r = g["throughput_pct_iqr"], g["p50_ms_iqr"]
                print(
                    f"| {key} | {c} | {_fmt(on['throughput_rps'], 1)} / {_fmt(off['throughput_rps'], 1)} "
                    f"| {_fmt(g['throughput_pct'], 1)} ({_fmt(rng[0], 1)} .. {_fmt(rng[1], 1)}) "
                    f"| {_fmt(on['p50_ms'], 3)} / {_fmt(off['p50_ms'], 3)} "
                    f"| {_fmt(g['p50_ms'], 3)} ({_fmt(p50r[0], 3)} .. {_fmt(p50r[1], 3)}) "
                    f"| {_fmt(on['p95_ms'], 2)} / {_fmt(off['p95_ms'], 2)} "
                    f"| {_fmt(on['p99_ms'], 2)} / {_fmt(off['p99_ms'], 2)} "
                    f"| {_fmt(on['service_cpu_ms_per_request'], 3)} / {_fmt(off['service_cpu_ms_per_request'], 3)} "
                    f"| {_fmt(g['cpu_bound_throughput_pct'], 1)} "
                    f"| {r['rounds']}{'' if r['stabilized'] else '*'} |"
                )
    print("\n(* = the windows did not agree within the tolerance)")
    m = result["machine"]
    print(f"loadavg start {m['loadavg_start']} end {m['loadavg_end']} on {m['cpu_count']} cores")
    d = result.get("decision")
    if d and d.get("verdict"):
        print(f"decision: {d['verdict']} ({d['rule']}: {d['throughput_pct']} %, {d['p50_ms']} ms)")


# -- orchestration ------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_in_process_logs() -> Iterator[None]:
    """The in-process apps' warnings (a dead cloud, by design) would drown the progress lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    p = QUICK if args.quick else FULL
    log("preparing bundles (first run builds the camera bundle)...")
    model_root = bench_model_root()
    bundles = load_bundles(model_root, ["digit", "camera"], n_digit=64, n_camera=16)
    busy_before = wait_until_quiet(args.wait_quiet)
    if busy_before > QUIET_CORES:
        log(f"  warning: other work keeps {busy_before:.2f} cores busy; results will be noisy")
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {"benchmark": "fast_path", "quick": bool(args.quick)}
    with tempfile.TemporaryDirectory(prefix="fast-path-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_app_layer:
            log("(a) app layer, in-process")
            with quiet_in_process_logs():
                result["app_layer"] = run(functools.partial(run_app_layer, model_root, bundles, p, work))
        if not args.skip_e2e:
            log("(b) end to end: starting inference and edge-api under uvicorn")
            result["e2e"] = run_e2e(model_root, bundles, p, work)
            result["decision"] = decide(result["e2e"])
    result.update(
        {
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "code": code_version(),
            "machine": {
                **machine_info(None),
                "busy_cores_before_start": round(busy_before, 3),
                "loadavg_start": load_start,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            },
            "protocol": p.as_dict(),
            "bundles": {
                b.key: {
                    "detector_id": b.detector_id,
                    "input": b.input_desc,
                    "mean_frame_bytes": b.mean_frame_bytes,
                }
                for b in bundles
            },
            "setup": {
                "off": "app.fast_paths.clear() after create_app(): the hot requests take the declared FastAPI route",
                "e2e": (
                    "closed-loop keep-alive clients straight to edge-api (no nginx); both services switched "
                    "together; edge-only detector config, dead cloud; log level warning (no access lines)"
                ),
                "app_layer": (
                    "sequential requests through httpx.ASGITransport; edge-api's inference hop answered "
                    "from memory with a real inference answer; CPU = process CPU time / requests"
                ),
            },
        }
    )
    return result


def errors_in(result: dict[str, Any]) -> int:
    total = 0
    for r in result.get("app_layer", {}).get("targets", {}).values():
        total += sum(r[m]["errors"] for m in MODES)
    for per in result.get("e2e", {}).get("points", {}).values():
        for r in per.values():
            total += sum(r[m]["errors"] for m in MODES)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short windows, 2 rounds (smoke run)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/fast_path[.quick].json)"
    )
    parser.add_argument("--skip-app-layer", action="store_true", help="skip (a), the in-process measurement")
    parser.add_argument("--skip-e2e", action="store_true", help="skip (b), the end-to-end measurement")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for other work on the machine to stop before measuring",
    )
    parser.add_argument("--serve", metavar="MODULE", help=argparse.SUPPRESS)
    parser.add_argument("--mode-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.mode_file is None:
            parser.error("--serve needs --mode-file")
        serve_toggleable(args.serve, args.mode_file)
        return 0
    result = run_and_write("fast_path", args, run_benchmark, print_report)
    if result is None:
        return 130
    return 0 if not errors_in(result) else 1


if __name__ == "__main__":
    sys.exit(main())
