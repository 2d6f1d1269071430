"""Training-side twin of `ModelRuntime.image_to_tensor`.

A model only serves well if it was trained on tensors built exactly as the runtime builds them:
same channel mode, same resize filter, scale to [0, 1], then (x - mean) / std in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from pydantic import ValidationError

from common.bundle import PipelineConfig

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def normalize_uint8(images: NDArray[np.uint8], pipeline: PipelineConfig) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) already at the input size → float32 (N, C, H, W)."""
    if images.shape[1:3] != (pipeline.input_height, pipeline.input_width):
        raise ValueError(
            f"images are {images.shape[1:3]}, pipeline wants {pipeline.input_height}x{pipeline.input_width}"
        )
    arr = images.astype(np.float32)
    arr = arr[:, None, :, :] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    channels = len(pipeline.channels)
    if arr.shape[1] != channels:
        raise ValueError(f"images have {arr.shape[1]} channels, pipeline wants {channels}")
    mean = np.asarray(pipeline.mean, dtype=np.float32).reshape(1, channels, 1, 1)
    inv_std = (1.0 / np.asarray(pipeline.std, dtype=np.float32)).reshape(1, channels, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((arr * np.float32(1.0 / 255.0) - mean) * inv_std))


def image_to_uint8(img: Image.Image, pipeline: PipelineConfig) -> NDArray[np.uint8]:
    """Convert and resize one decoded image like the runtime does, stopping before normalisation."""
    if img.mode != pipeline.channels:
        img = img.convert(pipeline.channels)
    size = (pipeline.input_width, pipeline.input_height)
    if img.size != size:
        img = img.resize(size, _RESAMPLE[pipeline.resize])
    return np.asarray(img, dtype=np.uint8)


def images_to_tensor(images: list[Image.Image], pipeline: PipelineConfig) -> torch.Tensor:
    """A batch of decoded images → normalised float32 (N, C, H, W), runtime-identical."""
    return normalize_uint8(np.stack([image_to_uint8(img, pipeline) for img in images]), pipeline)


def to_nchw_uint8(images: NDArray[np.uint8]) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → uint8 tensor (N, C, H, W), the compact form training keeps."""
    arr = images[:, None, :, :] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))


def images_to_uint8_tensor(images: list[Image.Image], pipeline: PipelineConfig) -> torch.Tensor:
    """A batch of decoded images → uint8 (N, C, H, W) at the input size, ready for `Normalizer`."""
    return to_nchw_uint8(np.stack([image_to_uint8(img, pipeline) for img in images]))


@dataclass(frozen=True)
class Normalizer:
    """Per-batch twin of `normalize_uint8`: uint8 (N, C, H, W) → float32, on whatever device.

    Training keeps images as uint8 (a quarter of the memory) and normalises each batch; the
    arithmetic (scale by 1/255 in float32, subtract the mean, multiply by 1/std) is the runtime's,
    in the same order, so evaluation sees the tensors the edge will compute.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_pipeline(cls, pipeline: PipelineConfig) -> Normalizer:
        return cls(tuple(pipeline.mean), tuple(pipeline.std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    @staticmethod
    def scale(x: torch.Tensor) -> torch.Tensor:
        """uint8 → float32 in [0, 1]."""
        return x.to(torch.float32) * (1.0 / 255.0)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """float32 in [0, 1] (N, C, H, W) → (x - mean) / std per channel."""
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x01.device).view(shape)
        inv_std = (1.0 / torch.tensor(self.std, dtype=torch.float32, device=x01.device)).view(shape)
        return (x01 - mean) * inv_std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.scale(x))


class UnsupportedInputError(ValueError):
    """The input pipeline is fine for training, but the bundle format cannot describe it yet."""


class InputPipeline(PipelineConfig):
    """`PipelineConfig` as training sees it, which also knows RGB+depth.

    "RGBA" is RGB plus a depth plane, carried as the alpha plane of a 4-channel PNG (so PIL
    decodes, converts and resizes it like any other image). Training, export and the parity
    checks handle it; whether a bundle can ship it is up to `common.bundle.PipelineConfig`,
    which `bundle_pipeline` asks.
    """

    @property
    def colour_channels(self) -> int:
        """Planes that hold light (brightness augmentation applies to them, never to depth)."""
        return 1 if self.channels == "L" else 3


def bundle_pipeline(pipeline: PipelineConfig) -> PipelineConfig:
    """The bundle format's own model of `pipeline`; UnsupportedInputError when it cannot express it."""
    try:
        return PipelineConfig.model_validate(pipeline.model_dump(mode="json"))
    except ValidationError as exc:
        raise UnsupportedInputError(
            f"the bundle format (common.bundle.PipelineConfig) does not accept this input pipeline "
            f"(channels={pipeline.channels!r}): {exc.errors()[0]['msg']}"
        ) from None
