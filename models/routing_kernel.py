"""Fused GPU kernel for the two-speaker routing map's per-head class probabilities.

For one head, the map needs softmax(q·kᵀ/√d) over the first latent frame's S keys for every one of
the L queries, then the probability mass inside each class's keys (weights [S, 3] = mean over the
class). The plain version materialises [L, S] fp32 scores per head (at 480p 40 heads × 32,760 ×
1,560 × 4 B = 8 GiB per block, written and read several times). Here one Triton program owns a tile
of queries of one head and streams the keys: scores on the tensor cores from the bf16 q/k with fp32
accumulation (the products of bf16 values are exact in fp32, so this is the fp32 matmul of the
same inputs up to summation order), an online softmax in fp32 (running max and sum, as in
FlashAttention) and three running class sums, rescaled whenever the max moves. Nothing of size
[L, S] ever reaches memory. Output: [B, H, L, 3] fp32 class probabilities per head.

Used only for CUDA bf16/fp16 q/k (the model's GPU dtypes); the CPU and fp32 paths keep the exact
fp32 reference in ``audio_adapter.routing_map``. Triton ships with CUDA builds of torch; if it is
missing or the kernel fails, the op falls back to the reference math (and says so once in the log).
The op is a ``torch.library`` custom op so ``torch.compile`` treats it as one opaque call.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_OP = "infinitetalk::routing_class_probs"
_BLOCK_M, _BLOCK_N = 128, 64
_state = {"kernel": None, "failed": None, "last_path": None}


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def class_probs(q_ptr, k_ptr, w_ptr, out_ptr, seq, keys, scale,
                    sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, so_b, so_h, so_l,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :],
                    mask=rows[:, None] < seq, other=0.0)                      # [M, D]
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                  # running max
        l_i = tl.zeros([BLOCK_M], tl.float32)                                # running sum of exp
        c0 = tl.zeros([BLOCK_M], tl.float32)                                 # running class sums
        c1 = tl.zeros([BLOCK_M], tl.float32)
        c2 = tl.zeros([BLOCK_M], tl.float32)
        for start in range(0, keys, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            valid = cols < keys
            k = tl.load(k_ptr + b * sk_b + h * sk_h + cols[:, None] * sk_l + dims[None, :],
                        mask=valid[:, None], other=0.0)                      # [N, D]
            s = tl.dot(q, tl.trans(k)) * scale                               # [M, N] fp32 accumulate
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            w0 = tl.load(w_ptr + cols * 3, mask=valid, other=0.0)
            w1 = tl.load(w_ptr + cols * 3 + 1, mask=valid, other=0.0)
            w2 = tl.load(w_ptr + cols * 3 + 2, mask=valid, other=0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            c0 = c0 * alpha + tl.sum(p * w0[None, :], 1)
            c1 = c1 * alpha + tl.sum(p * w1[None, :], 1)
            c2 = c2 * alpha + tl.sum(p * w2[None, :], 1)
            m_i = m_new
        inv = 1.0 / l_i
        out = out_ptr + b * so_b + h * so_h + rows * so_l
        keep = rows < seq
        tl.store(out, c0 * inv, mask=keep)
        tl.store(out + 1, c1 * inv, mask=keep)
        tl.store(out + 2, c2 * inv, mask=keep)

    return class_probs


def launch(q: torch.Tensor, k: torch.Tensor, per_key: torch.Tensor) -> torch.Tensor:
    """q [B, L, H, D], k [B, S, H, D] (bf16/fp16, last dim contiguous), per_key [S, 3] fp32 -> [B, H, L, 3]."""
    if _state["kernel"] is None:
        _state["kernel"] = _build_kernel()
    b, seq, heads, d = q.shape
    keys = k.shape[1]
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    per_key = per_key.contiguous().float()
    out = torch.empty(b, heads, seq, 3, device=q.device, dtype=torch.float32)
    grid = ((seq + _BLOCK_M - 1) // _BLOCK_M, heads, b)
    _state["kernel"][grid](q, k, per_key, out, seq, keys, d ** -0.5,
                           q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                           out.stride(0), out.stride(1), out.stride(2),
                           HEAD_DIM=d, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=8, num_stages=2)
    return out


def reference(q: torch.Tensor, k: torch.Tensor, per_key: torch.Tensor) -> torch.Tensor:
    """The same [B, H, L, 3] by the plain fp32 math (chunks of heads, ≤ 2^28 probabilities at a time)."""
    b, seq, heads, d = q.shape
    chunk = max(1, min(heads, 2 ** 28 // max(1, b * seq * k.shape[1])))
    parts = []
    for h0 in range(0, heads, chunk):
        qh = q[:, :, h0:h0 + chunk].float().transpose(1, 2) * d ** -0.5     # [B, h, L, D]
        kh = k[:, :, h0:h0 + chunk].float().transpose(1, 2)                  # [B, h, S, D]
        parts.append((qh @ kh.transpose(-2, -1)).softmax(-1) @ per_key)      # [B, h, L, 3]
    return torch.cat(parts, dim=1)


def _impl(q: torch.Tensor, k: torch.Tensor, per_key: torch.Tensor) -> torch.Tensor:
    if _state["failed"] is None:
        try:
            out = launch(q, k, per_key)
            _state["last_path"] = "triton"
            return out
        except Exception as err:  # noqa: BLE001 - any Triton/compile failure: fall back, say why once
            _state["failed"] = f"{type(err).__name__}: {err}"[:300]
            log.warning("routing map: fused Triton kernel unavailable (%s); using the plain fp32 path",
                        _state["failed"])
    _state["last_path"] = "reference"
    return reference(q, k, per_key)


def _register():
    namespace, name = _OP.split("::")
    if hasattr(getattr(torch.ops, namespace), name):  # a second copy of the pack: reuse the op
        return getattr(getattr(torch.ops, namespace), name)
    op = torch.library.custom_op(_OP, _impl, mutates_args=())

    @op.register_fake
    def _fake(q, k, per_key):
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], 3), dtype=torch.float32)
    return op


routing_class_probs = _register()


def status() -> dict:
    """Which path the last call took ("triton" / "reference") and why the kernel failed, if it did."""
    return {"last_path": _state["last_path"], "failed": _state["failed"]}
