"""Model runtime: one verified bundle in ONNX Runtime, from image bytes to a calibrated answer.

The same code answers on the edge, in the cloud and in training's export check, so a bundle means
the same thing everywhere. Sessions are thread-safe and release the GIL; callers run `predict`
in a worker thread, never on an event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from PIL import Image

from common.bundle import (
    OODD_FILE,
    PRIMARY_FILE,
    BundleError,
    PipelineConfig,
    PredictorMetadata,
    bundle_bytes,
    read_metadata,
    read_pipeline,
    verify_bundle,
)
from common.confidence import final_confidence, softmax
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

    @property
    def out_of_domain(self) -> bool:
        return self.in_domain < 0.5


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


class ModelRuntime:
    """Primary + OODD of one bundle version, loaded together so they are swapped and evicted together."""

    def __init__(
        self,
        bundle_dir: Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        verify: bool = True,
    ) -> None:
        if verify:
            verify_bundle(bundle_dir)
        self.bundle_dir = bundle_dir
        self.pipeline: PipelineConfig = read_pipeline(bundle_dir)
        self.metadata: PredictorMetadata = read_metadata(bundle_dir)
        self.nbytes = bundle_bytes(bundle_dir)
        opts = _session_options(intra_op_threads)
        chosen = providers or choose_providers()
        self._primary = ort.InferenceSession(str(bundle_dir / PRIMARY_FILE), opts, providers=chosen)
        self._oodd = ort.InferenceSession(str(bundle_dir / OODD_FILE), opts, providers=chosen)
        self.provider: str = self._primary.get_providers()[0]
        self._size = (self.pipeline.input_width, self.pipeline.input_height)
        channels = len(self.pipeline.channels)
        self._mean = np.asarray(self.pipeline.mean, dtype=np.float32).reshape(channels, 1, 1)
        self._inv_std = (1.0 / np.asarray(self.pipeline.std, dtype=np.float32)).reshape(channels, 1, 1)
        self._resample = _RESAMPLE[self.pipeline.resize]

    @property
    def detector_id(self) -> str:
        return self.metadata.detector_id

    @property
    def version(self) -> str:
        return self.metadata.version

    def image_to_tensor(self, img: Image.Image) -> NDArray[np.float32]:
        """Resize, scale to [0, 1], normalise and lay out as (1, C, H, W)."""
        if img.mode != self.pipeline.channels:
            img = img.convert(self.pipeline.channels)
        if img.size != self._size:
            img = img.resize(self._size, self._resample)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out: NDArray[np.float32] = ((arr * (1.0 / 255.0) - self._mean) * self._inv_std)[None]
        return out

    def decode(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> Image.Image:
        return decode_image(data, limits, mode=self.pipeline.channels, draft_size=self._size, info=info)

    def run_tensor(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Batched forward pass: (probabilities after temperature, in-domain probabilities)."""
        p = self.pipeline
        logits, features = self._primary.run([p.logits_output, p.features_output], {p.input_name: batch})
        cal = self.metadata.oodd
        (q,) = self._oodd.run([cal.output_name], {cal.input_name: features})
        probs = softmax(logits, self.metadata.temperature)
        return probs, np.asarray(q, dtype=np.float64).reshape(-1)

    def predict(self, data: bytes, limits: ImageLimits, info: ImageInfo | None = None) -> Prediction:
        t0 = time.perf_counter()
        tensor = self.image_to_tensor(self.decode(data, limits, info))
        t1 = time.perf_counter()
        probs, q = self.run_tensor(tensor)
        t2 = time.perf_counter()
        return self._prediction(probs[0], float(q[0]), {"decode": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3})

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
        probs, q = self.run_tensor(np.concatenate(tensors))
        t2 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1e3 / len(items), "model": (t2 - t1) * 1e3}
        return [
            s if isinstance(s, Exception) else self._prediction(probs[s], float(q[s]), timings) for s in slots
        ]

    def _prediction(self, probs: NDArray[np.float64], q: float, timings: dict[str, float]) -> Prediction:
        meta = self.metadata
        idx = int(np.argmax(probs))
        top = float(probs[idx])
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
        )

    def warmup(self) -> None:
        """One dummy inference, so the first real request does not pay for kernel setup."""
        zeros = np.zeros((1, len(self.pipeline.channels), self._size[1], self._size[0]), dtype=np.float32)
        probs, q = self.run_tensor(zeros)
        if probs.shape != (1, self.metadata.num_classes) or q.shape != (1,):
            raise BundleError(
                f"{self.bundle_dir}: model outputs {probs.shape[1:]} classes and {q.shape} in-domain scores, "
                f"metadata lists {self.metadata.num_classes} labels"
            )

    def close(self) -> None:
        """Drop the sessions; the cache calls this only once no request holds the model."""
        self._primary = None
        self._oodd = None

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "detector_id": meta.detector_id,
            "version": meta.version,
            "mode": meta.mode.value,
            "labels": meta.labels,
            "provider": self.provider,
            "bytes": self.nbytes,
        }
