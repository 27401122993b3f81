"""media/mp4_copy.py: an mp4 copied without re-encoding; its soundtrack read without frames."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from infinitetalk.media.mp4_copy import copy_mp4, read_soundtrack, video_format
from infinitetalk.media.video_file import Mp4Writer, probe, reserve_output_path

RATE = 44100


def _stereo(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.stack([0.3 * np.sin(2 * np.pi * 330 * t), 0.2 * np.sin(2 * np.pi * 550 * t)]).astype(np.float32)


def _source(tmp_path, seconds: float = 2.0):
    path = tmp_path / "src.mp4"
    frames = (torch.rand(int(seconds * 25), 48, 64, 3) * 0.2 + 0.4)
    with Mp4Writer(path, 25, audio=_stereo(seconds), sample_rate=RATE) as w:
        for i in range(0, len(frames), 17):
            w.write(frames[i:i + 17])
    return path


def _video_packets(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def test_copy_keeps_every_video_packet_and_the_soundtrack(tmp_path):
    src = _source(tmp_path)
    target = reserve_output_path(tmp_path / "out", "video")
    copy_mp4(str(src), target)
    assert _video_packets(target) == _video_packets(src)          # bit-identical: no re-encode
    info = probe(target)
    assert info["video"]["frames"] == 50 and info["audio"]["rate"] == RATE
    assert info["audio"]["channels"] == 2
    a, _ = read_soundtrack(str(src))
    b, rate = read_soundtrack(str(target))
    assert rate == RATE and np.array_equal(a, b)
    assert sorted(p.name for p in target.parent.iterdir()) == ["video_00001.mp4"]   # no temp file


def test_read_soundtrack_is_the_input_sample_aligned(tmp_path):
    src = _source(tmp_path)
    sound, rate = read_soundtrack(str(src))
    want = _stereo(2.0)
    assert rate == RATE and sound.shape[0] == 2
    n = min(sound.shape[1], want.shape[1]) - 2048
    err = np.abs(sound[:, 1024:n] - want[:, 1024:n]).max()
    assert err < 0.05, err                                         # AAC, no offset


def test_given_audio_replaces_the_soundtrack_at_the_video_length(tmp_path):
    src = _source(tmp_path)
    target = tmp_path / "replaced.mp4"
    mono = np.full((1, 16000 * 5), 0.1, np.float32)               # 5 s at 16 kHz: trimmed to 2 s
    copy_mp4(str(src), target, audio=mono, sample_rate=16000)
    assert _video_packets(target) == _video_packets(src)
    info = probe(target)
    assert info["audio"]["rate"] == 16000 and info["audio"]["channels"] == 1
    assert info["audio"]["duration"] == pytest.approx(2.0, abs=0.07)
    assert video_format(str(target))["codec"] == "h264"


def test_a_failed_copy_leaves_nothing(tmp_path):
    target = reserve_output_path(tmp_path / "out", "video")
    (tmp_path / "broken.mp4").write_bytes(b"not an mp4")
    with pytest.raises(av.error.FFmpegError):
        copy_mp4(str(tmp_path / "broken.mp4"), target)
    assert list(target.parent.iterdir()) == []
