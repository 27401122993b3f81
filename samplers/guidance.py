"""Text + audio classifier-free guidance, optional APG, and an optional step cache.

Numerics follow the official InfiniteTalk pipeline:
* text scale != 1: passes ``cond`` (text + audio), ``drop_text`` (negative text + audio), ``uncond`` (negative
  text + null audio); ``pred = uncond + t*(cond - drop_text) + a*(drop_text - uncond)``;
* text scale == 1 (distilled "fast" weights): passes ``cond`` and ``drop_audio`` (text + null audio);
  ``pred = drop_audio + a*(cond - drop_audio)``.
The null audio is ONE all-zero speaker ``[1, F, 5, 12, 768]`` (the DiT then takes its single-speaker path and
still projects the zeros, so "null audio" is audio_proj(0), not zero tokens).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger(__name__)

COND, DROP_TEXT, UNCOND, DROP_AUDIO = "cond", "drop_text", "uncond", "drop_audio"


def two_pass(text_scale: float) -> bool:
    return math.isclose(text_scale, 1.0)


def pass_names(text_scale: float) -> tuple[str, ...]:
    """The DiT passes of one step, in the reference's call order."""
    return (COND, DROP_AUDIO) if two_pass(text_scale) else (COND, DROP_TEXT, UNCOND)


def null_audio(audio: torch.Tensor) -> torch.Tensor:
    """One all-zero speaker shaped like one speaker of ``audio`` [N, F, 5, 12, C] -> [1, F, 5, 12, C]."""
    return torch.zeros_like(audio[-1:])


def pass_inputs(name: str, context, context_null, audio, audio_null):
    """(text context, audio) of a pass."""
    table = {COND: (context, audio), DROP_TEXT: (context_null, audio),
             UNCOND: (context_null, audio_null), DROP_AUDIO: (context, audio_null)}
    return table[name]


# ---------------------------------------------------------------------------------------------- APG
@dataclass
class APG:
    """Adaptive projected guidance (arXiv 2410.02416) as in the official code: momentum, norm clip, keep the part
    of the guidance difference orthogonal to ``cond`` (eta = 0). One instance per window (fresh buffers)."""
    momentum: float = -0.75
    norm_threshold: float = 55.0
    eta: float = 0.0
    _buffers: dict = field(default_factory=dict)

    def __call__(self, key: str, diff: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        prev = self._buffers.get(key)
        diff = diff if prev is None else diff + self.momentum * prev
        self._buffers[key] = diff
        dims = list(range(diff.dim()))  # the whole latent [C, T, H, W]
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        d64, c64 = diff.double(), cond.double()
        unit = c64 / c64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = d64 - parallel
        return (orthogonal + self.eta * parallel).to(diff.dtype)


def combine(preds: dict[str, torch.Tensor], text_scale: float, audio_scale: float,
            apg: APG | None = None) -> torch.Tensor:
    """Guided velocity from the per-pass predictions (names from ``pass_names``)."""
    cond = preds[COND]
    if two_pass(text_scale):
        drop_audio = preds[DROP_AUDIO]
        if apg is None:
            return drop_audio + audio_scale * (cond - drop_audio)
        return cond + (audio_scale - 1) * apg("audio", cond - drop_audio, cond)
    drop_text, uncond = preds[DROP_TEXT], preds[UNCOND]
    if apg is None:
        return uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)
    return (cond + (text_scale - 1) * apg("text", cond - drop_text, cond)
            + (audio_scale - 1) * apg("audio", drop_text - uncond, cond))


# --------------------------------------------------------------------------------------- step cache
# Polynomial rescaling of the relative L1 change (official TeaCache "ret steps" coefficients, fitted on e0).
CACHE_COEFFICIENTS = {
    "480p": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "720p": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}


class StepCache:
    """TeaCache-like skipping of DiT passes, keyed by PASS TYPE (correct for both 3- and 2-pass guidance).

    The indicator is the official one: the relative L1 change of the modulated time embedding ``e0`` between
    consecutive steps, rescaled by a polynomial and accumulated; while the accumulation stays under ``threshold``
    the pass is skipped. We compute ``e0`` from the DiT's own ``time_embedding``/``time_projection`` modules
    (official names) when the model has them, else from the raw timestep sinusoid.

    Difference from the official cache: without hooks into the DiT's block stack we cache the WHOLE-MODEL output
    of the pass (the official cache keeps the residual of the block stack and re-runs the head). On a skipped
    step the previous prediction of the same pass type is reused as is. ``reset()`` between windows.
    """

    def __init__(self, dit: Callable, steps: int, threshold: float, resolution: str = "480p", warmup: int = 5):
        if threshold < 0:
            raise ValueError(f"StepCache: threshold must be >= 0, got {threshold}")
        self.dit, self.steps, self.threshold, self.warmup = dit, steps, threshold, warmup
        self.coefficients = CACHE_COEFFICIENTS.get(resolution, CACHE_COEFFICIENTS["480p"])
        self.skipped = 0
        self.reset()

    def reset(self) -> None:
        self._state: dict[str, dict] = {}

    def _indicator(self, t: torch.Tensor) -> torch.Tensor:
        model = self.dit
        freq_dim = getattr(model, "freq_dim", 256)
        half = freq_dim // 2
        omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
        angle = t.double().cpu()[:, None] * omega[None]
        sinus = torch.cat([torch.cos(angle), torch.sin(angle)], dim=1).float()
        emb, proj = getattr(model, "time_embedding", None), getattr(model, "time_projection", None)
        if emb is None or proj is None:
            return sinus
        param = next(emb.parameters())
        return proj(emb(sinus.to(param.device, param.dtype))).float().cpu()

    def should_compute(self, kind: str, step: int, t: torch.Tensor) -> bool:
        state = self._state.setdefault(kind, {"acc": 0.0, "prev": None, "out": None})
        e0 = self._indicator(t)
        prev, state["prev"] = state["prev"], e0
        if step < self.warmup or step >= self.steps - 1 or prev is None or state["out"] is None:
            state["acc"] = 0.0
            return True
        rel = ((e0 - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)).item()
        state["acc"] += sum(c * rel ** (len(self.coefficients) - 1 - i) for i, c in enumerate(self.coefficients))
        if state["acc"] < self.threshold:
            return False
        state["acc"] = 0.0
        return True

    def __call__(self, kind: str, step: int, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``dit(x, t, *args, **kwargs)``, or the cached output of the same pass type."""
        if self.threshold > 0 and not self.should_compute(kind, step, t):
            self.skipped += 1
            log.debug("step cache: reusing %s at step %d", kind, step)
            return self._state[kind]["out"]
        out = self.dit(x, t, *args, **kwargs)
        if self.threshold > 0:
            self._state[kind]["out"] = out
        return out
