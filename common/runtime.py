"""Model runtime: one verified bundle in ONNX Runtime, from image bytes to a calibrated answer.

The same code answers on the edge, in the cloud and in training's export check, so a bundle means
the same thing everywhere. Sessions are thread-safe and release the GIL; callers run `predict`
in a worker thread, never on an event loop.

A split bundle's backbone is a `BackboneRuntime` held by a `BackbonePool`: every head trained on the
same backbone (same sha256) shares one session, loaded with the first such head and closed with the
last. `run_tensor` runs backbone then head; `run_backbone` + `run_head` let a caller that already has
an image's backbone outputs (the edge's embedding cache) run only the head.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from PIL import Image

from common.backbone import BACKBONES_DIR, BackboneError, BackboneRef, BackboneStore
from common.bundle import (
    HEAD_FILE,
    OODD_FILE,
    PRIMARY_FILE,
    BundleError,
    PipelineConfig,
    PredictorMetadata,
    bundle_bytes,
    check_backbone,
    read_metadata,
    read_pipeline,
    verify_bundle,
)
from common.confidence import final_confidence, is_out_of_domain, softmax
from common.imaging import ImageInfo, ImageLimits, decode_image

ProviderPreference = Literal["auto", "cpu", "cuda"]
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def choose_providers(preference: ProviderPreference = "auto") -> list[str]:
    """CUDA first when this onnxruntime build has it (and it is not ruled out), CPU always last."""
    available = ort.get_available_providers()
    if preference != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preference == "cuda":
        raise RuntimeError("CUDA was requested but this onnxruntime build has no CUDAExecutionProvider")
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Box:
    """One detected object: normalised (left, top, right, bottom) and its calibrated score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float


@dataclass(frozen=True)
class HeadOutput:
    """A batch through a head: probabilities after temperature and in-domain scores; a detection
    head adds its boxes (N, K, 4) and scores (N, K), best first."""

    probs: NDArray[np.float64]
    in_domain: NDArray[np.float64]
    boxes: NDArray[np.float32] | None = None
    scores: NDArray[np.float32] | None = None


@dataclass(frozen=True)
class Prediction:
    detector_id: str
    model_version: str
    mode: str
    labels: list[str]
    probabilities: list[float]
    label_index: int
    label: str
    raw_confidence: float
    in_domain: float
    confidence: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Detection heads only: the boxes of the answer (as many as the count, or every box that passed
    # the score threshold when there are more than max_count) and whether there are more than max_count.
    boxes: tuple[Box, ...] | None = None
    greater_than_max: bool | None = None
    class_name: str | None = None

    @property
    def out_of_domain(self) -> bool:
        return is_out_of_domain(self.in_domain)


def answer_boxes_for(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], count: int, max_count: int, threshold: float
) -> tuple[tuple[Box, ...], bool]:
    """The boxes that go with a count: the `count` best, so the answer's boxes and count agree. When
    more than max_count boxes pass the score threshold the answer is "more than max_count": every
    box that passed is returned and greater_than_max is set."""
    order = np.argsort(-scores, kind="stable")
    passed = int((scores >= threshold).sum())
    more = count >= max_count and passed > max_count
    keep = order[: passed if more else count]
    picked = tuple(
        Box(
            left=float(np.clip(boxes[i, 0], 0, 1)),
            top=float(np.clip(boxes[i, 1], 0, 1)),
            right=float(np.clip(boxes[i, 2], 0, 1)),
            bottom=float(np.clip(boxes[i, 3], 0, 1)),
            score=float(np.clip(scores[i], 0, 1)),
        )
        for i in keep
    )
    return picked, more


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers burn the cores that nginx and the API processes share with us.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class Preprocessor:
    """Image bytes → the input tensor a pipeline_config.yaml describes; shared by serving and training."""

    def __init__(self, pipeline: PipelineConfig) -> None:
        self.pipeline = pipeline
        self.size = (pipeline.input_width, pipeline.input_height)
        channels = len(pipeline.channels)
        self._mean = np.asarray(pipeline.mean, dtype=np.float32).reshape(channels, 1, 1)
        self._inv_std = (1.0 / np.asarray(pipeline.std, dtype=np.float32)).reshape(channels, 1, 1)
        self._resample = _RESAMPLE[pipeline.resize]

    def image_to_tensor(self, img: Image.Image) -> NDArray[np.float32]:
        """Resize, scale to [0, 1], normalise and lay out as (1, C, H, W)."""
        if img.mode != self.pipeline.channels:
            img = img.convert(self.pipeline.channels)
        if img.size != self.size:
            img = img.resize(self.size, self._resample)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out: NDArray[np.float32] = ((arr * (1.0 / 255.0) - self._mean) * self._inv_std)[None]
        return out

    def decode(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> Image.Image:
        return decode_image(data, limits, mode=self.pipeline.channels, draft_size=self.size, info=info)

    def tensor(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> NDArray[np.float32]:
        return self.image_to_tensor(self.decode(data, limits, info))


BackboneOutputs = dict[str, NDArray[np.float32]]


class BackboneRuntime:
    """One backbone.onnx session; shared by every head that names its sha256."""

    def __init__(
        self, path: Path, ref: BackboneRef, providers: list[str] | None = None, intra_op_threads: int = 1
    ) -> None:
        self.ref = ref
        self.sha256 = ref.sha256
        self.path = path
        self.nbytes = path.stat().st_size
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), _session_options(intra_op_threads), providers=providers or choose_providers()
            )
        except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
            raise BackboneError(f"backbone {ref.sha256[:12]} does not load: {type(exc).__name__}") from None
        self.provider: str = self._session.get_providers()[0]
        outputs = {o.name for o in self._session.get_outputs()}
        wanted = {ref.embedding_output} | ({ref.feature_map_output} if ref.feature_map_output else set())
        if not wanted <= outputs:
            raise BackboneError(f"backbone {ref.sha256[:12]} lacks outputs {sorted(wanted - outputs)}")
        self.runs = 0  # forward passes, for the edge's "backbone once per image" counter

    def run(self, batch: NDArray[np.float32], outputs: list[str]) -> BackboneOutputs:
        if self._session is None:
            raise BackboneError(f"backbone {self.sha256[:12]} is closed")
        values = self._session.run(outputs, {self.ref.input_name: batch})
        self.runs += 1
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)}

    def close(self) -> None:
        self._session = None


class BackbonePool:
    """Loaded backbones by sha256, reference-counted by the heads that use them (thread-safe)."""

    def __init__(self, providers: list[str] | None = None, intra_op_threads: int = 1) -> None:
        self._providers = providers
        self._threads = intra_op_threads
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[BackboneRuntime, int]] = {}

    def acquire(self, store: BackboneStore, ref: BackboneRef) -> BackboneRuntime:
        with self._lock:
            hit = self._loaded.get(ref.sha256)
            if hit is not None:
                self._loaded[ref.sha256] = (hit[0], hit[1] + 1)
                return hit[0]
            runtime = BackboneRuntime(store.verify(ref.sha256), ref, self._providers, self._threads)
            self._loaded[ref.sha256] = (runtime, 1)
            return runtime

    def release(self, runtime: BackboneRuntime) -> None:
        with self._lock:
            hit = self._loaded.get(runtime.sha256)
            if hit is None or hit[0] is not runtime:
                return
            if hit[1] <= 1:
                del self._loaded[runtime.sha256]
                runtime.close()
            else:
                self._loaded[runtime.sha256] = (runtime, hit[1] - 1)

    def loaded(self) -> dict[str, int]:
        """sha256 -> number of heads holding it."""
        with self._lock:
            return {sha: refs for sha, (_, refs) in self._loaded.items()}

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(rt.nbytes for rt, _ in self._loaded.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._loaded)


# A process that does not pass its own pool still shares backbones between its runtimes.
_DEFAULT_POOL = BackbonePool()


def default_backbone_store(bundle_dir: Path) -> BackboneStore:
    """Where an installed bundle's backbone lives: <model_root>/backbones beside <model_root>/<det>/<ver>."""
    return BackboneStore(bundle_dir.resolve().parent.parent / BACKBONES_DIR)


class ModelRuntime:
    """Primary (or backbone + head) and OODD of one bundle version, swapped and evicted together.

    For a split bundle the backbone comes from `backbones` (a pool shared by the caller's runtimes)
    out of `backbone_store` (default: the model root the bundle is installed in).
    """

    def __init__(
        self,
        bundle_dir: Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        verify: bool = True,
        backbone_store: BackboneStore | None = None,
        backbones: BackbonePool | None = None,
    ) -> None:
        manifest = verify_bundle(bundle_dir) if verify else None
        self.bundle_dir = bundle_dir
        self.pipeline: PipelineConfig = read_pipeline(bundle_dir)
        self.metadata: PredictorMetadata = read_metadata(bundle_dir)
        self.nbytes = bundle_bytes(bundle_dir)
        opts = _session_options(intra_op_threads)
        chosen = providers or choose_providers()
        ref = self.metadata.backbone
        self.backbone: BackboneRuntime | None = None
        self._pool = backbones if backbones is not None else _DEFAULT_POOL
        if ref is not None:
            store = backbone_store or default_backbone_store(bundle_dir)
            if manifest is not None:
                check_backbone(bundle_dir, manifest, store)
            try:
                self.backbone = self._pool.acquire(store, ref)
            except BackboneError as exc:
                raise BundleError(f"{bundle_dir}: {exc}") from None
            graph = HEAD_FILE
            self._head_input: str = self.metadata.head_input
            self._backbone_outputs = [
                ref.embedding_output if self._head_input == "embedding" else str(ref.feature_map_output)
            ]
        else:
            graph = PRIMARY_FILE
            self._head_input = self.pipeline.input_name
            self._backbone_outputs = []
        self._primary: ort.InferenceSession | None = None
        self._oodd: ort.InferenceSession | None = None
        try:
            primary = ort.InferenceSession(str(bundle_dir / graph), opts, providers=chosen)
            self._oodd = ort.InferenceSession(str(bundle_dir / OODD_FILE), opts, providers=chosen)
        except BaseException:
            self.close()
            raise
        self._primary = primary
        self.provider: str = primary.get_providers()[0]
        self.preprocessor = Preprocessor(self.pipeline)
        self._size = self.preprocessor.size

    @property
    def detector_id(self) -> str:
        return self.metadata.detector_id

    @property
    def version(self) -> str:
        return self.metadata.version

    def image_to_tensor(self, img: Image.Image) -> NDArray[np.float32]:
        return self.preprocessor.image_to_tensor(img)

    def decode(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> Image.Image:
        return self.preprocessor.decode(data, limits, info)

    @property
    def backbone_outputs(self) -> list[str]:
        """The backbone outputs this head reads (empty for a single-file bundle)."""
        return list(self._backbone_outputs)

    def run_backbone(self, batch: NDArray[np.float32]) -> BackboneOutputs:
        """Split bundles: the backbone's outputs that this head needs (for an embedding cache)."""
        if self.backbone is None:
            raise BundleError(f"{self.bundle_dir}: a single-file bundle has no backbone")
        return self.backbone.run(batch, self._backbone_outputs)

    @property
    def detects(self) -> bool:
        """A detection head: answers carry boxes."""
        return self.metadata.detection is not None

    def run_head(self, outputs: BackboneOutputs) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Split bundles: probabilities and in-domain scores from the backbone's outputs."""
        out = self.run_head_full(outputs)
        return out.probs, out.in_domain

    def run_head_full(self, outputs: BackboneOutputs) -> HeadOutput:
        """Split bundles: everything the head answers (boxes too, for a detection head)."""
        return self._run_graph(outputs[self._backbone_outputs[0]])

    def run_tensor(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Batched forward pass: (probabilities after temperature, in-domain probabilities)."""
        out = self.run_tensor_full(batch)
        return out.probs, out.in_domain

    def run_tensor_full(self, batch: NDArray[np.float32]) -> HeadOutput:
        if self.backbone is not None:
            return self.run_head_full(self.run_backbone(batch))
        return self._run_graph(batch)

    def _run_graph(self, inputs: NDArray[np.float32]) -> HeadOutput:
        p = self.pipeline
        if self._primary is None or self._oodd is None:
            raise BundleError(f"{self.bundle_dir}: the runtime is closed")
        det = self.metadata.detection
        names = [p.logits_output, p.features_output]
        if det is not None:
            names += [det.boxes_output, det.scores_output]
        values = self._primary.run(names, {self._head_input: inputs})
        logits, features = values[0], values[1]
        cal = self.metadata.oodd
        (q,) = self._oodd.run([cal.output_name], {cal.input_name: features})
        probs = softmax(logits, self.metadata.temperature)
        in_domain = np.asarray(q, dtype=np.float64).reshape(-1)
        if det is None:
            return HeadOutput(probs, in_domain)
        return HeadOutput(
            probs, in_domain, np.asarray(values[2], dtype=np.float32), np.asarray(values[3], dtype=np.float32)
        )

    def prediction_from(
        self, probs: NDArray[np.float64], q: float, timings: dict[str, float] | None = None
    ) -> Prediction:
        """One row of run_head/run_tensor as a Prediction (a classifier's; see prediction_at)."""
        return self._prediction(probs, q, timings or {})

    def prediction_at(self, out: HeadOutput, row: int, timings: dict[str, float] | None = None) -> Prediction:
        """Row `row` of a head's output as a Prediction, boxes included for a detection head."""
        boxes = None if out.boxes is None else out.boxes[row]
        scores = None if out.scores is None else out.scores[row]
        return self._prediction(out.probs[row], float(out.in_domain[row]), timings or {}, boxes, scores)

    def predict(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> Prediction:
        t0 = time.perf_counter()
        tensor = self.image_to_tensor(self.decode(data, limits, info))
        t1 = time.perf_counter()
        out = self.run_tensor_full(tensor)
        t2 = time.perf_counter()
        return self.prediction_at(out, 0, {"decode": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3})

    def predict_batch(
        self, items: list[tuple[bytes, ImageInfo | None]], limits: ImageLimits
    ) -> list[Prediction | Exception]:
        """One forward pass for several images; an image that fails to decode fails alone."""
        t0 = time.perf_counter()
        tensors: list[NDArray[np.float32]] = []
        slots: list[int | Exception] = []
        for data, info in items:
            try:
                tensors.append(self.image_to_tensor(self.decode(data, limits, info)))
                slots.append(len(tensors) - 1)
            except Exception as exc:  # per-image: a corrupt image must not fail its batch-mates
                slots.append(exc)
        t1 = time.perf_counter()
        if not tensors:
            return [s for s in slots if isinstance(s, Exception)]
        out = self.run_tensor_full(np.concatenate(tensors))
        t2 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1e3 / len(items), "model": (t2 - t1) * 1e3}
        return [s if isinstance(s, Exception) else self.prediction_at(out, s, timings) for s in slots]

    def _prediction(
        self,
        probs: NDArray[np.float64],
        q: float,
        timings: dict[str, float],
        boxes: NDArray[np.float32] | None = None,
        scores: NDArray[np.float32] | None = None,
    ) -> Prediction:
        meta = self.metadata
        idx = int(np.argmax(probs))
        top = float(probs[idx])
        answer_boxes: tuple[Box, ...] | None = None
        greater_than_max: bool | None = None
        if meta.detection is not None and boxes is not None and scores is not None:
            answer_boxes, greater_than_max = answer_boxes_for(
                boxes, scores, idx, meta.num_classes - 1, meta.detection.score_threshold
            )
        return Prediction(
            detector_id=meta.detector_id,
            model_version=meta.version,
            mode=meta.mode.value,
            labels=list(meta.labels),
            probabilities=[float(x) for x in probs],
            label_index=idx,
            label=meta.labels[idx],
            raw_confidence=top,
            in_domain=q,
            confidence=final_confidence(top, q, meta.num_classes),
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            boxes=answer_boxes,
            greater_than_max=greater_than_max,
            class_name=meta.detection.class_name if meta.detection is not None else None,
        )

    def warmup(self) -> None:
        """One dummy inference, so the first real request does not pay for kernel setup."""
        zeros = np.zeros((1, len(self.pipeline.channels), self._size[1], self._size[0]), dtype=np.float32)
        out = self.run_tensor_full(zeros)
        probs, q = out.probs, out.in_domain
        det = self.metadata.detection
        if det is not None and (
            out.boxes is None
            or out.scores is None
            or out.boxes.shape != (1, det.max_boxes, 4)
            or out.scores.shape != (1, det.max_boxes)
        ):
            raise BundleError(
                f"{self.bundle_dir}: the detection head's boxes do not have {det.max_boxes} rows"
            )
        if probs.shape != (1, self.metadata.num_classes) or q.shape != (1,):
            raise BundleError(
                f"{self.bundle_dir}: model outputs {probs.shape[1:]} classes and {q.shape} in-domain scores, "
                f"metadata lists {self.metadata.num_classes} labels"
            )

    def close(self) -> None:
        """Drop the sessions (and this head's hold on its backbone); idempotent.

        The cache calls this only once no request holds the model.
        """
        self._primary = None
        self._oodd = None
        backbone, self.backbone = getattr(self, "backbone", None), None
        if backbone is not None:
            self._pool.release(backbone)

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "detector_id": meta.detector_id,
            "version": meta.version,
            "mode": meta.mode.value,
            "labels": meta.labels,
            "provider": self.provider,
            "bytes": self.nbytes,
            "backbone": meta.backbone.sha256 if meta.backbone is not None else None,
        }


def shared_backbone(runtime: ModelRuntime) -> tuple[str, int] | None:
    """What a loaded runtime shares with others, for a model cache's accounting
    (common.model_cache.SharedPart): its backbone's sha256 and bytes, if it has one."""
    backbone = runtime.backbone
    return (backbone.sha256, backbone.nbytes) if backbone is not None else None
