"""media/soundtrack.py: the user's audio as it goes into the mp4 (rate, channels, no gain)."""
from __future__ import annotations

import numpy as np
import torch

from infinitetalk.media.soundtrack import user_soundtrack


def _clip(channels: int, n: int, value: float) -> torch.Tensor:
    return torch.full((1, channels, n), value)


def test_one_clip_is_returned_as_given():
    x = torch.randn(1, 2, 4800) * 0.1
    out, rate = user_soundtrack([x], [48000])
    assert rate == 48000 and torch.equal(out, x[0])


def test_para_mixes_per_speaker_tracks():
    a = torch.tensor([[[0.1, 0.1, 0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0, 0.2, 0.2, 0.2]]])
    out, _ = user_soundtrack([a, b], [8000, 8000], "para")
    np.testing.assert_allclose(out.numpy(), [[0.1, 0.1, 0.2, 0.2, 0.2]], atol=1e-7)


def test_add_plays_one_after_the_other():
    out, _ = user_soundtrack([_clip(1, 3, 0.1), _clip(1, 2, 0.2)], [8000, 8000], "add")
    np.testing.assert_allclose(out.numpy(), [[0.1, 0.1, 0.1, 0.2, 0.2]], atol=1e-7)


def test_mono_next_to_stereo_plays_on_both_channels_at_the_higher_rate():
    out, rate = user_soundtrack([_clip(1, 1600, 0.1), _clip(2, 4410, 0.2)], [16000, 44100], "add")
    assert rate == 44100 and out.shape == (2, 4410 + 4410)
    np.testing.assert_allclose(out[:, 1000:3000].numpy(), 0.1, atol=2e-3)
    np.testing.assert_allclose(out[:, 4410:].numpy(), 0.2, atol=1e-7)
