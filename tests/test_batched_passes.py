"""Guidance passes batched into one forward equal their separate B=1 forwards (tiny DiT, fp32 CPU)."""
from __future__ import annotations

import pytest
import torch

from infinitetalk.models.batched_passes import shared_audio_passes
from infinitetalk.models.wan_dit import WanModel

TINY = {"dim": 128, "ffn_dim": 256, "text_dim": 64, "num_heads": 4, "num_layers": 2,
        "intermediate_dim": 4, "output_dim": 64}


@pytest.mark.parametrize("speakers", [1, 2])
def test_shared_audio_passes_equal_separate_forwards(speakers):
    torch.manual_seed(0)
    model = WanModel(**TINY, weight_init=True).eval()
    t_, h, w = 3, 8, 12
    x, y = torch.randn(1, 16, t_, h, w), torch.randn(1, 20, t_, h, w)
    clip, audio = torch.randn(1, 257, 1280), torch.randn(speakers, 9, 5, 12, 768)
    masks = None
    if speakers == 2:
        masks = torch.zeros(3, h, w)
        masks[0, :, :4], masks[1, :, 8:] = 1, 1
        masks[2] = 1 - masks[0] - masks[1]
    contexts = [torch.randn(1, 7, 64), torch.randn(1, 5, 64)]  # different lengths: zero-padded inside
    t = torch.tensor([700.0])
    with torch.inference_mode():
        batched = shared_audio_passes(model, x, t, contexts, clip, y, audio, masks)
        single = [model(x, t, c, clip, y, audio, ref_target_masks=masks) for c in contexts]
    for b, s in zip(batched, single):
        assert b.shape == s.shape
        torch.testing.assert_close(b, s, atol=1e-5, rtol=1e-5)
