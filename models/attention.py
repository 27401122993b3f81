"""The single attention dispatch point of the pack.

Every attention call of every model goes through :func:`attention`, so a faster kernel (flash,
sage, a fused GPU path) plugs in with :func:`register_backend` + :func:`set_backend` without touching
model code. Numerics follow the official InfiniteTalk implementation: softmax(q·kᵀ/√d)·v.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Explicit scale: the reference uses 1/sqrt(head_dim) everywhere.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)


_BACKENDS: dict[str, AttentionFn] = {"sdpa": _sdpa}
_active = "sdpa"


def register_backend(name: str, fn: AttentionFn) -> None:
    """Add (or replace) a kernel: ``fn(q, k, v, mask) -> out`` with the layout of :func:`attention`."""
    _BACKENDS[name] = fn


def set_backend(name: str) -> None:
    """Select the kernel used by every later :func:`attention` call."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)} "
                         f"(register it first with models.attention.register_backend)")
    _active = name


def get_backend() -> str:
    return _active


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(D).

    q [B, H, Lq, D], k/v [B, H, Lk, D]; ``mask`` (optional) is a bool tensor broadcastable to
    [B, H, Lq, Lk], True where a key may be attended. Returns [B, H, Lq, D] in q's dtype.
    """
    return _BACKENDS[_active](q, k, v, mask)
