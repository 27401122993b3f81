"""The soundtrack that goes into the mp4: the user's own audio, at its own sample rate and channels.

The model listens to a different signal (mono, 16 kHz, loudness-normalised per speaker: see
``speech.py``); that one is for the wav2vec2 features only and never reaches the file. Here:

* one speaker: the clip as given;
* two speakers, ``para`` (per-speaker tracks of one conversation, each silent while the other
  talks): the tracks mixed (summed; the shorter one padded with silence);
* two speakers, ``add`` (two monologues, one after the other): speaker 1's clip, then speaker 2's.

Two clips with different rates are brought to the higher rate (soxr HQ); a mono clip next to a
stereo one is played on both channels. No gain is applied anywhere.
"""
from __future__ import annotations

import numpy as np
import torch


def as_channels(waveform) -> np.ndarray:
    """[S], [C, S] or the host's [1, C, S] -> float32 [C, S]."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"audio: expected one clip, got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio: expected [channels, samples], got shape {x.shape}")
    return x


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    import soxr

    y = soxr.resample(np.ascontiguousarray(x.T), rate, target, quality="HQ")   # soxr: [S, C]
    return np.ascontiguousarray(np.asarray(y, dtype=np.float32).reshape(-1, x.shape[0]).T)


def _widen(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[0] == channels:
        return x
    return np.resize(x, (channels, x.shape[1])) if x.shape[0] == 1 else x[np.arange(channels) % x.shape[0]]


def user_soundtrack(waveforms: list, sample_rates: list[int], mode: str = "para"
                    ) -> tuple[torch.Tensor, int]:
    """One or two clips -> (float32 [C, S], sample rate); see the module docstring."""
    clips = [as_channels(w) for w in waveforms]
    rate = max(int(r) for r in sample_rates)
    clips = [_resample(c, int(r), rate) for c, r in zip(clips, sample_rates)]
    channels = max(c.shape[0] for c in clips)
    clips = [_widen(c, channels) for c in clips]
    if len(clips) == 1:
        out = clips[0]
    elif mode == "add":
        out = np.concatenate(clips, axis=1)
    else:
        out = np.zeros((channels, max(c.shape[1] for c in clips)), np.float32)
        for c in clips:
            out[:, :c.shape[1]] += c
    return torch.from_numpy(np.ascontiguousarray(out)), rate
