"""Per-window audio: 5-frame wav2vec windows around each video frame, with the official end padding.

Full per-speaker embeddings ``[N, L, 12, 768]`` (25 fps) -> window ``[N, frame_num, 5, 12, 768]``: video frame j
takes audio frames j-2..j+2 clamped to ``[0, available - 1]``. ``available`` is L, or ``end + 3`` for the last
window, whose audio the official code extends by appending the time-reversed last frames. We never build the
extended tensor: indices past L are mapped back into the embedding (``mirror_index``), so memory does not grow.
"""
from __future__ import annotations

import torch

WINDOW_OFFSETS = (-2, -1, 0, 1, 2)


def audio_indices(start: int, length: int, available: int) -> torch.Tensor:
    """[length, 5] int64 indices of frames start..start+length-1, offsets -2..+2, clamped to [0, available-1]."""
    if available < 1:
        raise ValueError("audio: no audio frames to window")
    centres = torch.arange(start, start + length, dtype=torch.int64)[:, None]
    offsets = torch.tensor(WINDOW_OFFSETS, dtype=torch.int64)[None]
    return (centres + offsets).clamp(0, available - 1)


def mirror_index(index: torch.Tensor, length: int) -> torch.Tensor:
    """Map indices of the end-extended audio back into ``[0, length)``.

    Index L + m is frame L - 1 - m (the reversed tail, as the official padding); for audio shorter than the
    extension (our short-audio extension only) it keeps reflecting back and forth.
    """
    period = 2 * length
    p = index % period
    return torch.where(p < length, p, period - 1 - p)


def frame_audio_windows(embeds: torch.Tensor, start: int, length: int, available: int) -> torch.Tensor:
    """[N, L, 12, C] -> [N, length, 5, 12, C] for the window starting at video frame ``start``."""
    if embeds.dim() != 4:
        raise ValueError(f"frame_audio_windows: expected audio embeddings [speakers, frames, 12, C], got "
                         f"{tuple(embeds.shape)}")
    idx = mirror_index(audio_indices(start, length, available), embeds.shape[1])
    return embeds[:, idx]
