"""Text + audio classifier-free guidance and optional APG.

Numerics follow the official InfiniteTalk pipeline:
* text scale != 1: passes ``cond`` (text + audio), ``drop_text`` (negative text + audio), ``uncond`` (negative
  text + null audio); ``pred = uncond + t*(cond - drop_text) + a*(drop_text - uncond)``;
* text scale == 1 (distilled "fast" weights): passes ``cond`` and ``drop_audio`` (text + null audio);
  ``pred = drop_audio + a*(cond - drop_audio)``.
The null audio is ONE all-zero speaker ``[1, F, 5, 12, 768]`` (the DiT then takes its single-speaker path and
still projects the zeros, so "null audio" is audio_proj(0), not zero tokens).

A pass whose weight is zero is not run (the official code runs it and multiplies by 0): with both scales 1
(lightx2v / FusionX recipes at cfg 1) the prediction is ``cond`` alone, one DiT pass per step; with audio 1 and
text != 1 it is ``drop_text + t*(cond - drop_text)``, two passes. Same result up to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

COND, DROP_TEXT, UNCOND, DROP_AUDIO = "cond", "drop_text", "uncond", "drop_audio"


def two_pass(text_scale: float) -> bool:
    return math.isclose(text_scale, 1.0)


def pass_names(text_scale: float, audio_scale: float) -> tuple[str, ...]:
    """The DiT passes of one step, in the reference's call order (passes of weight 0 left out)."""
    no_audio = math.isclose(audio_scale, 1.0)
    if two_pass(text_scale):
        return (COND,) if no_audio else (COND, DROP_AUDIO)
    return (COND, DROP_TEXT) if no_audio else (COND, DROP_TEXT, UNCOND)


def passes_per_step(text_scale: float, audio_scale: float) -> int:
    return len(pass_names(text_scale, audio_scale))


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
    of the guidance difference orthogonal to ``cond`` (eta = 0). One instance per window (fresh buffers).
    ``running[key]`` is a term's momentum buffer after its update (unclipped), ``updates[key]`` its last result."""
    momentum: float = -0.75
    norm_threshold: float = 55.0
    eta: float = 0.0
    running: dict = field(default_factory=dict)
    updates: dict = field(default_factory=dict)

    def __call__(self, key: str, diff: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        prev = self.running.get(key)
        diff = diff if prev is None else diff + self.momentum * prev
        self.running[key] = diff
        dims = list(range(diff.dim()))  # the whole latent [C, T, H, W]
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        d64, c64 = diff.double(), cond.double()
        unit = c64 / c64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = d64 - parallel
        self.updates[key] = (orthogonal + self.eta * parallel).to(diff.dtype)
        return self.updates[key]


def combine(preds: dict[str, torch.Tensor], text_scale: float, audio_scale: float,
            apg: APG | None = None) -> torch.Tensor:
    """Guided velocity from the per-pass predictions (names from ``pass_names``)."""
    cond = preds[COND]
    if len(preds) == 1:  # both scales 1: no guidance
        return cond
    if DROP_AUDIO in preds:
        drop_audio = preds[DROP_AUDIO]
        if apg is None:
            return drop_audio + audio_scale * (cond - drop_audio)
        return cond + (audio_scale - 1) * apg("audio", cond - drop_audio, cond)
    drop_text = preds[DROP_TEXT]
    if UNCOND not in preds:  # audio scale 1: the audio term has weight 0
        if apg is None:
            return drop_text + text_scale * (cond - drop_text)
        return cond + (text_scale - 1) * apg("text", cond - drop_text, cond)
    uncond = preds[UNCOND]
    if apg is None:
        return uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)
    return (cond + (text_scale - 1) * apg("text", cond - drop_text, cond)
            + (audio_scale - 1) * apg("audio", drop_text - uncond, cond))
