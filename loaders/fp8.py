"""fp8 single files (ComfyUI ``*_fp8_e4m3fn``, Kijai ``*_fp8_e4m3fn_scaled``) kept as fp8 in memory.

Their Linear weights are float8_e4m3fn tensors, plain (scale 1) or with one fp32 ``X.scale_weight``
per tensor. That is exactly an optimum-quanto fp8 weight-only layer with a per-row scale, so instead
of upcasting (14B: ~28 GB in bf16) each such Linear becomes a ``QuantoLinear`` fp8 slot holding the
file's bytes and ``row_scale`` of its scale (14B: ~16 GB). The forward is unchanged math:
``W = data · scale`` in fp32, cast to the compute dtype, then ``F.linear``, which is what the upcast
path computes, so outputs are equal.

Here: which Linear layers of a model a file stores as fp8 (they become fp8 slots before loading).
The loading core (``load_core``) fills a slot from the file's fp8 ``X.weight`` and its
``X.scale_weight`` (or 1) exactly as from a quanto file's ``X.weight._data`` / ``X.weight._scale``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.quant_ops import QuantoLinear

FP8_KEPT = torch.float8_e4m3fn         # the one fp8 format quanto slots hold (e5m2 files are upcast)
FP8_QTYPE = "qfloat8_e4m3fn"


def fp8_linear_modules(src, model: nn.Module) -> list[str]:
    """Linear modules of ``model`` whose ``.weight`` is stored in ``src`` (a ``WeightFile``, or the
    ``load_core.KeyedFiles`` view under the model's names) as a 2-D float8_e4m3fn tensor."""
    found = []
    for name, module in model.named_modules():
        key = name + ".weight"
        if isinstance(module, (nn.Linear, QuantoLinear)):
            if key in src and src.dtype(key) == FP8_KEPT and len(src.shape(key)) == 2:
                found.append(name)
    return found


def fp8_quant_map(modules: list[str]) -> dict:
    """The quanto-style map (``prepare_quantized``) for fp8 modules."""
    return {m: {"weights": FP8_QTYPE, "activations": "none"} for m in modules}
