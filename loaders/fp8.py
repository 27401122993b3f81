"""fp8 single files (ComfyUI ``*_fp8_e4m3fn``, Kijai ``*_fp8_e4m3fn_scaled``) kept as fp8 in memory.

Their Linear weights are float8_e4m3fn tensors, plain (scale 1) or with one fp32 ``X.scale_weight``
per tensor. That is exactly an optimum-quanto fp8 weight-only layer with a per-row scale, so instead
of upcasting (14B: ~28 GB in bf16) each such Linear becomes a ``QuantoLinear`` fp8 slot holding the
file's bytes and ``row_scale`` of its scale (14B: ~16 GB). The forward is unchanged math:
``W = data · scale`` in fp32, cast to the compute dtype, then ``F.linear``, which is what the upcast
path computes, so outputs are equal.

``Fp8AsQuanto`` is a view of a ``WeightFile`` in which those weights appear under the quanto names
(``X.weight._data`` / ``X.weight._scale``), so the streaming loader needs no special case.
"""
from __future__ import annotations

import torch
from torch import nn

from . import keymaps as km
from .files import WeightFile
from ..models.quant_ops import QuantoLinear
from .quanto import row_scale

FP8_KEPT = torch.float8_e4m3fn         # the one fp8 format quanto slots hold (e5m2 files are upcast)
FP8_QTYPE = "qfloat8_e4m3fn"


def fp8_linear_modules(src: WeightFile, model: nn.Module) -> list[str]:
    """Linear modules of ``model`` whose ``.weight`` is stored in ``src`` as a 2-D float8_e4m3fn tensor."""
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


class Fp8AsQuanto:
    """``src`` with each fp8 Linear weight of ``modules`` renamed to quanto's ``_data`` / ``_scale`` keys.

    Same reading interface as ``WeightFile`` (keys, in, get, shape, dtype, file_of, release, path).
    """

    def __init__(self, src: WeightFile, modules: list[str]):
        self.src, self.path, self.metadata = src, src.path, src.metadata
        self._renamed: dict[str, tuple[str, str]] = {}      # new key -> (module, 'data' | 'scale')
        for m in modules:
            self._renamed[m + km.QUANTO_DATA] = (m, "data")
            self._renamed[m + ".weight._scale"] = (m, "scale")
        self._hidden = {m + suffix for m in modules for suffix in (".weight", km.SCALED_FP8_SUFFIX)}

    def keys(self) -> list[str]:
        return [k for k in self.src.keys() if k not in self._hidden] + list(self._renamed)

    def __contains__(self, key: str) -> bool:
        return key in self._renamed or (key not in self._hidden and key in self.src)

    def get(self, key: str) -> torch.Tensor:
        if key not in self._renamed:
            return self.src.get(key)
        module, role = self._renamed[key]
        weight = self.src.get(module + ".weight")
        if role == "data":
            return weight
        scale_key = module + km.SCALED_FP8_SUFFIX
        scale = self.src.get(scale_key) if scale_key in self.src else None
        return row_scale(weight.shape[0], scale, f"{self.src.file_of(module + '.weight')}: {scale_key}")

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._renamed:
            return self.src.shape(key)
        module, role = self._renamed[key]
        rows, cols = self.src.shape(module + ".weight")
        return (rows, cols) if role == "data" else (rows, 1)

    def dtype(self, key: str) -> torch.dtype:
        if key not in self._renamed:
            return self.src.dtype(key)
        return FP8_KEPT if self._renamed[key][1] == "data" else torch.float32

    def file_of(self, key: str):
        return self.src.file_of(self._renamed[key][0] + ".weight" if key in self._renamed else key)

    def release(self, path) -> None:
        self.src.release(path)

    def __repr__(self) -> str:
        return f"Fp8AsQuanto({self.src!r}, {len(self._renamed) // 2} fp8 Linear layers)"
