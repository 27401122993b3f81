"""Video Combine keeps the server's memory flat however long the video: 10 s vs 60 s of video.

A loaded video (LoadVideo -> Video Combine) is the path that decodes frames: it is re-encoded chunk
by chunk and its soundtrack is read from the file's audio stream (frames never decoded for it).
Decoding the whole clip, as ``VIDEO.get_components()`` does, would cost ~0.7 MB per frame here
(320x192 float32): ~870 MB more for the 60 s clip. The server's peak RSS is reset before each run
(/proc/PID/clear_refs) and read after it (VmHWM).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from infinitetalk.media.mp4_copy import read_soundtrack
from infinitetalk.media.video_file import Mp4Writer, probe

pytestmark = pytest.mark.host
log = logging.getLogger(__name__)

FPS, RATE, SIZE = 25, 48000, (192, 320)
GROWTH_LIMIT_MB = 300


def _clip(path: Path, seconds: int) -> Path:
    """A moving gradient with a stereo tone, cheap to encode (ultrafast)."""
    t = np.arange(seconds * RATE) / RATE
    audio = np.stack([0.2 * np.sin(2 * np.pi * 220 * t), 0.1 * np.sin(2 * np.pi * 330 * t)])
    ys, xs = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    with Mp4Writer(path, FPS, crf=30, audio=audio.astype(np.float32), sample_rate=RATE,
                   preset="ultrafast") as w:
        for start in range(0, seconds * FPS, 25):
            k = np.arange(start, start + 25)[:, None, None]
            frame = ((xs[None] + 3 * k) % 256).astype(np.uint8)
            w.write(np.stack([frame, np.broadcast_to(ys, frame.shape).astype(np.uint8),
                              255 - frame], axis=-1))
    return path


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _graph(name: str, prefix: str) -> dict:
    return {"1": {"class_type": "LoadVideo", "inputs": {"file": name}},
            "2": {"class_type": "InfiniteTalkVideoCombine",
                  "inputs": {"video": ["1", 0], "frame_rate": 25.0, "quality": 19,
                             "filename_prefix": prefix}}}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_the_video_length(host):
    pid = host.proc.pid
    peaks = {}
    for seconds in (10, 60):
        _clip(host.input_dir / f"memory_{seconds}s.mp4", seconds)
    host.run(_graph("memory_10s.mp4", "memory/warmup"), timeout=600)    # imports, encoder set-up
    for seconds in (10, 60):
        name = f"memory_{seconds}s.mp4"
        _reset_peak(pid)
        outputs = host.run(_graph(name, f"memory/clip_{seconds}"), timeout=900)
        peaks[seconds] = _peak_mb(pid)
        saved = outputs["2"]["images"][0]
        out = host.output_dir / saved["subfolder"] / saved["filename"]
        info = probe(out)
        assert info["video"]["frames"] == seconds * FPS
        assert info["audio"]["rate"] == RATE and info["audio"]["channels"] == 2
        sound, _ = read_soundtrack(str(out))
        assert abs(sound.shape[1] - seconds * RATE) <= 2048
    log.info("server peak RSS through Video Combine (MiB): %s", {k: round(v) for k, v in peaks.items()})
    assert peaks[60] - peaks[10] < GROWTH_LIMIT_MB, peaks
