"""Non-finite values caught where they enter, not after minutes of sampling (docs/LOADING.md).

NaN or inf in the first DiT output means the weights (or a merged LoRA) hold them, or the compute
dtype overflows: every later step would only carry them into a black or broken video. One check of
the first output is enough (a finite model on finite inputs stays finite) and costs one reduction."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class NonFiniteOutput(ValueError):
    """The model's first output holds NaN or inf."""


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@contextmanager
def first_output_finite(model: nn.Module):
    """Within the block, the first forward of ``model`` raises ``NonFiniteOutput`` when its output is
    not finite; the hook removes itself after that first call (and on leaving the block)."""
    handle = None

    def hook(module, args, out):
        handle.remove()
        tensor = _first(out)
        if isinstance(tensor, torch.Tensor) and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteOutput("the first DiT pass gave NaN or infinite values: the model weights (or a "
                                  "merged LoRA) hold NaN/inf, or this precision overflows")

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
