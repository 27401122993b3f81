"""Our own fused attention for the long video self-attention on CUDA (Triton): three precisions.

softmax(q·kᵀ/√d)·v is computed tile by tile with FlashAttention's online softmax (the kernel is in
models/flash_attention_kernel.py, imported on first use); nothing of size Lq×Lk reaches memory.

Modes (:data:`MODES`):

* ``bf16`` — the inputs as they are; tensor-core products with fp32 accumulation, probabilities
  cast to the input dtype for P·V (as every flash kernel does). Same numerics class as SDPA.
* ``int8`` — q·kᵀ on int8 tensor cores (twice the bf16 rate): q and k quantized per token (scale
  amax/127) after subtracting each head's mean key from every key (this shifts all scores of a query
  by the same amount, so the softmax is unchanged, and removes the common offset that would otherwise
  use up the int8 range); P·V stays bf16. An approximation: see docs/PERFORMANCE.md.
* ``int8_fp8`` — as ``int8`` and P·V on fp8 (e4m3) tensor cores too: v quantized per channel
  (amax/448) and stored [B, H, D, Lk] (the layout Hopper's fp8 tensor cores read), probabilities
  scaled to [0, 448] before their e4m3 cast (the factor cancels in the final division). Fastest,
  least exact.

The quantization pre-pass is plain torch (inside a compiled block inductor fuses it with the RoPE
that precedes it); the kernel is the ``torch.library`` custom op ``infinitetalk::flash_attention``
on prepared operands, so a compiled block stays one graph. Selected through models/attention.py
(backends ``triton_bf16``, ``triton_int8``, ``triton_int8_fp8``), used for mask-free CUDA calls
with at least :data:`MIN_KEYS` keys — the video self-attention, ~97 % of the attention FLOPs;
everything else stays on SDPA. :func:`available` test-runs each mode once per process.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MIN_KEYS = 1024
FP8_MAX = 448.0
_LOG2E = 1.4426950408889634
MODES = {"bf16": (False, False), "int8": (True, False), "int8_fp8": (True, True)}  # (q·kᵀ int8, P·V fp8)
_state: dict = {"kernel": None, "available": {}, "failed": None}
# Pinned launch options per mode on Hopper (sm_90): the fastest of the 14 candidates × pointer/TMA
# loads swept on an H100 at the 480p shape (bench/attention_bench.py, docs/PERFORMANCE.md). Other GPUs
# (and modes not here) are autotuned over flash_attention_kernel.CANDIDATES with pointer loads.
_TMA_128x64 = {"use_tma": True, "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
HOPPER_TUNING: dict[str, dict] = {"bf16": {"use_tma": True, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8,
                                           "num_stages": 3},
                                  "int8": dict(_TMA_128x64), "int8_fp8": dict(_TMA_128x64)}
TUNING: dict[str, dict] = {}  # overrides for every GPU (the bench pins its sweep's winner here)


def launch_options(mode: str, device: torch.device) -> dict:
    if mode in TUNING:
        return TUNING[mode]
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return HOPPER_TUNING.get(mode, {})
    return {}


def _kernels():
    """(autotuned kernel, plain kernel) — imports Triton on first use."""
    if _state["kernel"] is None:
        from . import flash_attention_kernel as fk
        _state["kernel"] = (fk.autotuned, fk.attention_kernel)
    return _state["kernel"]


# -- operands --------------------------------------------------------------------------------------
def _per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax(-1).clamp_min(1e-8)
    return torch.round(x * (127.0 / amax)[..., None]).to(torch.int8), amax / 127.0


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str):
    """Kernel operands for ``mode``: (q, q scale [B, H, Lq], k, k scale [B, H, Lk], v, v scale).

    q's scale always includes 1/sqrt(d)·log2(e) (the kernel works in base 2). int8 q/k: per token
    (k after subtracting the head's mean key). fp8 v: (v − its channel mean) per-channel scaled,
    stored [B, H, D, Lk] (Lk padded to a multiple of 16), with [B, H, 2, D] = (scale, mean);
    otherwise v as given and a dummy scale."""
    qk_int8, pv_fp8 = MODES[mode]
    qk_scale = q.shape[-1] ** -0.5 * _LOG2E
    if qk_int8:
        q_, qs = _per_token_int8(q.float())
        qs = qs * qk_scale
        kf = k.float()
        k_, ks = _per_token_int8(kf - kf.mean(dim=2, keepdim=True))
    else:
        q_, k_ = q, k
        qs = torch.full(q.shape[:3], qk_scale, device=q.device, dtype=torch.float32)
        ks = qs.new_ones(1)
    if pv_fp8:
        vm = v.float().mean(dim=2)                                                   # [B, H, D]
        vf = v.float() - vm[:, :, None, :]           # smaller range; the kernel adds the mean back
        v_amax = vf.abs().amax(2).clamp_min(1e-8)                                    # [B, H, D]
        vt = (vf * (FP8_MAX / v_amax)[:, :, None, :]).to(torch.float8_e4m3fn).transpose(2, 3)
        lk = v.shape[2]
        pad = -lk % 16                      # TMA needs 16-byte aligned rows: zero keys, never read as keys
        v_ = torch.zeros(*vt.shape[:3], lk + pad, device=v.device, dtype=vt.dtype)
        v_[..., :lk] = vt
        vs = torch.stack([v_amax / FP8_MAX, vm], dim=2)                              # [B, H, 2, D]
    else:
        v_, vs = v, qs.new_ones(1)
    return q_, qs, k_, ks, v_, vs


def _contig_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _descriptor(t: torch.Tensor, row_stride: int, block: list[int]):
    """A TMA descriptor of ``t`` (dense, last dim contiguous) seen as 2-D [rows, row_stride]."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return TensorDescriptor(t, [-(-span // row_stride), row_stride], [row_stride, 1], block)


def _tma_ok(t: torch.Tensor, row_stride: int, width: int) -> bool:
    """Whether the kernel's 2-D reading of ``t`` holds: every (batch, head) start lies in the row
    grid (a multiple of the row stride, or a column offset whose ``width`` fits inside a row), and
    TMA's 16-byte alignment of the base and the row stride."""
    for dim in range(t.dim() - 2):
        st, n = t.stride(dim), t.shape[dim]
        if n > 1 and st % row_stride and (st * (n - 1) + width > row_stride):
            return False
    return t.data_ptr() % 16 == 0 and (row_stride * t.element_size()) % 16 == 0


def run_prepared(q_, qs, k_, ks, v_, vs, mode: str, out_dtype: torch.dtype, use_tma: bool = False,
                 warp_spec: bool = False, **meta) -> torch.Tensor:
    """The kernel on :func:`prepare`'s operands -> [B, H, Lq, D] in ``out_dtype``. Autotuned unless
    ``meta`` (BLOCK_M, BLOCK_N, num_warps, num_stages) pins one config (tests, bench)."""
    qk_int8, pv_fp8 = MODES[mode]
    q_, k_, v_ = (_contig_last(t) for t in (q_, k_, v_))
    qs, ks, vs = (t.float().contiguous() for t in (qs, ks, vs))
    b, heads, lq, d = q_.shape
    lk = k_.shape[2]
    out = torch.empty(b, heads, lq, d, device=q_.device, dtype=out_dtype)
    sv_a, sv_c = (v_.stride(3), v_.stride(2)) if pv_fp8 else (v_.stride(2), v_.stride(3))  # token, channel
    srcs = (q_, k_, v_)
    use_tma = use_tma and _tma_ok(q_, q_.stride(2), d) and _tma_ok(k_, k_.stride(2), d) and (
        _tma_ok(v_, sv_c, v_.shape[-1]) if pv_fp8 else _tma_ok(v_, sv_a, d))
    if use_tma:
        bm, bn = meta.get("BLOCK_M", 128), meta.get("BLOCK_N", 128)
        srcs = (_descriptor(q_, q_.stride(2), [bm, d]), _descriptor(k_, k_.stride(2), [bn, d]),
                _descriptor(v_, sv_c, [d, bn]) if pv_fp8 else _descriptor(v_, sv_a, [bn, d]))
    vscale, vmean = (vs[:, :, 0].contiguous(), vs[:, :, 1].contiguous()) if pv_fp8 else (vs, vs)
    args = (*srcs, out, qs, ks, vscale, vmean, lq, lk, math.log2(FP8_MAX) if pv_fp8 else 0.0,
            q_.stride(0), q_.stride(1), q_.stride(2), k_.stride(0), k_.stride(1), k_.stride(2),
            v_.stride(0), v_.stride(1), sv_a, sv_c, out.stride(0), out.stride(1), out.stride(2), heads)
    flags = {"HEAD_DIM": d, "QK_INT8": qk_int8, "PV_FP8": pv_fp8, "USE_TMA": use_tma, "WARP_SPEC": warp_spec}
    if meta:
        _kernels()[1][((lq + meta["BLOCK_M"] - 1) // meta["BLOCK_M"], b * heads)](*args, 0, **flags, **meta)
    else:
        grid = lambda m: ((lq + m["BLOCK_M"] - 1) // m["BLOCK_M"], b * heads)  # noqa: E731
        _kernels()[0][grid](*args, max(1, lk).bit_length(), **flags)
    return out


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "bf16", **options) -> torch.Tensor:
    """q [B, H, Lq, D], k/v [B, H, Lk, D] (last dim contiguous, other strides free) -> [B, H, Lq, D]."""
    return run_prepared(*prepare(q, k, v, mode), mode, q.dtype, **options)


# -- the custom op and the backends ----------------------------------------------------------------
def _register():
    if hasattr(torch.ops.infinitetalk, "flash_attention"):  # a second copy of the pack: reuse the op
        return torch.ops.infinitetalk.flash_attention

    def impl(q: torch.Tensor, qs: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor,
             vs: torch.Tensor, mode: str, out_dtype: torch.dtype) -> torch.Tensor:
        return run_prepared(q, qs, k, ks, v, vs, mode, out_dtype, **launch_options(mode, q.device))
    op = torch.library.custom_op("infinitetalk::flash_attention", impl, mutates_args=())

    @op.register_fake
    def _fake(q, qs, k, ks, v, vs, mode, out_dtype):
        return q.new_empty(q.shape, dtype=out_dtype)
    return op


flash_attention_op = _register()


def available(mode: str = "bf16") -> bool:
    """Whether the kernel in ``mode`` runs here (CUDA + Triton + a test call with this GPU's launch
    options that matches SDPA); asked once per mode, a refusal is logged once and kept in :func:`status`."""
    if mode not in _state["available"]:
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA device")
            g = torch.Generator(device="cpu").manual_seed(0)
            q, k, v = (torch.randn(1, 2, 300, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            out = run_prepared(*prepare(q, k, v, mode), mode, q.dtype, **launch_options(mode, q.device))
            err = ((out.float() - ref).norm() / ref.norm()).item()
            if not err < 0.1:
                raise RuntimeError(f"test call differs from SDPA by {err:.3g} (relative L2)")
            _state["available"][mode] = True
        except Exception as err:  # noqa: BLE001 - any Triton/compile/driver failure: say why, use SDPA
            _state["available"][mode], _state["failed"] = False, f"{mode}: {type(err).__name__}: {err}"[:300]
            log.warning("attention: own Triton kernel unavailable (%s); SDPA is used", _state["failed"])
    return _state["available"][mode]


def _usable(q: torch.Tensor, k: torch.Tensor, mask, mode: str) -> bool:
    return (mask is None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
            and k.shape[2] >= MIN_KEYS and q.shape[-1] in (32, 64, 128) and q.shape[-1] == k.shape[-1]
            and _state["available"].get(mode) is True)


def backend(mode: str):
    """Backend function for models/attention.py: the kernel in ``mode`` for long mask-free CUDA calls
    (after :func:`available` said yes), SDPA for everything else."""
    def fn(q, k, v, mask=None):
        if _usable(q, k, mask, mode):
            return flash_attention_op(*prepare(q, k, v, mode), mode, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
    fn.__name__ = f"triton_{mode}"
    return fn


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    """The kernel's arithmetic for ``mode`` in plain fp32 torch on the same rounded operands (one
    softmax over all keys; probabilities rounded as the kernel rounds them): a CPU check."""
    qk_int8, pv_fp8 = MODES[mode]
    q_, qs, k_, ks, v_, vs = prepare(q, k, v, mode)
    s = (q_.float() @ k_.float().transpose(-2, -1)) * qs[..., None]
    if qk_int8:
        s = s * ks[..., None, :]
    p = torch.exp2(s - s.amax(-1, keepdim=True) + (math.log2(FP8_MAX) if pv_fp8 else 0.0))
    if pv_fp8:
        pv = (p.to(torch.float8_e4m3fn).float() @ v_[..., :k.shape[2]].float().transpose(-2, -1)) * vs[:, :, None, 0]
        pv = pv + p.sum(-1, keepdim=True) * vs[:, :, None, 1]
    else:
        pv = p.to(v.dtype).float() @ v_.float()
    return (pv / p.sum(-1, keepdim=True)).to(q.dtype)


def status() -> dict:
    return {"available": dict(_state["available"]), "failed": _state["failed"]}
