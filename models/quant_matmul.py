"""GPU matmuls for optimum-quanto weight-only int8 / fp8 layers (the official quant layout).

Weights stay in the checkpoint's layout: ``data`` [out, in] int8 or float8_e4m3fn and ``scale`` [out, 1]
fp32 (one scale per output row). The reference dequantizes W = data·scale and runs a bf16 matmul,
which reads the weight twice and computes at the bf16 rate. Here the activations are quantized too,
per token (dynamic, symmetric: s_x = max|x_row| / qmax), so the product runs on the fp8 / int8 tensor
cores and the two row scales are applied to the fp32 accumulator:

    y[m, n] = (Σ_k xq[m, k]·wq[n, k]) · s_x[m] · s_w[n] + bias[n]

fp8 goes through ``torch._scaled_mm`` (row-wise scales, bf16 output), int8 through ``torch._int_mm``
(int32 accumulator; the scale epilogue is element-wise, so torch.compile fuses it). Where a fast
kernel can't take the shapes (or on the CPU) the same math is emulated in fp32, so the functions are
also the reference of the fast path. Pure functions: no state, no device moves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127.0


def quantize_rows(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization of a float [out, in] weight -> (data, scale [out, 1] fp32)."""
    wf = w.float()
    qmax = INT8_MAX if dtype == torch.int8 else FP8_MAX
    scale = (wf.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    q = (wf / scale).clamp(-qmax, qmax)
    return (q.round().to(torch.int8) if dtype == torch.int8 else q.to(dtype)), scale


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
