"""media/source_video.py: a dubbing source read at 25 fps by timestamps, with the user's notes."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from infinitetalk.media.source_video import SourceVideo


def _write(path, n: int, fps) -> None:
    """Frame k is a flat grey of value 8*k (readable back through H.264 within a few levels)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for k in range(n):
            img = np.full((32, 32, 3), 8 * k, np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)


def _source_frame(video: SourceVideo, i: int) -> int:
    return int(round(float(video[i][..., 0].mean()) * 255 / 8))


def test_25fps_source_is_read_frame_by_frame(tmp_path):
    _write(tmp_path / "a.mp4", 20, 25)
    video = SourceVideo(str(tmp_path / "a.mp4"))
    assert len(video) == 20 and video.notes(20) == []
    assert [_source_frame(video, i) for i in range(20)] == list(range(20))


def test_30fps_source_is_resampled_by_timestamps(tmp_path):
    _write(tmp_path / "b.mp4", 30, 30)                   # 1 s
    video = SourceVideo(str(tmp_path / "b.mp4"))
    assert len(video) == 25
    got = [_source_frame(video, i) for i in range(25)]
    assert got == [int(i * 30 / 25 + 1e-6) for i in range(25)]    # frame on screen at i / 25 s
    assert got[-1] == 28 and "resampled to 25 fps by timestamps" in video.notes(25)[0]


def test_going_back_reopens_and_a_short_source_is_reported(tmp_path):
    _write(tmp_path / "c.mp4", 10, 25)
    video = SourceVideo(str(tmp_path / "c.mp4"))
    assert _source_frame(video, 9) == 9 and _source_frame(video, 2) == 2
    notes = video.notes(60)
    assert len(notes) == 1 and "last frame is held for 2.00 s" in notes[0]
    with pytest.raises(IndexError):
        video[10]
