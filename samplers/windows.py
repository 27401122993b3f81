"""The window plan as data, computed up front (pure; no tensors).

Numerics follow the official InfiniteTalk streaming loop:
* window k covers audio/video frames ``[step*k, step*k + frame_num)`` with ``step = frame_num - motion_frames``
  (81 and 9 -> 72; MultiTalk uses 25 motion frames -> 56);
* window 0 emits all its frames, later windows drop their first ``motion_frames`` (the context they were given);
* the loop stops at the first window k >= 1 whose end reaches the audio (or ``max_frames``), so audio of
  82..153 frames gives 2 windows; the output is trimmed to ``min(audio, max_frames)`` frames;
* the last window's audio is extended by appending the time-reversed last ``end - L + 3`` frames
  (``padded_length = end + 3``) when its end reaches the audio.

The official code requires MORE than ``frame_num`` (81) audio frames (3.24 s at 25 fps). We also accept shorter
audio: one window, its audio mirrored at the end the same way (see ``audio.mirror_index``), output trimmed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FRAME_NUM = 81
MOTION_FRAMES = {"infinitetalk": 9, "multitalk": 25}


@dataclass(frozen=True)
class Window:
    index: int
    start: int            # first audio/video frame of the window
    end: int              # one past its last frame (start + frame_num)
    audio_length: int     # audio frames visible to this window: L, or end + 3 once the end is padded
    context_frames: int   # generated frames given as context (0 for window 0)
    emit_offset: int      # first decoded frame of this window that is new output
    emit_count: int       # new frames emitted (after the final trim)
    reference_frame: int | None  # source frame for the i2v keyframe/CLIP (None: MultiTalk takes the last output)

    @property
    def emit_start(self) -> int:
        """Output frame index of the first emitted frame."""
        return self.start + self.emit_offset


@dataclass(frozen=True)
class WindowPlan:
    windows: tuple[Window, ...]
    audio_frames: int
    total_frames: int
    frame_num: int
    motion_frames: int
    family: str

    def __len__(self) -> int:
        return len(self.windows)


def _window_count(limit: int, frame_num: int, step: int) -> int:
    if limit <= frame_num:
        return 1
    return 1 + max(1, math.ceil((limit - frame_num) / step))


def plan_windows(audio_frames: int, *, family: str = "infinitetalk", frame_num: int = FRAME_NUM,
                 motion_frames: int | None = None, max_frames: int | None = None,
                 source_frames: int | None = None) -> WindowPlan:
    """Plan every window of a generation.

    audio_frames: length of the audio embedding (25 fps video frames). max_frames: optional cap on the output.
    source_frames: frames of the source video (video-to-video); None for a still image.
    """
    if family not in MOTION_FRAMES:
        raise ValueError(f"plan_windows: family must be one of {sorted(MOTION_FRAMES)}, got {family!r}")
    motion = MOTION_FRAMES[family] if motion_frames is None else motion_frames
    if frame_num < 5 or (frame_num - 1) % 4:
        raise ValueError(f"plan_windows: frame_num must be 4n+1 (e.g. 81), got {frame_num}")
    if not 1 <= motion <= frame_num or (motion - 1) % 4:
        raise ValueError(f"plan_windows: motion_frames must be 4n+1 and <= frame_num, got {motion}")
    if audio_frames < 1:
        raise ValueError(f"plan_windows: the audio has {audio_frames} frames; need at least 1 (25 fps)")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"plan_windows: max_frames must be >= 1, got {max_frames}")
    limit = audio_frames if max_frames is None else min(audio_frames, max_frames)
    step = frame_num - motion
    if limit > frame_num and step < 1:
        raise ValueError(f"plan_windows: {limit} frames need several windows, but motion_frames ({motion}) "
                         f"leaves no new frames per window of {frame_num}; use fewer motion frames")
    count = _window_count(limit, frame_num, step)
    windows = []
    for k in range(count):
        start = k * step
        end = start + frame_num
        last = k == count - 1
        padded = last and end >= audio_frames
        emit_offset = 0 if k == 0 else motion
        emit_count = max(0, min(end, limit) - (start + emit_offset))
        if family == "multitalk" and k > 0:
            ref = None
        elif source_frames is None:
            ref = 0
        else:
            ref = min(start, source_frames - 1)
        windows.append(Window(index=k, start=start, end=end,
                              audio_length=end + 3 if padded else audio_frames,
                              context_frames=0 if k == 0 else motion, emit_offset=emit_offset,
                              emit_count=emit_count, reference_frame=ref))
    return WindowPlan(windows=tuple(windows), audio_frames=audio_frames, total_frames=limit,
                      frame_num=frame_num, motion_frames=motion, family=family)


def latent_frames(frames: int) -> int:
    """Latent frames of ``frames`` video frames (causal VAE: 1 + (n - 1) // 4)."""
    return 1 + (frames - 1) // 4
