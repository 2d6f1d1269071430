"""The pretrained-backbone head engine on Fashion-MNIST: head jobs from cached embeddings, and fine-tuning.

Used by bench/training_quality.py (`--only head`, `--only finetune`).

- `embed_s_per_1000`: seconds to embed 1,000 Fashion-MNIST images (28x28 PNG, as the cloud stores them)
  with the real EfficientNet-Lite0 backbone in ONNX Runtime on this machine (warm-up, then repeats).
- `head_job_s[n]`: one head job end to end from cached embeddings at n labels, timed as the trainer
  runs it (training/service/job.py): `read_export` of an export that carries every item's embedding
  and no image (what the cloud sends for `images: missing`), then
  `training.head_trainer.train_head_from_export` (head fit, OODD, calibration, ONNX export of head and
  OODD with parity checks, the split bundle written and loaded back through the runtime, reports).
  One untimed warm-up job, then repeats; p50 is the figure, p95 beside it.
- hold-out: each head is judged on Fashion-MNIST images that none of the sizes trained on (t10k
  images 5000..), and on MNIST digits as out-of-domain traffic, at threshold 0.9.
- `fine_tune`: at 1,000 labels, the trainer's second candidate (`fine_tune_from_export`, blocks
  11-15 of the backbone on cached feature maps) against the head it starts from, on the same
  disjoint hold-out, plus the trainer's own judgement on the export's test split.

Embeddings are computed once and cached in build/bench-models (keyed by the backbone's sha256).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "build" / "bench-models"
BACKBONE_CACHE = ROOT / "build" / "backbones"  # shared with tests.support.models.lite0_backbone
HEAD_SIZES = (100, 1000, 5000)
QUICK_HEAD_SIZES = (100, 500)
TRAIN_POOL = 5000  # t10k images 0..4999 are the labelled pool; the hold-out starts after them
HOLDOUT = 2000
QUICK_HOLDOUT = 300
OOD_DIGITS = 500
FINETUNE_LABELS = 1000
FINETUNE_HOLDOUT = 1000
THRESHOLD = 0.9
TARGETS = {"head_job_s_5000": 30.0}
DETECTOR_ID = f"det_{'BenchHeadFashion':0<27}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _png(pixels: NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def percentiles(samples: list[float]) -> dict[str, Any]:
    """p50 and p95 of repeated timings (linear interpolation), and the samples themselves."""
    arr = np.asarray(samples, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "samples": [round(s, 3) for s in samples],
    }


@dataclass(frozen=True)
class Corpus:
    """Fashion-MNIST t10k images, their Lite0 embeddings (cached) and labels; MNIST digits as OOD."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    embeddings: NDArray[np.float16]
    ood_embeddings: NDArray[np.float16]


def _cached(name: str, sha: str, blobs: list[bytes], embedder: Any) -> NDArray[np.float16]:
    path = CACHE_DIR / f"{name}-{sha[:12]}-{len(blobs)}.npy"
    if path.is_file():
        cached: NDArray[np.float16] = np.load(path)
        if cached.shape[0] == len(blobs):
            return cached
    log(f"embedding {len(blobs)} images for {path.name} (once; cached afterwards) ...")
    vectors = embedder.embeddings(blobs).vectors.astype(np.float16)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    out: NDArray[np.float16] = vectors
    return out


def load_corpus(embedder: Any, count: int) -> Corpus:
    from training.datasets import load_fashion_mnist, load_mnist_5k

    images, labels = load_fashion_mnist("t10k")
    sha = embedder.backbone.ref.sha256
    fashion = _cached("fashion-t10k", sha, [_png(images[i]) for i in range(count)], embedder)
    digits, _ = load_mnist_5k()
    order = np.random.default_rng(0).permutation(len(digits))[:OOD_DIGITS]
    ood = _cached("mnist5k-ood", sha, [_png(digits[i]) for i in order], embedder)
    return Corpus(images[:count], labels[:count], fashion, ood)


def build_embedder(threads: int | None) -> Any:
    from training.backbones import build_backbone
    from training.embeddings import Embedder

    backbone = build_backbone(cache_dir=BACKBONE_CACHE)
    return Embedder(backbone, threads=threads)


def time_embedding(embedder: Any, images: NDArray[np.uint8], per: int, repeats: int) -> dict[str, Any]:
    """Seconds per 1,000 images: one warm-up batch, then `repeats` runs over `per` images, scaled."""
    blobs = [_png(images[i]) for i in range(per)]
    embedder.embeddings(blobs[:32])
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        embedder.embeddings(blobs)
        samples.append((time.perf_counter() - t0) * 1000.0 / per)
    return {"images_per_run": per, **percentiles(samples)}


def _detector() -> Any:
    from training.dataset_export import ExportDetector
    from training.datasets import FASHION_CLASSES

    names = list(FASHION_CLASSES)
    return ExportDetector(
        id=DETECTOR_ID,
        name="bench-fashion-10",
        query="Which garment is this?",
        mode="MULTI_CLASS",
        labels=names,
        mode_configuration={"class_names": names, "num_classes": len(names)},
        confidence_threshold=THRESHOLD,
    )


def write_fashion_export(
    path: Path, corpus: Corpus, indices: NDArray[np.int64], sha: str, with_images: bool
) -> None:
    """The export the cloud would send: stored embeddings, and images only when asked for every one."""
    from training.dataset_export import ExportSample, write_export
    from training.datasets import FASHION_CLASSES

    samples, vectors = [], {}
    for i in indices.tolist():
        iq = f"iq_fashion_t10k_{i:05d}"
        samples.append(
            ExportSample(
                iq,
                FASHION_CLASSES[int(corpus.labels[i])],
                _png(corpus.images[i]),
                labeled_at="2026-01-01T00:00:00Z",
            )
        )
        vectors[iq] = corpus.embeddings[i]
    write_export(
        path,
        _detector(),
        samples,
        created_at="2026-01-01T00:00:00Z",
        embeddings={sha: vectors},
        omit_embedded_images=not with_images,
    )


def judge_head(
    outcome: Any, x: NDArray[np.floating], y: NDArray[np.int64], x_ood: NDArray[np.floating]
) -> dict[str, Any]:
    """The fitted head and OODD on hold-out embeddings: accuracy, and what a camera gets at THRESHOLD."""
    from common.confidence import softmax
    from training.evaluation import operating_point

    head, oodd = outcome.head, outcome.oodd
    xs = np.asarray(x, dtype=np.float32)
    probs = softmax(head.logits(xs), head.temperature)
    q = oodd.in_domain(head.features(xs))
    point = operating_point(probs, q, y, THRESHOLD)
    xo = np.asarray(x_ood, dtype=np.float32)
    probs_o = softmax(head.logits(xo), head.temperature)
    q_o = oodd.in_domain(head.features(xo))
    final_o = q_o * probs_o.max(axis=1) + (1.0 - q_o) / probs_o.shape[1]
    return {
        "n": int(y.shape[0]),
        "accuracy": point.accuracy,
        "escalation_rate": point.escalation_rate,
        "confident_accuracy": point.confident_accuracy,
        "ood_n": int(xo.shape[0]),
        "ood_confident_fraction": float(np.mean(final_o >= THRESHOLD)),
    }


def _options(threads: int | None, seed: int) -> Any:
    from training.from_export import TrainingOptions

    return TrainingOptions(device="cpu", threads=threads, seed=seed, confidence_threshold=THRESHOLD)


def head_job(export_path: Path, out_dir: Path, options: Any, embedder: Any) -> tuple[float, Any]:
    """What the trainer does with a downloaded export (job.py `_run`, head part): timed end to end."""
    from training.dataset_export import read_export
    from training.head_trainer import train_head_from_export

    t0 = time.perf_counter()
    outcome = train_head_from_export(read_export(export_path), out_dir, options, embedder)
    return time.perf_counter() - t0, outcome


def run_head(args: Any) -> dict[str, Any]:
    sizes = QUICK_HEAD_SIZES if args.quick else HEAD_SIZES
    holdout_n = QUICK_HOLDOUT if args.quick else HOLDOUT
    repeats = args.repeats or (2 if args.quick else 3)
    embedder = build_embedder(args.threads)
    try:
        corpus = load_corpus(embedder, TRAIN_POOL + HOLDOUT)
        log("timing the backbone ...")
        embed = time_embedding(
            embedder, corpus.images[TRAIN_POOL:], 200 if args.quick else 1000, 2 if args.quick else 3
        )
        log(f"embedding: {embed['p50']:.2f} s per 1000 images (p50)")
        sha = embedder.backbone.ref.sha256
        pool = np.random.default_rng(args.seed).permutation(TRAIN_POOL).astype(np.int64)
        hold = np.arange(TRAIN_POOL, TRAIN_POOL + holdout_n, dtype=np.int64)
        x_hold, y_hold = corpus.embeddings[hold], corpus.labels[hold]
        options = _options(args.threads, args.seed)
        per_size: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="bench-head-") as tmp:
            work = Path(tmp)
            for n in sizes:
                export_path = work / f"export-{n}.tar.gz"
                write_fashion_export(export_path, corpus, np.sort(pool[:n]), sha, with_images=False)
                if n == sizes[0]:
                    head_job(export_path, work / "warmup", options, embedder)  # untimed warm-up
                samples, outcome = [], None
                for r in range(repeats):
                    seconds, outcome = head_job(export_path, work / f"out-{n}-{r}", options, embedder)
                    samples.append(seconds)
                assert outcome is not None
                judged = judge_head(outcome, x_hold, y_hold, corpus.ood_embeddings)
                per_size[str(n)] = {
                    "seconds": percentiles(samples),
                    "stages_s": outcome.metadata.metrics.get("timings_s"),
                    "head": outcome.head.params,
                    "evaluation": outcome.candidate.method,
                    "holdout": judged,
                }
                log(
                    f"head job at {n} labels: {per_size[str(n)]['seconds']['p50']:.2f} s (p50), "
                    f"hold-out accuracy {judged['accuracy']:.4f}"
                )
    finally:
        embedder.close()
    biggest = str(sizes[-1])
    head_job_s = {k: v["seconds"]["p50"] for k, v in per_size.items()}
    return {
        "head_job_s": head_job_s,
        "embed_s_per_1000": embed["p50"],
        "head_holdout_accuracy": {k: v["holdout"]["accuracy"] for k, v in per_size.items()},
        "head_engine": {
            "created_at": _now(),
            "quick": args.quick,
            "dataset": "Fashion-MNIST t10k (Debian dataset-fashion-mnist), 10 classes, 28x28 PNG",
            "backbone": embedder.backbone.ref.id,
            "backbone_sha256": sha,
            "timed": "read_export + training.head_trainer.train_head_from_export, from an export "
            "carrying every item's embedding and no image",
            "repeats": repeats,
            "warmup_jobs": 1,
            "threshold": THRESHOLD,
            "holdout": f"t10k images {TRAIN_POOL}..{TRAIN_POOL + holdout_n - 1} (never trained on); "
            f"out of domain: {OOD_DIGITS} MNIST 5k digits",
            "embedding": embed,
            "sizes": per_size,
            "targets": TARGETS,
            "passed": {"head_job_s_5000": head_job_s[biggest] <= TARGETS["head_job_s_5000"]},
        },
    }


def run_finetune(args: Any) -> dict[str, Any]:
    from common.backbone import BackboneStore
    from common.runtime import BackbonePool, ModelRuntime
    from training.dataset_export import read_export
    from training.finetune import FineTuneOptions
    from training.head_trainer import fine_tune_from_export

    labels_n = 300 if args.quick else FINETUNE_LABELS
    holdout_n = 200 if args.quick else FINETUNE_HOLDOUT
    embedder = build_embedder(args.threads)
    try:
        corpus = load_corpus(embedder, TRAIN_POOL + HOLDOUT)
        sha = embedder.backbone.ref.sha256
        ref = embedder.backbone.ref
        pool = np.random.default_rng(args.seed).permutation(TRAIN_POOL).astype(np.int64)
        hold = np.arange(TRAIN_POOL, TRAIN_POOL + holdout_n, dtype=np.int64)
        options = _options(args.threads, args.seed)
        epochs = 1 if args.quick else options.finetune_epochs
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
            work = Path(tmp)
            export_path = work / "export.tar.gz"
            write_fashion_export(export_path, corpus, np.sort(pool[:labels_n]), sha, with_images=True)
            head_s, base = head_job(export_path, work / "out-head", options, embedder)
            log(f"head at {labels_n} labels in {head_s:.1f} s; fine-tuning ({epochs} epochs on the CPU) ...")
            t0 = time.perf_counter()
            tuned = fine_tune_from_export(
                read_export(export_path),
                work / "out-finetune",
                options,
                embedder,
                base,
                finetune=FineTuneOptions(epochs=epochs, seed=args.seed, device="cpu"),
            )
            seconds = time.perf_counter() - t0
            log(f"fine-tuned in {seconds:.0f} s; judging both on {holdout_n} hold-out images ...")
            head_holdout = judge_head(
                base, corpus.embeddings[hold], corpus.labels[hold], corpus.ood_embeddings
            )
            maps = embedder.feature_maps([_png(corpus.images[i]) for i in hold.tolist()]).vectors
            store = BackboneStore(work / "out-finetune" / "backbones")
            runtime = ModelRuntime(
                tuned.bundle_dir,
                ["CPUExecutionProvider"],
                backbone_store=store,
                backbones=BackbonePool(["CPUExecutionProvider"]),
            )
            try:
                chunks = [
                    runtime.run_head({str(ref.feature_map_output): maps[s : s + 64]})
                    for s in range(0, len(maps), 64)
                ]
            finally:
                runtime.close()
            probs = np.concatenate([p for p, _ in chunks])
            q = np.concatenate([qq for _, qq in chunks])
            # Column order of the bundle is the detector's label order (the export's).
            assert list(tuned.metadata.labels) == list(_detector().labels)
            y = corpus.labels[hold]
            tuned_acc = float(np.mean(probs.argmax(axis=1) == y))
            final = q * probs.max(axis=1) + (1.0 - q) / probs.shape[1]
            confident = final >= THRESHOLD
    finally:
        embedder.close()
    head_acc = head_holdout["accuracy"]
    return {
        "fine_tune": {
            "labels": labels_n,
            "head_accuracy": head_acc,
            "fine_tuned_accuracy": tuned_acc,
            "gain": tuned_acc - head_acc,
            "seconds": round(seconds, 1),
            "device": "cpu",
            "cuda": None,
            "cuda_note": "no GPU machine was available for this run; fine-tuning was measured on the CPU only",
            "epochs": epochs,
            "head_seconds": round(head_s, 2),
            "holdout": {
                "n": holdout_n,
                "images": f"t10k {TRAIN_POOL}..{TRAIN_POOL + holdout_n - 1}, disjoint from the labels",
                "head": head_holdout,
                "fine_tuned": {
                    "accuracy": tuned_acc,
                    "escalation_rate": float(1.0 - confident.mean()),
                    "confident_accuracy": float(np.mean(probs.argmax(axis=1)[confident] == y[confident]))
                    if confident.any()
                    else None,
                },
            },
            "test_split": {
                "n": base.candidate.n,
                "head_accuracy": base.evaluation.accuracy,
                "fine_tuned_accuracy": tuned.evaluation.accuracy,
                "head_operating_point": base.candidate.as_dict(),
                "fine_tuned_operating_point": tuned.candidate.as_dict(),
                "trainer_would_register": tuned.promotion.promote,
                "reasons": list(tuned.promotion.reasons),
            },
            "stages_s": tuned.metadata.metrics.get("timings_s"),
            "created_at": _now(),
            "quick": args.quick,
        }
    }


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def print_head(section: dict[str, Any]) -> None:
    eng = section["head_engine"]
    ok = eng["passed"]["head_job_s_5000"]
    print(
        f"head engine on Fashion-MNIST ({eng['backbone']}, threshold {eng['threshold']}, "
        f"{eng['repeats']} repeats after {eng['warmup_jobs']} warm-up job)"
    )
    emb = eng["embedding"]
    print(f"  embed 1000 images          {emb['p50']:.2f} s (p50; p95 {emb['p95']:.2f} s)")
    print(
        f"  {'labels':>6} {'job p50 s':>9} {'p95 s':>6} {'head':<28} {'acc':>7} {'esc@0.9':>8} {'conf acc':>8} {'ood conf':>8}"
    )
    for n, v in eng["sizes"].items():
        h = v["holdout"]
        kind = f"{v['head'].get('kind')} ({v['evaluation']})"
        print(
            f"  {n:>6} {v['seconds']['p50']:>9.2f} {v['seconds']['p95']:>6.2f} {kind:<28} "
            f"{_pct(h['accuracy']):>7} {_pct(h['escalation_rate']):>8} {_pct(h['confident_accuracy']):>8} "
            f"{_pct(h['ood_confident_fraction']):>8}"
        )
    biggest = list(eng["sizes"])[-1]
    print(
        f"  head job at {biggest} labels <= {TARGETS['head_job_s_5000']:.0f} s: {'ok' if ok else 'MISSED'}"
        + ("" if biggest == "5000" else " (quick run: largest size stands in)")
    )


def print_finetune(section: dict[str, Any]) -> None:
    ft = section["fine_tune"]
    ts = ft["test_split"]
    print(
        f"fine-tuning at {ft['labels']} labels ({ft['epochs']} epochs, {ft['device']}): "
        f"{ft['seconds']:.0f} s; hold-out of {ft['holdout']['n']}: head {_pct(ft['head_accuracy'])}, "
        f"fine-tuned {_pct(ft['fine_tuned_accuracy'])}, gain {100 * ft['gain']:+.2f} points"
    )
    print(
        f"  trainer's test split ({ts['n']} items): head {_pct(ts['head_accuracy'])}, fine-tuned "
        f"{_pct(ts['fine_tuned_accuracy'])}; would register: {ts['trainer_would_register']}"
    )
    print(f"  cuda: {ft['cuda']} ({ft['cuda_note']})")
