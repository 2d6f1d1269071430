"""Camera-paced learning loop for a COUNT detector with boxes, through the whole system.

    python -m bench.detection_loop [--rate 2] [--label-delay 20] [--max-seconds 1800]
        [--max-labels 5000] [--ood-rate 0.05] [--window 100] [--max-count 8] [--quick]

The same loop as bench/camera_loop.py (the whole system started by bench/loop_stack.py with its own
retrain cadence, trainer and updater; a fresh detector with no model, threshold 0.9; traffic at
`--rate` queries per second through the gateway; one reviewer answering every escalated query
`--label-delay` s after it was sent), on the generated coin-counting images of
training.detection.synthetic (real backgrounds and real coins cut from `skimage.data.coins()`, pasted
with scale, rotation, occlusion, blur and lighting changes; a fixed seed, each image once). The
reviewer answers with the true count and the generator's true boxes (`rois` on the review answer,
as the labeling page's box editor sends them), and UNCLEAR for the MNIST digits mixed in at
`--ood-rate`.

Per window: count escalation rate (in-domain queries not answered confidently by the edge),
confident count accuracy (confident edge answers whose count is the true count), digits answered
confidently. Targets: the escalation rate falls below 30 % with confident counts at least 95 %
right. Writes the `coins_count` object into bench/results/detection_loop.json and the curves to
bench/results/detection_loop.png (`--quick`: detection_loop.quick.*).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import camera_loop
from bench.camera_loop import UNCLEAR, CameraLoop, Sample, Scenario

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SEED = 2026
CLASS_NAME = "coin"
GEOMETRY = ("left", "top", "right", "bottom")


@dataclass(frozen=True)
class BoxSample(Sample):
    boxes: tuple[tuple[float, float, float, float], ...] = field(default=())


def scenario(max_count: int, max_labels: int, max_seconds: float) -> Scenario:
    return Scenario(
        name="coins_count",
        mode="COUNT",
        query="How many coins are on the tray?",
        class_names=tuple(str(i) for i in range(max_count + 1)),
        max_labels=max_labels,
        max_seconds=max_seconds,
        target_escalation=0.30,
        label_budget=max_labels,
        target_confident_accuracy=0.95,
        target_first_model_s=None,
    )


def traffic(max_count: int, ood_rate: float, seed: int) -> Iterator[Sample]:
    """Endless: generated coin images (each once), MNIST digits (camera-sized) at `ood_rate`."""
    from training.datasets import load_mnist_5k
    from training.detection.synthetic import generate_one

    digits, _ = load_mnist_5k()
    rng = np.random.default_rng(seed)
    ood_order = rng.permutation(len(digits)).tolist()
    n_in = n_ood = 0
    while True:
        if rng.random() < ood_rate:
            i = ood_order[n_ood % len(ood_order)]
            n_ood += 1
            yield Sample("ood", UNCLEAR, i, camera_loop.camera_jpeg(digits[i], 224))
            continue
        sample = generate_one(seed, n_in, max_count)
        boxes = tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in sample.boxes.tolist())
        yield BoxSample("in", str(sample.count), n_in, sample.jpeg(), boxes=boxes)
        n_in += 1


class DetectionLoop(CameraLoop):
    """The camera loop with a COUNT detector and a reviewer who draws the true boxes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boxes: dict[str, tuple[tuple[float, float, float, float], ...]] = {}

    def mode_configuration(self) -> dict[str, Any] | None:
        return {"class_name": CLASS_NAME, "max_count": len(self.scenario.class_names) - 1}

    def on_sent(self, iq_id: str, sample: Sample) -> None:
        if isinstance(sample, BoxSample):
            self.boxes[iq_id] = sample.boxes

    def answer_body(self, iq_id: str, answer: str) -> dict[str, Any]:
        if answer == UNCLEAR:
            return {"label": answer, "rois": None}
        rois = [
            {"label": CLASS_NAME, "score": 1.0, "geometry": dict(zip(GEOMETRY, box, strict=True))}
            for box in self.boxes.get(iq_id, ())
        ]
        return {"label": answer, "rois": rois}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=2.0, help="queries per second (default 2)")
    p.add_argument("--label-delay", type=float, default=20.0, help="seconds from query to answer")
    # A retrain takes 3 to 4 minutes on two cores shared with the whole system, and the count
    # keeps improving past 1500 labels: half an hour of traffic shows the curve flatten.
    p.add_argument("--max-seconds", type=float, default=1800.0)
    p.add_argument("--max-labels", type=int, default=5000)
    p.add_argument("--ood-rate", type=float, default=0.05)
    # 100 queries a window: the final three hold about 200 confident answers, enough to tell 95 %.
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--max-count", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--refresh-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--keep-state", action="store_true")
    p.add_argument("--quick", action="store_true", help="a short smoke run (quick.* outputs)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_seconds = min(args.max_seconds, 150.0)
        args.max_labels = min(args.max_labels, 60)
    args.image_size = 224
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = scenario(args.max_count, args.max_labels, args.max_seconds)
    report = camera_loop.run_scenario(
        chosen,
        args,
        DetectionLoop,
        traffic(args.max_count, args.ood_rate, args.seed),
        settings={
            "image": "224x224 RGB JPEG, generated (training.detection.synthetic, seed "
            f"{args.seed}): skimage backgrounds, coins cut from skimage.data.coins()",
            "in_domain": "generated coin trays, each image once, 0..max_count coins",
            "reviewer": "true count with the generator's true boxes as rois; UNCLEAR for a digit",
            "max_count": args.max_count,
        },
    )
    report["created_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    suffix = ".quick" if args.quick else ""
    out = RESULTS / f"detection_loop{suffix}.json"
    merged: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    merged[chosen.name] = report
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    camera_loop.plot_scenario(report, RESULTS / f"detection_loop{suffix}.png")
    camera_loop.print_scenario(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
