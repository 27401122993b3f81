"""A video to dub, read at the model's 25 fps by timestamps, one frame in memory at a time.

Output frame ``i`` (time ``i / 25`` s) is the source frame on screen at that time: the last one
whose presentation time is not later. A 30 fps source thus skips a frame now and then and a 24 fps
source repeats one, so the reference stays in sync with the speech however the file was recorded
(reading frame by frame would drift: 30 fps played at 25 is 20 % slow). Timestamps come from the
packets (demuxed, not decoded), so opening a long video costs no frame decoding.
"""
from __future__ import annotations

import bisect
import math
from fractions import Fraction

import torch

from .speech_features import FPS  # the models' frame rate: one video frame per speech feature
from .video_file import open_source


def _timestamps(source) -> tuple[list[float], float, Fraction | None]:
    """(sorted presentation times in s, end time in s, the stream's average rate)."""
    with open_source(source) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        times, end = [], 0.0
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            t = float(packet.pts * packet.time_base)
            times.append(t)
            step = float(packet.duration * packet.time_base) if packet.duration else (
                1.0 / float(rate) if rate else 0.0)
            end = max(end, t + step)
    times.sort()
    if times and times[0] != 0.0:                         # a start offset: count from the first frame
        first = times[0]
        times = [t - first for t in times]
        end -= first
    return times, end, rate


class SourceVideo:
    """``len`` = frames at 25 fps; ``[i]`` -> float [H, W, 3] 0..1; see the module docstring."""

    def __init__(self, source):
        self.source = source
        times, self.seconds, self.rate = _timestamps(source)
        if not times:
            raise ValueError("the video has no frames")
        self._times = times
        self.count = max(1, math.floor(self.seconds * FPS + 1e-6))
        self._container = None
        self._frames = None
        self._index = -1                                 # source index of self._frame
        self._frame = None

    def __len__(self) -> int:
        return self.count

    def source_index(self, index: int) -> int:
        """The source frame (in presentation order) shown at output frame ``index``."""
        return max(0, bisect.bisect_right(self._times, index / FPS + 1e-6) - 1)

    def _open(self) -> None:
        self.close()
        self._container = open_source(self.source)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)
        self._index, self._frame = -1, None

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(index)
        want = self.source_index(index)
        if self._frames is None or want < self._index:
            self._open()
        while self._index < want:
            try:
                self._frame = next(self._frames)
            except StopIteration:                        # fewer decodable frames than packets
                break
            self._index += 1
        return torch.from_numpy(self._frame.to_ndarray(format="rgb24")).float() / 255.0

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    def __del__(self):
        self.close()

    def notes(self, speech_frames: int) -> list[str]:
        """Warnings for the user: not 25 fps (how it is read), shorter than the speech."""
        out = []
        if self.rate is not None and abs(float(self.rate) - FPS) > 0.01:
            out.append(f"the source video is {float(self.rate):.3g} fps: it is resampled to {FPS} fps "
                       "by timestamps (frames repeated or skipped to stay in time), not read frame "
                       "by frame")
        if speech_frames > self.count:
            held = (speech_frames - self.count) / FPS
            out.append(f"the source video is {self.count / FPS:.2f} s but the speech is "
                       f"{speech_frames / FPS:.2f} s: its last frame is held for {held:.2f} s")
        return out
