"""Training-side twin of `ModelRuntime.image_to_tensor`.

A model only serves well if it was trained on tensors built exactly as the runtime builds them:
same channel mode, same resize filter, scale to [0, 1], then (x - mean) / std in float32.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

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
