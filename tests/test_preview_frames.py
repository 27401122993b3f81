"""samplers/preview_frames.py: the IMAGE output's cap never breaks the stream of windows."""
from __future__ import annotations

import pytest
import torch

from infinitetalk.samplers.preview_frames import PreviewFrames


def _window(n: int, start: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None, None, None].expand(n, 2, 3, 3)


def _feed(keeper: PreviewFrames, sizes) -> None:
    start = 0
    for n in sizes:
        keeper.add(_window(n, start))
        start += n


def test_frames_under_the_limit_are_all_kept():
    keeper = PreviewFrames(250)
    _feed(keeper, [81, 72, 72])                          # 225 frames: three windows
    out = keeper.images()
    assert out.shape[0] == 225 and torch.equal(out[:, 0, 0, 0], torch.arange(225.0))
    assert keeper.note() == ""


@pytest.mark.parametrize("limit", [250, 81, 1])
def test_windows_past_the_limit_keep_coming(limit):
    """The shipped default (250) with 14 windows of speech (~40 s): no crash, first frame out."""
    keeper = PreviewFrames(limit)
    _feed(keeper, [81] + [72] * 13)                      # 1017 frames, far past the limit
    assert keeper.total == 1017 and keeper.over_limit
    out = keeper.images()
    assert out.shape[0] == 1 and out[0, 0, 0, 0] == 0
    assert f"image_frames_limit ({limit})" in keeper.note() and "1017" in keeper.note()


def test_limit_zero_keeps_the_first_frame_without_claiming_an_overflow():
    keeper = PreviewFrames(0)
    _feed(keeper, [81, 72])
    assert keeper.images().shape[0] == 1 and not keeper.over_limit
    assert "more than" not in keeper.note() and "= 0" in keeper.note()


def test_exactly_the_limit_is_kept():
    keeper = PreviewFrames(153)
    _feed(keeper, [81, 72])
    assert keeper.images().shape[0] == 153


def test_kept_frames_are_copies():
    keeper = PreviewFrames(10)
    frames = _window(4, 0).clone()
    keeper.add(frames)
    frames.fill_(9)
    assert keeper.images()[0, 0, 0, 0] == 0


def test_nothing_offered_is_an_error():
    with pytest.raises(ValueError, match="no frames"):
        PreviewFrames(5).images()
