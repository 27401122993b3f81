"""The single attention dispatch point of the pack.

Every attention call of every model goes through :func:`attention`, so a faster kernel (flash,
sage, a fused GPU path) plugs in with :func:`register_backend` + :func:`set_backend` without touching
model code. Numerics follow the official InfiniteTalk implementation: softmax(q·kᵀ/√d)·v.
The user's choices (:data:`USER_CHOICES`: the libraries, the host's own attention, ``auto``) are
resolved and registered by models/attention_backends.py.
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


def _register_own_kernels() -> None:
    """Our Triton kernels (models/flash_attention.py): ``triton_bf16``, ``triton_int8`` (int8 q·kᵀ,
    bf16 p·v) and ``triton_int8_fp8`` (int8 q·kᵀ, fp8 p·v). Each uses SDPA where the kernel does not
    apply (CPU, masks, short key sets); Triton itself is only imported on the first kernel call."""
    from . import flash_attention
    for mode in flash_attention.MODES:
        _BACKENDS[f"triton_{mode}"] = flash_attention.backend(mode)


_register_own_kernels()


def register_backend(name: str, fn: AttentionFn) -> None:
    """Add (or replace) a kernel: ``fn(q, k, v, mask) -> out`` with the layout of :func:`attention`."""
    _BACKENDS[name] = fn


def set_backend(name: str) -> None:
    """Select the kernel used by every later :func:`attention` call."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)} "
                         f"(register it first with models.attention.register_backend)")
    if name.startswith("triton_"):
        from . import flash_attention
        flash_attention.available(name.removeprefix("triton_"))  # one test call; if it fails, SDPA serves
    _active = name


# Every choice a user can name (Model Loader input ``attention``, INFINITETALK_ATTENTION); the
# libraries and ``auto`` are resolved by models/attention_backends.resolve.
USER_CHOICES = ("auto", "sdpa", "comfy", "sageattention", "flash_attn", "xformers", "comfy_kitchen_int8",
                "int8", "int8_fp8")
OWN_CHOICES = ("sdpa", "int8", "int8_fp8")


def backend_for_choice(choice: str | None, source: str = "INFINITETALK_ATTENTION") -> str:
    """The backend name of one of our own kernels (``sdpa`` default, ``int8``, ``int8_fp8``) without
    any test call (benchmarks); a clear ValueError naming ``source`` for anything else."""
    value = (choice or "sdpa").strip().lower() or "sdpa"
    if value not in OWN_CHOICES:
        raise ValueError(f"{source}={choice!r} is not one of {', '.join(OWN_CHOICES)} "
                         f"(libraries and auto go through models.attention_backends.resolve)")
    return "sdpa" if value == "sdpa" else f"triton_{value}"


def get_backend() -> str:
    return _active


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(D).

    q [B, H, Lq, D], k/v [B, H, Lk, D]; ``mask`` (optional) is a bool tensor broadcastable to
    [B, H, Lq, Lk], True where a key may be attended. Returns [B, H, Lq, D] in q's dtype.
    """
    return _BACKENDS[_active](q, k, v, mask)
