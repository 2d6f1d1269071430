"""ONNX export with a parity check: a bundle is only written if ONNX Runtime agrees with torch.

The legacy TorchScript exporter (`dynamo=False`) is used on purpose: it writes one self-contained
file quickly and needs no onnxscript. Its warnings (deprecation, constant-folding notes) are silenced for the export call only.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from common.bundle import OoddCalibration, PipelineConfig
from common.confidence import softmax
from training.oodd import OoddModule

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportMismatchError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's beyond tolerance; the export must not ship."""


def _export(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]) -> bytes:
    dynamic = {name: {0: "batch"} for name in (input_name, *output_names)}
    module.eval()
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            (example,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
        data = path.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def _session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _max_abs_diff(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def export_primary(
    model: nn.Module,
    pipeline: PipelineConfig,
    check_batch: torch.Tensor,
    tolerance: float = PARITY_TOLERANCE,
) -> bytes:
    """Export `model` (x → logits, features) and check softmax parity on `check_batch`.

    The check runs a batch of a different size than the export example, which also proves the
    batch axis is really dynamic.
    """
    model.eval()
    example = check_batch[:1]
    data = _export(model, example, pipeline.input_name, [pipeline.logits_output, pipeline.features_output])
    with torch.no_grad():
        logits_t, features_t = model(check_batch)
    logits_o, features_o = _session(data).run(
        [pipeline.logits_output, pipeline.features_output], {pipeline.input_name: check_batch.numpy()}
    )
    if logits_o.shape != tuple(logits_t.shape) or features_o.shape != tuple(features_t.shape):
        raise ExportMismatchError(f"ONNX shapes {logits_o.shape}/{features_o.shape} differ from torch")
    diff = _max_abs_diff(softmax(logits_o), softmax(logits_t.numpy()))
    if not diff <= tolerance:
        raise ExportMismatchError(f"ONNX and torch probabilities differ by {diff:.3g} > {tolerance}")
    return data


def export_oodd(
    module: OoddModule,
    calibration: OoddCalibration,
    check_features: torch.Tensor,
    tolerance: float = PARITY_TOLERANCE,
) -> bytes:
    """Export the OODD (features → in_domain, shape (N,)) and check parity on `check_features`."""
    module.eval()
    data = _export(module, check_features[:1], calibration.input_name, [calibration.output_name])
    with torch.no_grad():
        expected = module(check_features).numpy()
    (got,) = _session(data).run([calibration.output_name], {calibration.input_name: check_features.numpy()})
    if got.shape != expected.shape:
        raise ExportMismatchError(f"ONNX in_domain shape {got.shape} differs from torch {expected.shape}")
    diff = _max_abs_diff(got, expected)
    if not diff <= tolerance:
        raise ExportMismatchError(f"ONNX and torch in_domain differ by {diff:.3g} > {tolerance}")
    return data
