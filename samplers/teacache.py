"""The official TeaCache: skip the DiT's block stack on steps whose timestep embedding barely moved.

Numerics follow the official InfiniteTalk ``teacache_forward`` with ``use_ret_steps=True`` (the only mode the
pipeline uses; golden README §4a). Per DiT call, inside the forward, after the embeddings:

1. compare ``e0`` (time_projection(time_embedding(sinusoid(t))), [B, 6, dim] fp32, the tensor the blocks are
   modulated with) with the previous ``e0`` of the same slot: rel = mean|e0 - prev| / mean|prev| (fp32);
2. add the fitted polynomial p(rel) (float64, highest power first) to the slot's accumulated distance;
3. while the accumulation stays under the threshold, reuse the slot's block residual (``x + residual`` instead
   of every block; the head still runs with the current ``e``); otherwise run the blocks, store
   ``residual = x_out - x_in`` and reset the accumulation. The first 5 calls of a slot always compute and there
   is no cutoff at the end (``use_ret_steps=True``: the last steps may be reused too).

Where we differ from the official code, on purpose (README §4a, "2-pass guidance is not covered"): its slots are
a call counter modulo 3, which is right only for 3-pass guidance. With 2 passes per step (text scale 1) its
counter makes a ``drop_audio`` call reuse a residual computed by a ``cond`` call, compares e0 one or two steps
apart, warms up for 7.5 steps, and its counter leaks stale state into the next generation. We key the slots by
PASS TYPE (cond / drop_text / uncond, or cond / drop_audio): every pass compares and reuses only its own
history, the warm-up is 5 steps in every mode, and ``reset()`` starts each window clean. For 3-pass guidance
this gives exactly the official decisions (its counter wraps to 0 at every window start, and the forced warm-up
calls overwrite every slot's state before any reuse).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

# Fitted on e0 by the official code ("ret steps" coefficients), np.poly1d order: highest power first.
COEFFICIENTS = {
    "480p": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "720p": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}
WARMUP_CALLS = 5       # official ret_steps = 5 steps (x 3 calls in its single counter)
OFFICIAL_THRESHOLD = 0.2  # the CLI default (--teacache_thresh)


def rescale(rel: float, coefficients) -> float:
    """p(rel) in float64 by Horner's rule, as ``np.poly1d`` evaluates it."""
    value = 0.0
    for c in coefficients:
        value = value * rel + c
    return value


class TeaCacheSlot:
    """One pass type's state; the DiT forward's ``block_cache`` (see ``WanModel.forward``)."""

    def __init__(self, owner: "TeaCache", name: str):
        self.owner, self.name = owner, name
        self.calls, self.accumulated = 0, 0.0
        self.prev_e0: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def reuse(self, e0: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Decide for this call: ``x + residual`` (the blocks are skipped) or None (run the blocks, then
        ``store``). ``x`` is the block-0 input [B, L, dim]; ``e0`` [B, 6, dim] fp32."""
        e0 = e0.float()
        prev, self.prev_e0 = self.prev_e0, e0.detach()
        forced = self.calls < WARMUP_CALLS or prev is None or prev.shape != e0.shape
        self.calls += 1
        rel = scaled = None
        if forced:
            self.accumulated, compute = 0.0, True
        else:
            rel = ((e0 - prev).abs().mean() / prev.abs().mean()).item()
            scaled = rescale(rel, self.owner.coefficients)
            self.accumulated += scaled
            compute = self.accumulated >= self.owner.threshold
        usable = self.residual is not None and self.residual.shape == x.shape
        if not compute and not usable:  # nothing of this shape to reuse (cannot happen within one window)
            compute = True
        self.owner.decided(self, compute=compute, forced=forced, rel=rel, scaled=scaled)
        if compute:
            self.accumulated = 0.0
            return None
        self.owner.skipped += 1
        return x + self.residual.to(x.dtype)

    def store(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """Keep the block stack's residual (in the compute dtype, as the official code)."""
        self.residual = (x_out - x_in).detach()


class TeaCache:
    """Per-pass-type TeaCache state for one generation; ``slot(name)`` goes to the DiT call of that pass.

    threshold: the official ``teacache_thresh`` (0.2 in the CLI; 0 turns it off at the caller). resolution:
    "480p" or "720p" (which fitted polynomial). on_decision(name, info): optional per-call record (tests)."""

    def __init__(self, threshold: float, resolution: str = "480p",
                 on_decision: Callable[[str, dict], None] | None = None):
        if threshold < 0:
            raise ValueError(f"TeaCache: teacache_thresh must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.coefficients = COEFFICIENTS.get(resolution, COEFFICIENTS["480p"])
        self.on_decision = on_decision
        self.skipped = 0
        self._slots: dict[str, TeaCacheSlot] = {}

    def slot(self, name: str) -> TeaCacheSlot:
        if name not in self._slots:
            self._slots[name] = TeaCacheSlot(self, name)
        return self._slots[name]

    def reset(self) -> None:
        """Forget every slot (a new window: new latent size or context; the warm-up starts again)."""
        self._slots.clear()

    def decided(self, slot: TeaCacheSlot, **info) -> None:
        if not info["compute"]:
            log.debug("teacache: %s reuses its block residual (accumulated %.4g < %g)", slot.name,
                      slot.accumulated, self.threshold)
        if self.on_decision is not None:
            self.on_decision(slot.name, dict(info, accumulated=slot.accumulated))
