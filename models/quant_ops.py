"""The optimum-quanto int8 / fp8 format as an ``operations`` namespace: layer, quantizer and W8A8 kernels.

Beside ``ops.py`` (plain torch layers): pass ``QuantoOps`` as a model's ``operations`` and each Linear
can become a weight-only quantized slot in the official layout. Loading (which modules, from which
file, the quantization map, fp8 single files seen as quanto) stays in ``loaders/quanto.py`` and
``loaders/fp8.py``; this module only knows tensors.

Layout: the official quantized models (``infinitetalk_*_{int8,fp8}``, MultiTalk ``dit_model_int8``,
``quant_model_*_FusionX``, T5 ``t5_{int8,fp8}``) store each quantized Linear ``X`` as ``X.weight._data``
(int8 or float8_e4m3fn, [out, in]), ``X.weight._scale`` (fp32, [out, 1], one scale per output row),
``X.bias`` and the unused activation scalars ``X.input_scale`` / ``X.output_scale``.

Numerics: the reference dequantizes W = data·scale (fp32) and runs ``F.linear`` in the input's dtype.
The opt-in GPU fast path (``INFINITETALK_FAST_QUANT_MATMUL=1``) quantizes the activations too, per
token (dynamic, symmetric: s_x = max|x_row| / qmax), so the product runs on the fp8 / int8 tensor cores
and the two row scales are applied to the fp32 accumulator:

    y[m, n] = (Σ_k xq[m, k]·wq[n, k]) · s_x[m] · s_w[n] + bias[n]

fp8 goes through ``torch._scaled_mm`` (row-wise scales, bf16 output), int8 through ``torch._int_mm``
(int32 accumulator; the scale epilogue is element-wise, so torch.compile fuses it). Where a fast
kernel can't take the shapes (or on the CPU) the same math is emulated in fp32, so the kernels are
also the reference of the fast path. No device moves.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# W8A8 on the GPU's 8-bit tensor cores: faster, but it also rounds the activations, so it is opt-in;
# the default keeps the official weight-only numerics.
FAST_MATMUL_ENV = "INFINITETALK_FAST_QUANT_MATMUL"

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127.0
QTYPES = {"qint8": torch.int8, "qfloat8_e4m3fn": FP8, "qfloat8": FP8}
QMAX = {torch.int8: INT8_MAX, FP8: FP8_MAX}

# optimum-quanto weight-only Linear: official state-dict suffixes -> our buffer names.
QUANTO_SUFFIXES = {
    "weight._data": "weight_data",
    "weight._scale": "weight_scale",
    "input_scale": "input_scale",
    "output_scale": "output_scale",
}


def quantize_rows(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row quantization of a float [out, in] weight (quanto's scheme) ->
    (data [out, in] int8 / float8_e4m3fn, scale [out, 1] fp32 = max|row| / qmax)."""
    qmax = QMAX[dtype]
    wf = w.float()
    scale = (wf.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    q = (wf / scale).clamp(-qmax, qmax)
    return (q.round().to(torch.int8) if dtype == torch.int8 else q.to(dtype)), scale


# -- W8A8 kernels (pure functions) ---------------------------------------------------------------
def _quantize_tokens(x2: torch.Tensor, qmax: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (xq [M, K] in ``dtype``, s_x [M, 1] fp32) with per-row scale max|x|/qmax."""
    xf = x2.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)  # [M, 1]
    q = (xf / scale).clamp(-qmax, qmax)
    return (q.round().to(torch.int8) if dtype == torch.int8 else q.to(dtype)), scale


def _finish(acc: torch.Tensor, bias: torch.Tensor | None, shape, out_dtype) -> torch.Tensor:
    out = acc if bias is None else acc + bias.to(acc.dtype)
    return out.to(out_dtype).view(*shape[:-1], acc.shape[-1])


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] (bf16/fp32) · W^T with W = w_fp8 [out, in] (e4m3fn) · w_scale [out, 1] -> [..., out] in x's dtype.

    CUDA: per-token fp8 activations + ``torch._scaled_mm`` with row-wise scales (fp8 tensor cores).
    Elsewhere, or when in/out are not multiples of 16: the same quantized math in fp32.
    """
    shape, (n, k) = x.shape, w_fp8.shape
    x2 = x.reshape(-1, k)  # [M, K]
    xq, sx = _quantize_tokens(x2, FP8_MAX, FP8)
    if x.is_cuda and k % 16 == 0 and n % 16 == 0:
        # w_fp8.t() of a row-major [N, K] weight is the column-major [K, N] operand cuBLASLt wants.
        acc = torch._scaled_mm(xq, w_fp8.t(), scale_a=sx, scale_b=w_scale.view(1, n).float(),
                               out_dtype=torch.bfloat16)
        return _finish(acc, None if bias is None else bias.to(torch.bfloat16), shape, x.dtype)
    acc = F.linear(xq.float(), w_fp8.float()) * sx * w_scale.view(1, n).float()
    return _finish(acc, bias, shape, x.dtype)


def int8_linear(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] · W^T with W = w_int8 [out, in] · w_scale [out, 1] -> [..., out] in x's dtype.

    CUDA: per-token int8 activations + ``torch._int_mm`` (int32 accumulate: exact, |sum| <= 127²·K
    fits for K < 133 000) and an fp32 scale epilogue. Elsewhere, or for shapes the kernel refuses
    (M <= 16, in/out not multiples of 8): the same quantized math in fp32.
    """
    shape, (n, k) = x.shape, w_int8.shape
    x2 = x.reshape(-1, k)
    xq, sx = _quantize_tokens(x2, INT8_MAX, torch.int8)
    if x.is_cuda and x2.shape[0] > 16 and k % 8 == 0 and n % 8 == 0:
        acc = torch._int_mm(xq, w_int8.t()).float()  # [M, N] exact integer sums
    else:
        acc = F.linear(xq.float(), w_int8.float())
    return _finish(acc * sx * w_scale.view(1, n).float(), bias, shape, x.dtype)


def dequant_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference (weight-only) numerics: W = data·scale in fp32, matmul in x's dtype."""
    w = (data.float() * scale.float()).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


# Up to this many rows the weight-only reference path is used: the timestep embedding/projection
# (1 row per sample) feed every block's modulation, and 8-bit activations there cost accuracy
# (golden quant_fp8: rel L2 5.3e-2 -> 3.4e-2) while saving nothing.
SMALL_M = 16


def quant_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on the weight dtype: fp8 -> :func:`fp8_linear`, int8 -> :func:`int8_linear`;
    at most SMALL_M rows -> :func:`dequant_linear`."""
    if x.numel() <= SMALL_M * x.shape[-1]:
        return dequant_linear(x, data, scale, bias)
    if data.dtype == FP8:
        return fp8_linear(x, data, scale, bias)
    if data.dtype == torch.int8:
        return int8_linear(x, data, scale, bias)
    raise TypeError(f"quant_linear: weight data must be int8 or float8_e4m3fn, got {data.dtype}")


# -- the layer and the operations namespace --------------------------------------------------------
class QuantoLinear(nn.Module):
    """A Linear that holds either a float weight or quanto int8/fp8 data + per-row fp32 scale.

    ``state_dict()`` uses the official quanto key names once quantized (``weight._data`` ...).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qtype: str | None = None
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False)
                     if bias else None)

    # -- becoming a quantized slot -----------------------------------------------------------------
    def quantize_slot(self, qtype: str) -> None:
        """Turn this layer into an (empty) quantized slot of ``qtype``; the loader then fills it."""
        if qtype not in QTYPES:
            raise ValueError(f"quantization type {qtype!r} is not supported (expected one of {sorted(QTYPES)}).")
        device = self._parameters["weight"].device if "weight" in self._parameters else self.weight_data.device
        self._parameters.pop("weight", None)
        self.qtype = qtype
        shape = (self.out_features, self.in_features)
        self.register_buffer("weight_data", torch.empty(shape, device=device, dtype=QTYPES[qtype]))
        self.register_buffer("weight_scale", torch.empty(self.out_features, 1, device=device))
        self.register_buffer("input_scale", torch.ones((), device=device))
        self.register_buffer("output_scale", torch.ones((), device=device))

    @property
    def quantized(self) -> bool:
        return self.qtype is not None

    def __getattr__(self, name: str):
        # ``weight`` of a quantized slot: the dequantized fp32 tensor (inspection, LoRA; not forward).
        if name == "weight" and self.__dict__.get("qtype") is not None:
            return self.dequantized()
        return super().__getattr__(name)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_data.to(torch.float32) * self.weight_scale).to(dtype)

    def set_quantized(self, data: torch.Tensor, scale: torch.Tensor) -> None:
        self.weight_data, self.weight_scale = data, scale.to(torch.float32)

    def add_delta(self, delta: torch.Tensor) -> None:
        """weight += delta: dequantize in fp32, add, requantize per row in the same format."""
        data, scale = quantize_rows(self.dequantized() + delta.to(self.weight_data.device, torch.float32),
                                    QTYPES[self.qtype])
        self.set_quantized(data, scale)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qtype is None:
            return F.linear(x, self._parameters["weight"], self.bias)
        return self._quantized_linear(x)

    def _quantized_linear(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and fast_matmul_enabled():
            return quant_linear(x, self.weight_data, self.weight_scale, self.bias)
        # Reference numerics: W = _data · _scale (fp32), then a matmul in the compute dtype.
        w = self.dequantized(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    # -- official state-dict names -----------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.qtype is not None:
            for official, ours in QUANTO_SUFFIXES.items():
                destination[prefix + official] = destination.pop(prefix + ours)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.qtype is not None:
            for official, ours in QUANTO_SUFFIXES.items():
                if prefix + official in state_dict:
                    state_dict[prefix + ours] = state_dict.pop(prefix + official)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, qtype={self.qtype}"


def fast_matmul_enabled() -> bool:
    """True when ``INFINITETALK_FAST_QUANT_MATMUL=1``: int8/fp8 layers on CUDA use W8A8 kernels."""
    return os.environ.get(FAST_MATMUL_ENV, "0") == "1"


class QuantoOps:
    """``operations`` namespace whose Linear can become an optimum-quanto int8/fp8 slot."""

    Linear = QuantoLinear
    Conv3d = nn.Conv3d
    LayerNorm = nn.LayerNorm
