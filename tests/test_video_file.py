"""media/video_file.py: streamed H.264 + AAC mp4s, checked with PyAV; no overwrite, no leftovers."""
from __future__ import annotations

import math

import pytest
import torch

from infinitetalk.media.video_file import Mp4Writer, iter_frames, probe, reserve_output_path


def _frames(n, h=64, w=96):
    ramp = torch.linspace(0, 1, n)[:, None, None, None]
    return (torch.rand(n, h, w, 3) * 0.2 + ramp * 0.8).clamp(0, 1)


def test_h264_aac_frame_count_rate_and_duration(tmp_path):
    target = reserve_output_path(tmp_path, "clip")
    sr = 16000
    audio = torch.sin(torch.arange(sr * 3) / sr * 2 * math.pi * 440)[None, None] * 0.3  # 3 s
    with Mp4Writer(target, 25, crf=23, audio=audio, sample_rate=sr) as w:
        for _ in range(3):                                  # three windows of 17 frames
            w.write(_frames(17))
    info = probe(target)
    assert info["video"]["codec"] == "h264"
    assert info["video"]["pix_fmt"] == "yuv420p"
    assert info["video"]["frames"] == 51
    assert info["video"]["rate"] == 25
    assert info["video"]["duration"] == pytest.approx(51 / 25, abs=0.05)
    assert info["audio"]["codec"] == "aac"
    # audio trimmed to the video length (3 s given, 2.04 s of video), within one AAC frame
    assert info["audio"]["duration"] == pytest.approx(51 / 25, abs=0.07)
    frames = torch.cat([torch.from_numpy(c) for c in iter_frames(target)])
    assert frames.shape == (51, 64, 96, 3)


def test_short_audio_is_padded_and_odd_sizes_are_padded(tmp_path):
    target = tmp_path / "odd.mp4"
    audio = torch.zeros(1, 2, 8000)                          # 0.5 s stereo at 8 kHz
    with Mp4Writer(target, 25, audio=audio, sample_rate=8000) as w:
        w.write(_frames(25, h=33, w=45))
    info = probe(target)
    assert info["video"]["frames"] == 25
    assert (info["video"]["width"], info["video"]["height"]) == (46, 34)
    assert info["audio"]["channels"] == 2
    assert info["audio"]["duration"] == pytest.approx(1.0, abs=0.07)


def test_counter_never_overwrites(tmp_path):
    (tmp_path / "clip_00001.mp4").write_bytes(b"user file")
    (tmp_path / "clip_00003.mp4").write_bytes(b"another")
    target = reserve_output_path(tmp_path, "clip")
    assert target.name == "clip_00004.mp4"
    with Mp4Writer(target, 25) as w:
        w.write(_frames(3))
    assert (tmp_path / "clip_00001.mp4").read_bytes() == b"user file"
    assert probe(target)["video"]["frames"] == 3
    with pytest.raises(FileExistsError):
        Mp4Writer(tmp_path / "clip_00001.mp4", 25)


def test_failure_leaves_no_partial_file(tmp_path):
    target = reserve_output_path(tmp_path, "clip")
    with pytest.raises(ValueError, match="frame size changed"):
        with Mp4Writer(target, 25) as w:
            w.write(_frames(5))
            w.write(_frames(5, h=32))
    assert list(tmp_path.iterdir()) == []


def test_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    target = reserve_output_path(tmp_path, "clip")
    with pytest.raises(ValueError, match="no frames"):
        with Mp4Writer(target, 25):
            pass
    assert list(tmp_path.iterdir()) == []
