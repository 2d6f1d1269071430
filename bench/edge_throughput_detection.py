"""Edge throughput of a detection bundle (COUNT with boxes): in-process versus the full chain.

    python -m bench.edge_throughput --only detection [--quick]

The bundle is a detection head trained by training.detection on generated coin trays (200 images,
built once under build/bench-models/), on the real EfficientNet-Lite0 backbone; the frames are 1024
distinct generated 448x448 JPEGs (more than the embedding cache holds, so the chain gets no reuse).
For each concurrency, (a) `ModelRuntime.predict` in-process on a thread pool as the inference service
runs it and (b) closed-loop clients through nginx → edge-api → inference, measured as
bench/edge_throughput.py measures every bundle (warm-up, fixed windows until stable, p50/p95/p99,
CPU per process). `detection_ratio_c16` = chain / in-process throughput at concurrency 16
(target ≥ 0.85): what the HTTP hops, the decision and the answer's boxes cost beside the model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.edge_throughput import (
    FULL,
    LITE0_CACHE_DIR,
    QUICK,
    SUBMIT_PATH,
    Cooldown,
    InProcess,
    _short,
    chain_ratios,
    code_version,
    edge_breakdown,
    log,
    measure_http,
    sanity_check,
    wait_until_quiet,
)
from bench.fixtures import BenchBundle
from bench.loadgen import timings_from_server_timing
from bench.stack import BenchStack, edge_only_config
from common.backbone import BackboneStore
from common.bundle import (
    BundleError,
    DetectorMode,
    current_bundle_dir,
    install_bundle,
    read_metadata,
    verify_bundle,
)

DETECTOR_ID = f"det_{'BenchDetectionEdge':0<27}"
TRAIN_IMAGES = 200
FRAMES = 1024
FRAME_SIDE = 448
MAX_COUNT = 8


def _usable(model_root: Path) -> bool:
    path = current_bundle_dir(model_root, DETECTOR_ID)
    if path is None:
        return False
    try:
        verify_bundle(path)
        meta = read_metadata(path)
    except (BundleError, ValueError, OSError):
        return False
    return (
        meta.detection is not None
        and meta.backbone is not None
        and BackboneStore.for_model_root(model_root).has(meta.backbone.sha256)
    )


def detection_model_root(rebuild: bool = False) -> Path:
    """A model root with the Lite0 backbone and one detection head trained on generated coin trays."""
    from tests.support.models import lite0_backbone
    from training.builder import DetectorSpec
    from training.detection.synthetic import as_items, generate
    from training.detection.train import DetectionOptions, train_detection
    from training.embeddings import Embedder
    from training.from_export import TrainingOptions

    backbone = lite0_backbone()
    target = LITE0_CACHE_DIR / f"detection-{backbone.ref.sha256[:12]}"
    if not rebuild and _usable(target):
        return target
    log(f"training the detection bundle under {target} (once)")
    LITE0_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-detection-", dir=LITE0_CACHE_DIR))
    embedder = Embedder(backbone, threads=os.cpu_count() or 1)
    try:
        spec = DetectorSpec(
            detector_id=DETECTOR_ID,
            detector_name="bench coins",
            query="How many coins are there?",
            mode=DetectorMode.COUNT,
            labels=tuple(str(i) for i in range(MAX_COUNT + 1)),
        )
        items = as_items(generate(TRAIN_IMAGES, seed=7, max_count=MAX_COUNT), "bench")
        outcome = train_detection(
            items,
            spec,
            staging / "out",
            TrainingOptions(device="cpu", threads=os.cpu_count() or 1),
            embedder,
            DetectionOptions(class_name="coin"),
        )
        BackboneStore.for_model_root(staging).install_file(backbone.path, backbone.ref)
        install_bundle(outcome.bundle_dir, staging)
        shutil.rmtree(staging / "out")
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        embedder.close()
    return target


def detection_frames(n: int) -> list[bytes]:
    from training.detection.synthetic import generate_one

    return [generate_one(99, i, MAX_COUNT, side=FRAME_SIDE).jpeg(85) for i in range(n)]


def run_detection(args: argparse.Namespace) -> dict[str, Any]:
    protocol = QUICK if args.quick else FULL
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    log("preparing the detection bundle and frames...")
    model_root = detection_model_root(rebuild=args.rebuild_models)
    path = current_bundle_dir(model_root, DETECTOR_ID)
    assert path is not None
    meta = read_metadata(path)
    frames = detection_frames(FRAMES)
    bundle = BenchBundle(
        "detection",
        DETECTOR_ID,
        meta.version,
        f"{FRAME_SIDE}x{FRAME_SIDE} JPEG → 224x224 RGB, detection head (boxes, count) on the shared backbone",
        frames,
    )
    threads = os.cpu_count() or 1
    out: dict[str, Any] = {
        "detector_id": DETECTOR_ID,
        "input": bundle.input_desc,
        "frames": len(frames),
        "mean_frame_bytes": bundle.mean_frame_bytes,
        "in_process": {},
        "chain": {},
    }
    busy_before = wait_until_quiet(args.wait_quiet)
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="edge-bench-detection-") as tmp:
        stack = BenchStack(Path(tmp), model_root, edge_only_config([DETECTOR_ID]), worker_threads=threads)
        with stack:
            out["sanity"] = sanity_check(stack, [bundle])
            cooldown = Cooldown()
            cooldown.done()
            local = InProcess(model_root, bundle, threads)
            provider = local.provider
            try:
                for c in concurrencies:
                    res = local.measure(c, protocol, stack.pid_groups())
                    out["in_process"][str(c)] = res
                    log(f"  (a) in-process detection c={c:<3} {_short(res)}")
                    cooldown.wait()
                    res = measure_http(
                        stack,
                        stack.gateway_port,
                        f"{SUBMIT_PATH}?detector_id={DETECTOR_ID}",
                        bundle,
                        c,
                        protocol,
                        args.client,
                        timings_from_server_timing,
                        edge_breakdown,
                    )
                    cooldown.done()
                    out["chain"][str(c)] = res
                    log(f"  (b) chain      detection c={c:<3} {_short(res)}")
            finally:
                local.close()
    chain_ratios(out)
    out["setup"] = {
        "concurrency": concurrencies,
        "protocol": protocol.as_dict(),
        "quick": bool(args.quick),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "busy_cores_before_start": round(busy_before, 3),
        "provider": provider,
        "code": code_version(),
        "inference_worker_threads": threads,
    }
    errors = sum(r["errors_including_warmup"] for r in out["chain"].values())
    return {
        "detection_ratio_c16": out["ratio_by_concurrency"].get("16"),
        "detection_errors_total": errors,
        "detection": out,
    }


def print_detection_report(result: dict[str, Any]) -> None:
    det = result.get("detection")
    if not det:
        return
    print(f"\ndetection bundle ({det['input']}):")
    print(
        f"{'c':>3} {'in-process rps':>15} {'p50 ms':>7} {'chain rps':>10} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'ratio':>6}"
    )
    for c, a in det["in_process"].items():
        b = det["chain"].get(c, {})
        print(
            f"{c:>3} {a['throughput_rps']:>15.1f} {a['p50_ms']:>7} {b.get('throughput_rps', 0):>10.1f} "
            f"{b.get('p50_ms')!s:>7} {b.get('p95_ms')!s:>7} {b.get('p99_ms')!s:>7} "
            f"{det['ratio_by_concurrency'].get(c, 0):>6.3f}"
        )
