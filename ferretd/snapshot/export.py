"""Export a torch module to ONNX bytes with a ``logits`` and a ``probabilities`` output.

Uses torch's TorchScript-based exporter (``dynamo=False``): on this box it exports the MLP in
~0.2 s against ~3 s for the torch.export path, and the snapshot thread competes with training
for two cores. If a torch release drops it, the torch.export path is the fallback. The batch
axis is dynamic so clients can send one sample or many.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from torch import nn

INPUT_NAME = "x"
OUTPUT_NAMES = ("logits", "probabilities")


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(model: nn.Module, input_shape: Sequence[int], opset: int = 17) -> bytes:
    """ONNX bytes of ``model`` (in eval mode) for float32 input ``(batch, *input_shape)``."""
    wrapped = _WithProbabilities(model).eval()
    example = torch.zeros(1, *input_shape, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapped,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
                opset_version=opset,
            )
        except (TypeError, RuntimeError, NotImplementedError):  # legacy exporter unavailable
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapped,
                (example,),
                buffer,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=max(opset, 18),
            )
    return buffer.getvalue()
