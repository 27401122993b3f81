"""Several guidance passes of one step in one batched DiT forward.

Passes that share the latent, timestep, image, audio and speaker masks and differ only in their text
(3-pass guidance: ``cond`` = text + audio and ``drop_text`` = negative text + audio) can run as one
forward with batch B = passes: the DiT takes one audio for the whole batch and runs every row
independently, so each row equals its own B=1 forward up to kernel summation order. Text contexts
of different lengths are zero-padded to a common length first, which is what the DiT does anyway
(it pads every context to ``text_len`` with zeros and attends to all rows).

Whether it is faster than separate forwards is a measurement (bench/dit_forward.py, key
``bf16_480p_1spk_b2``): at 480p the linear layers are already compute-bound at B=1, so the gain is
the once-per-forward work (embeddings, weight reads, launches). Passes with different audio
(``uncond``, ``drop_audio``) still need their own forward.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def shared_audio_passes(model: nn.Module, x: torch.Tensor, t: torch.Tensor, contexts: Sequence[torch.Tensor],
                        clip_fea: torch.Tensor, y: torch.Tensor, audio: torch.Tensor,
                        ref_target_masks: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One forward for ``len(contexts)`` passes that differ only in text.

    x [1, 16, T, H, W], t [1], each context [1, Lt_i, text_dim], clip_fea [1, 257, 1280],
    y [1, 20, T, H, W], audio [N, F, 5, 12, 768] (shared), ref_target_masks [3, H, W] or None.
    Returns one [1, out_dim, T, H, W] prediction per context, in order.
    """
    if x.shape[0] != 1 or y.shape[0] != 1 or clip_fea.shape[0] != 1:
        raise ValueError(f"shared_audio_passes batches the passes of ONE sample: x, y and clip_fea need batch 1; "
                         f"got {x.shape[0]}, {y.shape[0]}, {clip_fea.shape[0]}")
    if any(c.dim() != 3 or c.shape[0] != 1 for c in contexts):
        raise ValueError(f"each text context must be [1, Lt, text_dim]; got {[tuple(c.shape) for c in contexts]}")
    passes = len(contexts)
    longest = max(c.shape[1] for c in contexts)
    text = torch.cat([F.pad(c, (0, 0, 0, longest - c.shape[1])) for c in contexts])  # [P, Lt, text_dim]
    expand = (passes,)
    out = model(x.expand(*expand, *x.shape[1:]), t.reshape(-1)[:1].expand(passes), text,
                clip_fea.expand(*expand, *clip_fea.shape[1:]), y.expand(*expand, *y.shape[1:]), audio,
                ref_target_masks=ref_target_masks)  # [P, out_dim, T, H, W]
    return list(out.split(1))
