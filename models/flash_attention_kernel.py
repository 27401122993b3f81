"""The Triton kernel behind models/flash_attention.py (imported only when a kernel is first needed,
so importing the pack never needs Triton).

One program owns BLOCK_M queries of one (batch, head) and streams the keys BLOCK_N at a time with
FlashAttention's online softmax: running max ``m`` and sum ``l`` in fp32, the fp32 output
accumulator rescaled by exp2(m_old − m_new) when the max moves. Scores are in base 2: the per-query
scale ``qs`` carries 1/sqrt(d)·log2(e) (and q's int8 dequantization scale). Full key tiles run
without masks; only the last, partial tile is masked.

Int8 scores are turned into fp32 without the (quarter-rate) int→float conversion unit: for
|s| < 2^22, the bits of (s + 0x4B400000) read as fp32 are exactly 12582912 + s, and one full-rate
subtraction leaves s. |s| ≤ 128·127·127 < 2^22 for head dims up to 128.

USE_TMA loads tiles through host-made tensor descriptors (Hopper's TMA engine) instead of pointer
arithmetic; WARP_SPEC asks Triton to warp-specialize the key loop. Both are tuning choices with the
same arithmetic.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAGIC_I = tl.constexpr(0x4B400000)   # bits of 12582912.0 = 1.5·2^23
MAGIC_F = tl.constexpr(12582912.0)


@triton.jit
def _origin(b, h, s_b, s_h, s_l):
    """(row, column) of token 0 of (b, h) in the 2-D [rows, s_l] view a descriptor describes."""
    off = b * s_b + h * s_h
    return off // s_l, off % s_l


@triton.jit
def _step(acc, l_i, m_i, q, qs, k_src, v_src, ks_ptr, start, lk, p_offset, sk_l, sv_a, sv_c, dims,
          k_row, k_col, v_row, v_col,
          BLOCK_N: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr, MASKED: tl.constexpr,
          USE_TMA: tl.constexpr):
    """One key tile: scores, online-softmax update, P·V into ``acc``."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < lk
    if USE_TMA:
        k = k_src.load([k_row + start, k_col])                                   # [N, D]
        if PV_FP8:
            v = tl.trans(v_src.load([v_row, v_col + start]))                      # stored [D, N]
        else:
            v = v_src.load([v_row + start, v_col])
    elif MASKED:
        k = tl.load(k_src + cols[:, None] * sk_l + dims[None, :], mask=col_ok[:, None])  # masked scores below
        v = tl.load(v_src + cols[:, None] * sv_a + dims[None, :] * sv_c, mask=col_ok[:, None], other=0.0)
    else:
        k = tl.load(k_src + cols[:, None] * sk_l + dims[None, :])
        v = tl.load(v_src + cols[:, None] * sv_a + dims[None, :] * sv_c)
    if QK_INT8:
        if MASKED:
            ks = tl.load(ks_ptr + cols, mask=col_ok, other=0.0)
        else:
            ks = tl.load(ks_ptr + cols)
        si = tl.dot(q, tl.trans(k), out_dtype=tl.int32)
        s = ((si + MAGIC_I).to(tl.float32, bitcast=True) - MAGIC_F) * ks[None, :]
    else:
        s = tl.dot(q, tl.trans(k))                                                # [M, N] fp32
    if MASKED:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    # qs > 0, so the scaled row max is qs · (raw row max); p = exp2(s·qs − m) is one FMA + exp2.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qs)
    alpha = tl.math.exp2(m_i - m_new)
    # fp8 P·V: p_offset = log2(448) puts the probabilities in [0, 448], the e4m3 range; the factor
    # is common to acc and l and cancels in acc / l. bf16 P·V: p_offset = 0.
    p = tl.math.exp2(s * qs[:, None] - (m_new - p_offset)[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def attention_kernel(q_src, k_src, v_src, o_ptr, qs_ptr, ks_ptr, vs_ptr, vm_ptr, lq, lk, p_offset,
                     sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_a, sv_c, so_b, so_h, so_l,
                     heads, lk_bucket, HEAD_DIM: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr = False,
                     WARP_SPEC: tl.constexpr = False):
    # lk_bucket (bit length of the key count) is only an autotuning key.
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < lq
    k_row, k_col = _origin(b, h, sk_b, sk_h, sk_l)
    if PV_FP8:
        v_row, v_col = _origin(b, h, sv_b, sv_h, sv_c)      # v stored [B, H, D, Lk]: rows are channels
    else:
        v_row, v_col = _origin(b, h, sv_b, sv_h, sv_a)
    if USE_TMA:
        q_row, q_col = _origin(b, h, sq_b, sq_h, sq_l)
        q = q_src.load([q_row + pid_m * BLOCK_M, q_col])                          # [M, D]
        k_base, v_base = k_src, v_src
    else:
        # Rows past lq are loaded unmasked-by-value: a row only feeds its own output, which is not stored.
        q = tl.load(q_src + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :], mask=row_ok[:, None])
        k_base = k_src + b * sk_b + h * sk_h
        v_base = v_src + b * sv_b + h * sv_h
    qs = tl.load(qs_ptr + bh * lq + rows, mask=row_ok, other=1.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    ks_row = ks_ptr + bh * lk
    full = (lk // BLOCK_N) * BLOCK_N
    for start in tl.range(0, full, BLOCK_N, warp_specialize=WARP_SPEC):
        acc, l_i, m_i = _step(acc, l_i, m_i, q, qs, k_base, v_base, ks_row, start, lk, p_offset, sk_l, sv_a, sv_c,
                              dims, k_row, k_col, v_row, v_col, BLOCK_N, QK_INT8, PV_FP8, False, USE_TMA)
    if full < lk:
        acc, l_i, m_i = _step(acc, l_i, m_i, q, qs, k_base, v_base, ks_row, full, lk, p_offset, sk_l, sv_a, sv_c,
                              dims, k_row, k_col, v_row, v_col, BLOCK_N, QK_INT8, PV_FP8, True, USE_TMA)
    acc = acc / l_i[:, None]
    if PV_FP8:
        # v was stored as (v − channel mean) / scale: the rows of P sum to one, so adding the mean back is exact.
        acc = acc * tl.load(vs_ptr + bh * HEAD_DIM + dims)[None, :] + tl.load(vm_ptr + bh * HEAD_DIM + dims)[None, :]
    tl.store(o_ptr + b * so_b + h * so_h + rows[:, None] * so_l + dims[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


CANDIDATES = ((128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (128, 128, 4, 3),
              (64, 64, 4, 3), (128, 64, 8, 4))


def set_block_shapes(nargs: dict) -> None:
    """Autotuning pre-hook: give TMA descriptors the block shapes of the config being tried."""
    if nargs.get("USE_TMA"):
        bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
        nargs["q_src"].block_shape = [bm, d]
        nargs["k_src"].block_shape = [bn, d]
        nargs["v_src"].block_shape = [d, bn] if nargs["PV_FP8"] else [bn, d]


def configs() -> list:
    """Autotuning candidates (BLOCK_M, BLOCK_N, warps, pipeline stages) for Hopper/Ampere-class GPUs."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=set_block_shapes)
            for bm, bn, w, s in CANDIDATES]


autotuned = triton.autotune(configs=configs(), key=["HEAD_DIM", "QK_INT8", "PV_FP8", "lk_bucket"])(attention_kernel)
