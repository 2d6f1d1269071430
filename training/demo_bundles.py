"""Demo detectors trained on MNIST 5k, plus a random-weight camera-sized bundle for benchmarks.

    python -m training.demo_bundles --model-root DIR [--force] [--camera] [--threads N]

Everything comes from data inside installed packages, so a fresh checkout can serve real,
calibrated answers without downloading anything. Builds are deterministic for a given torch
thread count (fixed seeds, content-hashed versions), so rebuilding an unchanged detector
re-points `current` at the same version instead of piling up copies.

The training loop, calibration, OODD, export and runtime checks are the training service's own
(`training.training_loop`, `training.builder`); only the data source and the fixed recipes are demo-specific.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.bundle import DetectorMode, PipelineConfig, PredictorMetadata, current_bundle_dir
from common.ids import ID_BODY_LEN, is_detector_id
from training.builder import (
    BuiltBundle,
    DetectorSpec,
    TensorSplits,
    behaviour_key,
    build_classifier_bundle,
    install_artifacts,
    utc_now_iso,
    version_id,
)
from training.datasets import MNIST_5K_NAME, DatasetSplits, mnist_5k_splits
from training.export import export_oodd, export_primary
from training.models import MobileNetLike, SmallCnn, count_parameters
from training.oodd import fit_oodd
from training.preprocess import Normalizer, images_to_tensor, images_to_uint8_tensor, to_nchw_uint8
from training.sample_images import photo_tiles
from training.training_loop import (
    TrainConfig,
    balanced_class_weights,
    predict,
    remove_class_weight_prior,
    train_classifier,
)

log = logging.getLogger(__name__)


def _demo_id(body: str) -> str:
    """A fixed, readable detector id: the body padded with zeros to the 27 base62 characters."""
    detector_id = f"det_{body:0<{ID_BODY_LEN}}"
    if not is_detector_id(detector_id):
        raise ValueError(f"{detector_id!r} is not a valid detector id")
    return detector_id


DEMO_SEVEN_ID = _demo_id("DemoIsThisASeven")
DEMO_DIGIT_ID = _demo_id("DemoWhichDigit")
DEMO_CAMERA_ID = _demo_id("DemoCameraBenchmark")
DEMO_SEED = 0
CODE_REF = "training.demo_bundles"

# Pixels are scaled to [0, 1] by the runtime before this mean/std (the usual MNIST statistics).
DEMO_PIPELINE = PipelineConfig(input_height=28, input_width=28, channels="L", mean=[0.1307], std=[0.3081])
CAMERA_PIPELINE = PipelineConfig(
    input_height=224, input_width=224, channels="RGB", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
)
# Half the channels of the textbook (32, 64) SmallCnn: about 3x faster to train on two cores and
# still well above the accuracy bar on MNIST 5k.
DEMO_WIDTHS = (16, 32)

SEVEN_SPEC = DetectorSpec(
    detector_id=DEMO_SEVEN_ID,
    detector_name="demo-is-seven",
    query="Is this digit a 7?",
    mode=DetectorMode.BINARY,
    labels=("NO", "YES"),
)
DIGIT_SPEC = DetectorSpec(
    detector_id=DEMO_DIGIT_ID,
    detector_name="demo-which-digit",
    query="Which digit is this?",
    mode=DetectorMode.MULTI_CLASS,
    labels=tuple(str(d) for d in range(10)),
)
SEVEN_DIGIT = 7
# Demos train on the CPU whatever the machine has: the same weights everywhere for a thread count.
DIGIT_TRAIN = TrainConfig(epochs=8, max_lr=6e-3, seed=DEMO_SEED, device="cpu")
# Fine-tuning from the digit network: fewer epochs and a gentler peak learning rate.
SEVEN_TRAIN = TrainConfig(epochs=2, max_lr=2e-3, seed=DEMO_SEED, device="cpu")


def _tensor_splits(splits: DatasetSplits, binary_digit: int | None) -> TensorSplits:
    def labels(y: np.ndarray[Any, np.dtype[np.int64]]) -> torch.Tensor:
        out = (y == binary_digit).astype(np.int64) if binary_digit is not None else y.astype(np.int64)
        return torch.from_numpy(out)

    return TensorSplits(
        x_train=to_nchw_uint8(splits.train.images),
        y_train=labels(splits.train.labels),
        x_val=to_nchw_uint8(splits.val.images),
        y_val=labels(splits.val.labels),
        x_test=to_nchw_uint8(splits.test.images),
        y_test=labels(splits.test.labels),
    )


def _train(
    name: str, model: SmallCnn, data: TensorSplits, config: TrainConfig
) -> tuple[SmallCnn, dict[str, Any]]:
    result = train_classifier(
        model,
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        Normalizer.from_pipeline(DEMO_PIPELINE),
        config,
    )
    if config.class_weights is not None:
        remove_class_weight_prior(model.head, config.class_weights)
    log.info(
        "%s: trained %d epochs in %.1fs, val accuracy %.4f",
        name,
        len(result.history),
        result.seconds,
        result.history[-1].val_accuracy,
    )
    stats = {
        "epochs": config.epochs,
        "train_seconds": round(result.seconds, 2),
        "parameters": count_parameters(model),
        "history": [
            {"epoch": e.epoch, "train_loss": round(e.train_loss, 5), "val_accuracy": round(e.val_accuracy, 5)}
            for e in result.history
        ],
    }
    return model, stats


def train_digit_model(splits: DatasetSplits, threads: int | None = None) -> tuple[SmallCnn, dict[str, Any]]:
    """The 10-class SmallCnn; also the starting point of the binary detector."""
    config = replace(DIGIT_TRAIN, threads=threads)
    torch.manual_seed(config.seed)
    model = SmallCnn(in_channels=1, num_classes=10, input_size=28, widths=DEMO_WIDTHS)
    return _train(DIGIT_SPEC.detector_name, model, _tensor_splits(splits, None), config)


def train_seven_model(
    splits: DatasetSplits, digit_model: SmallCnn, threads: int | None = None
) -> tuple[SmallCnn, dict[str, Any]]:
    """Fine-tune a copy of the digit network, with a fresh 2-way head, on 7-vs-rest.

    Starting from features that already know every digit, two epochs beat six from scratch on
    this data and keep the demo build fast. 7s are a tenth of the data, so the loss weights them
    up and the head's bias is corrected afterwards to report probabilities for the true balance.
    """
    data = _tensor_splits(splits, SEVEN_DIGIT)
    weights = balanced_class_weights(data.y_train.numpy(), 2)
    config = replace(SEVEN_TRAIN, class_weights=weights, threads=threads)
    model = copy.deepcopy(digit_model)
    torch.manual_seed(config.seed)
    model.head = torch.nn.Linear(model.head.in_features, 2)
    model.num_classes = 2
    return _train(SEVEN_SPEC.detector_name, model, data, config)


def _install(
    spec: DetectorSpec,
    model: SmallCnn,
    stats: dict[str, Any],
    splits: DatasetSplits,
    binary_digit: int | None,
    model_root: Path,
    ood_inputs: torch.Tensor,
) -> BuiltBundle:
    lineage = {
        "dataset": MNIST_5K_NAME,
        "seed": DEMO_SEED,
        "code": CODE_REF,
        "architecture": f"SmallCnn(widths={list(DEMO_WIDTHS)}, features=stage_stats)",
        "task": "digit 0-9" if binary_digit is None else f"digit == {binary_digit}",
        # CPU kernels reduce in a thread-count-dependent order: the same seed on another core
        # count gives slightly different weights (and so a different version id).
        "torch_threads": torch.get_num_threads(),
    }
    if binary_digit is not None:
        lineage["initialised_from"] = f"{DIGIT_SPEC.detector_name} weights (same seed and data)"
    data = _tensor_splits(splits, binary_digit)
    built = build_classifier_bundle(model, spec, DEMO_PIPELINE, data, model_root, lineage, stats, ood_inputs)
    m = built.metadata.metrics
    log.info(
        "%s: installed %s: test accuracy %.4f, ECE %.4f -> %.4f (T=%.3f), test in-domain>=0.9 %.3f, "
        "photo tiles in-domain<0.5 %.3f",
        spec.detector_name,
        built.metadata.version,
        m["test_accuracy"],
        m["test_ece_before_temperature"],
        m["test_ece_after_temperature"],
        built.metadata.temperature,
        m["oodd_test_frac_in_domain_ge_0_9"],
        m["oodd_photo_tiles_frac_in_domain_lt_0_5"],
    )
    return built


def _has_current(model_root: Path, detector_id: str) -> bool:
    return current_bundle_dir(model_root, detector_id) is not None


def build_demo_bundles(model_root: Path, force: bool = False, threads: int | None = None) -> list[str]:
    """Build and install both MNIST demo detectors; returns the demo detector ids now installed.

    A detector that already has a `current` version is left alone unless `force`. The digit
    network is trained whenever either detector is built, because the binary one starts from it.
    `threads` (default: all cores) matters on a shared machine, where two spinning OpenMP
    threads can be several times slower than one.
    """
    build_digit = force or not _has_current(model_root, DEMO_DIGIT_ID)
    build_seven = force or not _has_current(model_root, DEMO_SEVEN_ID)
    for spec, build in ((DIGIT_SPEC, build_digit), (SEVEN_SPEC, build_seven)):
        if not build:
            log.info(
                "%s: %s already installed, skipping (use --force to rebuild)",
                spec.detector_name,
                spec.detector_id,
            )
    if build_digit or build_seven:
        splits = mnist_5k_splits()
        ood = images_to_uint8_tensor(photo_tiles(200, seed=DEMO_SEED), DEMO_PIPELINE)
        digit_model, digit_stats = train_digit_model(splits, threads)
        if build_digit:
            _install(DIGIT_SPEC, digit_model, digit_stats, splits, None, model_root, ood)
        if build_seven:
            seven_model, seven_stats = train_seven_model(splits, digit_model, threads)
            _install(SEVEN_SPEC, seven_model, seven_stats, splits, SEVEN_DIGIT, model_root, ood)
    return [s.detector_id for s in (DIGIT_SPEC, SEVEN_SPEC) if _has_current(model_root, s.detector_id)]


@torch.no_grad()
def _recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 32) -> None:
    """Set BN running statistics from real images so random-weight activations stay well scaled."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    for start in range(0, x.shape[0], batch_size):
        model(x[start : start + batch_size])
    model.eval()


def build_camera_bundle(
    model_root: Path, detector_id: str = DEMO_CAMERA_ID, n_images: int = 192, seed: int = DEMO_SEED
) -> Path:
    """Install a random-weight MobileNetLike bundle (224x224 RGB, BINARY) for throughput benchmarks.

    Its answers mean nothing; what matters is a realistic graph size and a valid OODD. BN stats
    and the OODD are fitted on photo tiles (pseudo-labelled by source photo) so outputs are finite
    and the OODD's distances are on a sensible scale.
    """
    if not is_detector_id(detector_id):
        raise ValueError(f"{detector_id!r} is not a valid detector id")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = MobileNetLike(in_channels=3, num_classes=2, input_size=224)
    x = images_to_tensor(photo_tiles(n_images, seed=seed, min_side=96, max_side=400), CAMERA_PIPELINE)
    pseudo_labels = np.arange(n_images) % 2  # photo_tiles alternates between the two photos
    _recalibrate_batchnorm(model, x)
    _, features = predict(model, x, batch_size=32)
    fit_part = np.arange(n_images) % 3 != 0
    oodd = fit_oodd(features[fit_part], pseudo_labels[fit_part], features[~fit_part], num_classes=2)
    primary = export_primary(model, CAMERA_PIPELINE, x[:4])
    oodd_bytes = export_oodd(oodd.to_module(), oodd.calibration(), torch.from_numpy(features[:32]))
    spec = DetectorSpec(
        detector_id=detector_id,
        detector_name="demo-camera-benchmark",
        query="Benchmark only: random weights, answers are meaningless",
        mode=DetectorMode.BINARY,
        labels=("NO", "YES"),
    )
    key = behaviour_key(CAMERA_PIPELINE, spec, 1.0, oodd.calibration())
    metadata = PredictorMetadata(
        detector_id=spec.detector_id,
        version=version_id(primary, oodd_bytes, key),
        detector_name=spec.detector_name,
        query=spec.query,
        mode=spec.mode,
        labels=list(spec.labels),
        temperature=1.0,
        oodd=oodd.calibration(),
        metrics={
            "parameters": count_parameters(model),
            "random_weights": True,
            "oodd_fit_images": int(fit_part.sum()),
            "build_seconds": round(time.perf_counter() - t0, 2),
        },
        lineage={"dataset": "sklearn sample images (tiles)", "seed": seed, "code": CODE_REF},
        created_at=utc_now_iso(),
    )
    path = install_artifacts(model_root, primary, oodd_bytes, CAMERA_PIPELINE, metadata)
    log.info("camera benchmark bundle %s installed at %s", metadata.version, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model-root", type=Path, required=True, help="directory holding <detector_id>/ dirs"
    )
    parser.add_argument("--force", action="store_true", help="rebuild detectors that are already installed")
    parser.add_argument(
        "--camera", action="store_true", help="also build the 224x224 camera benchmark bundle"
    )
    parser.add_argument("--camera-id", default=DEMO_CAMERA_ID, help="detector id for the camera bundle")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    ids = build_demo_bundles(args.model_root, force=args.force, threads=args.threads)
    if args.camera:
        if args.force or not _has_current(args.model_root, args.camera_id):
            build_camera_bundle(args.model_root, args.camera_id)
        else:
            log.info("camera bundle %s already installed, skipping", args.camera_id)
        ids.append(args.camera_id)
    log.info("done in %.1fs: %s", time.perf_counter() - t0, ", ".join(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
