"""Half-written files in output/ (issue 11.6): what ``kill -9`` during writing leaves (an empty
reservation + a hidden ``.part`` of a dead process) is swept at start-up; nothing else is touched."""
from __future__ import annotations

import os
import subprocess
import sys

from infinitetalk.media import video_file as V


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_our_leftovers_only(tmp_path):
    out = tmp_path / "output"
    sub = out / "InfiniteTalk"
    sub.mkdir(parents=True)
    dead = _dead_pid()
    (sub / "video_00001.mp4").write_bytes(b"")                          # killed: reservation ...
    (sub / f".video_00001.mp4.{dead}.part").write_bytes(b"\0" * 100)   # ... and its temp file
    (out / f".clip_00002.mp4.{dead}.part").write_bytes(b"")            # temp file alone
    (sub / "video_00002.mp4").write_bytes(b"real video")               # finished: kept
    (sub / "empty_by_user.mp4").write_bytes(b"")                        # not ours: kept
    (sub / f".video_00003.mp4.{os.getpid()}.part").write_bytes(b"x")   # a live writer: kept
    (sub / "video_00003.mp4").write_bytes(b"")
    (sub / "notes.part").write_bytes(b"x")                              # not our pattern: kept
    removed = V.sweep_leftovers(out)
    assert sorted(p.name for p in removed) == sorted([f".video_00001.mp4.{dead}.part", "video_00001.mp4",
                                                      f".clip_00002.mp4.{dead}.part"])
    left = sorted(p.name for p in sub.iterdir())
    assert left == sorted(["video_00002.mp4", "empty_by_user.mp4", f".video_00003.mp4.{os.getpid()}.part",
                           "video_00003.mp4", "notes.part"])


def test_writer_refusing_its_settings_leaves_no_reservation(tmp_path):
    import pytest
    target = V.reserve_output_path(tmp_path, "v")
    with pytest.raises(ValueError):
        with V.Mp4Writer(target, 0):
            pass
    assert not target.exists()
