"""Rotary position embeddings: the 3-D (frame, row, column) RoPE of the Wan DiT self-attention and
the 1-D RoPE used for two-speaker audio routing.

Numerics follow the official InfiniteTalk implementation: the 3-D angles are computed in float64 and
rotate complex pairs (2i, 2i+1); the 1-D rotation is float32 on interleaved pairs with float positions.
On the CPU the 3-D rotation itself stays float64 (bit-level parity with the reference); on GPUs the
cached cos/sin are rounded to float32 once and the rotation runs in float32: float64 is 1/64 rate on
GPUs and the rounding (<= 6e-8 relative) is far below the bf16 activations' own.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

THETA = 10000.0
_CACHE_SIZE = 8
_tables: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def _rope_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the angles are built in the reference's float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _apply_dtype(device: torch.device) -> torch.dtype:
    # The dtype of the cached cos/sin, hence of the rotation: float64 only on the CPU (see module doc).
    return torch.float64 if device.type == "cpu" else torch.float32


def _group_angles(positions: torch.Tensor, slots: int, group_dim: int) -> torch.Tensor:
    """[n] positions -> [n, slots] angles pos·θ_j with θ_j = THETA^(-2j/group_dim)."""
    exponent = torch.arange(0, group_dim, 2, device=positions.device, dtype=positions.dtype)[:slots]
    inv_freq = 1.0 / torch.pow(THETA, exponent / group_dim)
    return torch.outer(positions, inv_freq)


def rope_table_3d(grid: tuple[int, int, int], head_dim: int,
                  device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T·H·W, 1, head_dim/2] for a (T, H, W) token grid, built on ``device`` and cached.

    The head_dim/2 complex slots split into [c−2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋] (c = head_dim/2), rotated by
    frame, row and column index; group frequencies use D_g = d−4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋.
    """
    device = torch.device(device)
    key = (tuple(int(g) for g in grid), int(head_dim), device)
    if key in _tables:
        _tables.move_to_end(key)
        return _tables[key]
    # Built as a normal tensor (not an inference tensor) so a table cached under inference_mode is
    # also usable by later grad-enabled calls.
    with torch.inference_mode(False), torch.no_grad():
        table = _build_table_3d(key[0], head_dim, device)
    _tables[key] = table
    while len(_tables) > _CACHE_SIZE:
        _tables.popitem(last=False)
    return table


def _build_table_3d(grid: tuple[int, int, int], head_dim: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t, h, w = grid
    c, d = head_dim // 2, head_dim
    slots = (c - 2 * (c // 3), c // 3, c // 3)
    group_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    dtype = _rope_dtype(device)
    angles = [_group_angles(torch.arange(n, device=device, dtype=dtype), s, g)
              for n, s, g in zip((t, h, w), slots, group_dims)]
    # Broadcast each group over the grid in (t, h, w) row-major token order: [T, H, W, c].
    full = torch.cat([angles[0].view(t, 1, 1, -1).expand(t, h, w, -1),
                      angles[1].view(1, h, 1, -1).expand(t, h, w, -1),
                      angles[2].view(1, 1, w, -1).expand(t, h, w, -1)], dim=-1)
    full = full.reshape(t * h * w, 1, c)  # [L, 1, c]: broadcast over heads
    out = _apply_dtype(device)
    return full.cos().to(out), full.sin().to(out)


def apply_rope_3d(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [B, L, H, D] by a :func:`rope_table_3d` table in the table's dtype (float64 on the CPU,
    float32 on GPUs); result in x's dtype. Element-wise only, so torch.compile fuses it into one pass."""
    cos, sin = table
    b, seq, heads, d = x.shape
    pairs = x.to(cos.dtype).view(b, seq, heads, d // 2, 2)  # [B, L, H, D/2, (re, im)]
    re, im = pairs.unbind(-1)
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.view(b, seq, heads, d).to(x.dtype)  # [B, L, H, D]


def apply_rope_1d(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """1-D RoPE on x [..., S, D] at float positions [..., S] (broadcastable to x without its last dim;
    fp32, interleaved pairs); result in x's dtype.

    Frequencies f_i = 10000^(−2i/D), each repeated for its pair; (x0, x1) -> (x0·cos − x1·sin, x1·cos + x0·sin).
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (THETA ** (torch.arange(0, d, 2, device=x.device)[: d // 2].float() / d))
    angles = positions.to(device=x.device, dtype=torch.float32)[..., None] * inv_freq  # [..., S, D/2]
    angles = angles.repeat_interleave(2, dim=-1)  # [..., S, D]: one angle per interleaved pair
    cos, sin = angles.cos(), angles.sin()
    xf = x.float()
    pairs = xf.unflatten(-1, (d // 2, 2))  # [..., S, D/2, 2]
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # [..., S, D]
    return (xf * cos + rotated * sin).to(x.dtype)
