"""Backbone embeddings of encoded images, computed exactly as the edge computes them.

Images are decoded and preprocessed by `common.runtime.Preprocessor` and run through the exported
`backbone.onnx` in ONNX Runtime, so a head trained on these embeddings sees on the edge the very
numbers it was fitted on. Each image is embedded once per backbone: the cloud keeps the vectors
(float16) and exports hand them back, so a retrain only embeds images it has not seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.imaging import ImageError, ImageLimits
from common.runtime import BackboneRuntime, Preprocessor, choose_providers
from training.backbones import BuiltBackbone

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class Embedded:
    """Rows in the order asked for; `failed` lists the positions whose image did not decode."""

    vectors: NDArray[np.float32]
    failed: dict[int, str]


class Embedder:
    def __init__(
        self,
        backbone: BuiltBackbone,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        device: str = "cpu",
    ) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        providers = choose_providers("auto" if device != "cpu" else "cpu")
        self.runtime = BackboneRuntime(
            backbone.path, backbone.ref, providers, intra_op_threads=threads or (os.cpu_count() or 1)
        )
        self.preprocessor = Preprocessor(backbone.pipeline)
        self.limits = ImageLimits()

    @property
    def dim(self) -> int:
        return self.backbone.ref.embedding_dim

    def tensors(self, images: Sequence[bytes]) -> tuple[list[NDArray[np.float32]], list[int], dict[int, str]]:
        tensors: list[NDArray[np.float32]] = []
        ok: list[int] = []
        failed: dict[int, str] = {}
        for i, data in enumerate(images):
            try:
                tensors.append(self.preprocessor.tensor(data, self.limits))
                ok.append(i)
            except ImageError as exc:
                failed[i] = str(exc)
        return tensors, ok, failed

    def embeddings(
        self, images: Sequence[bytes], progress: Callable[[int, int], None] | None = None
    ) -> Embedded:
        """Pooled embeddings (N, D), float32; undecodable images get a zero row and a `failed` entry."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        failed: dict[int, str] = {}
        name = self.backbone.ref.embedding_output
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            tensors, ok, bad = self.tensors(chunk)
            failed.update({start + i: why for i, why in bad.items()})
            if tensors:
                rows = self.runtime.run(np.concatenate(tensors), [name])[name]
                out[[start + i for i in ok]] = rows
            if progress is not None:
                progress(min(start + self.batch_size, len(images)), len(images))
        return Embedded(out, failed)

    def feature_maps(self, images: Sequence[bytes]) -> Embedded:
        """The backbone's feature map (N, C, H, W), for heads that fine-tune the last blocks."""
        ref = self.backbone.ref
        if not ref.feature_map_output or not ref.feature_map_shape:
            raise ValueError(f"backbone {ref.id} has no feature map output")
        out = np.zeros((len(images), *ref.feature_map_shape), dtype=np.float32)
        failed: dict[int, str] = {}
        for start in range(0, len(images), self.batch_size):
            tensors, ok, bad = self.tensors(images[start : start + self.batch_size])
            failed.update({start + i: why for i, why in bad.items()})
            if tensors:
                rows = self.runtime.run(np.concatenate(tensors), [ref.feature_map_output])[
                    ref.feature_map_output
                ]
                out[[start + i for i in ok]] = rows
        return Embedded(out, failed)

    def close(self) -> None:
        self.runtime.close()
