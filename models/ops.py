"""The default ``operations`` namespace: plain torch layers.

Every layer of every model is created as ``operations.Linear(in, out, bias=..., device=..., dtype=...)``
(likewise ``Conv3d`` and ``LayerNorm``), so quantized layers or the host's casting layers plug in by
passing another namespace with the same three names.
"""
from __future__ import annotations

from torch import nn


class TorchOps:
    """Plain ``torch.nn`` layers (full-precision weights, no casting)."""

    Linear = nn.Linear
    Conv3d = nn.Conv3d
    LayerNorm = nn.LayerNorm
