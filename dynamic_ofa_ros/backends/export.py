"""ONNX export of one level: the extracted sub-network with its calibrated BN, plus softmax.

The graph has one input ``input`` (1, 3, r, r) float32 -- the normalised image, as
:func:`~dynamic_ofa_ros.preprocess.to_input_tensor` makes it -- and one output ``probs``
(1, n_classes) float32. Shapes are static, so the runtimes can plan every buffer at compile
time. The exporter folds each BatchNorm (eval mode: the table's statistics) into the
convolution before it, so the file computes the module's function with fewer operators.

TorchScript-based ``torch.onnx.export(..., dynamo=False)``: it needs the ``onnx`` package
but not ``onnxscript``, and exports these modules in about a second per level.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from dynamic_ofa_ros.backends.onnx_spec import EXPORT_FORMAT, INPUT_NAME, OPSET, OUTPUT_NAME, exporter_version

__all__ = ["EXPORT_FORMAT", "INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx", "exporter_version"]


class _WithSoftmax(nn.Module):
    """``softmax(module(x))`` over the classes: the engine's output is probabilities."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x), dim=1)


def export_onnx(module: nn.Module, resolution: int) -> bytes:
    """The ONNX bytes of ``module`` (eval mode, on the CPU) + softmax for a (1, 3, r, r) input."""
    wrapped = _WithSoftmax(module).to("cpu").eval()
    example = torch.zeros(1, 3, int(resolution), int(resolution))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                wrapped,
                (example,),
                buffer,  # type: ignore[arg-type]  # torch accepts a binary file object
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
    return buffer.getvalue()
