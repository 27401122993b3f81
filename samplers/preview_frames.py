"""The sampler's IMAGE output: a bounded copy of the frames, kept apart from the video stream.

The VIDEO output gets every frame (streamed into the mp4). The IMAGE output holds all frames only
while they fit under a cap (memory: ~2.5 MB per 480p frame); past the cap it falls back to the
first frame alone. The cap lives here, in its own object, so it can never reach the frames that go
to the video: the sampler writes each window to the mp4 first and only then offers it here.
"""
from __future__ import annotations

import torch


class PreviewFrames:
    """Keeps every frame offered while the total stays within ``limit`` (0: only the first frame)."""

    def __init__(self, limit: int):
        self.limit = max(0, int(limit))
        self.first: torch.Tensor | None = None
        self.total = 0                        # frames offered so far (all of them, kept or not)
        self._chunks: list[torch.Tensor] = []
        self.over_limit = False               # True once the total passed a positive limit

    def add(self, frames: torch.Tensor) -> None:
        """Offer one window's frames [n, H, W, 3]; copies what it keeps."""
        if len(frames) == 0:
            return
        if self.first is None:
            self.first = frames[:1].clone()
        self.total += len(frames)
        if self.limit == 0 or self.over_limit:
            return
        if self.total <= self.limit:
            self._chunks.append(frames.clone())
        else:                                 # drop what was kept: the output falls back to frame 0
            self.over_limit = True
            self._chunks.clear()

    @property
    def kept_all(self) -> bool:
        return self.limit > 0 and not self.over_limit

    def images(self) -> torch.Tensor:
        """[n, H, W, 3]: every frame when they fit under the limit, else the first frame only."""
        if self.first is None:
            raise ValueError("no frames were generated")
        if self.kept_all:
            return torch.cat(self._chunks)
        return self.first

    def note(self) -> str:
        """One line for the log / the node's info text, or '' when every frame is in the output."""
        if self.kept_all:
            return ""
        if self.limit == 0:
            return ("IMAGE output: the first frame only (image_frames_limit = 0); the VIDEO output "
                    f"has all {self.total} frames")
        return (f"IMAGE output: the first frame only - {self.total} frames is more than "
                f"image_frames_limit ({self.limit}); the VIDEO output has all {self.total} frames")
