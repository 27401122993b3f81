"""MP4 files written and read frame by frame with PyAV (H.264 yuv420p + AAC), no host imports.

Frames arrive in chunks (one sampling window at a time) and go straight to the encoder, so memory
stays flat however long the video is.  The soundtrack is given up front and interleaved with the
video as it is written; at close it is trimmed or padded with silence to the video's length.

Finished files appear atomically: ``reserve_output_path`` picks the next free counter name and
claims it with ``O_EXCL``; ``Mp4Writer`` writes a hidden temp file in the same folder and, only on
success, moves it over the (empty) reservation.  A failure removes the temp file and the
reservation, so no partial file is ever left, and nothing the user made is ever overwritten.
A process killed mid-write (``kill -9``) cannot clean up: ``sweep_leftovers`` (run when the pack
loads) removes the ``.NAME.PID.part`` files of dead processes and the empty reservation beside each.
"""
from __future__ import annotations

import logging
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch

log = logging.getLogger(__name__)

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def to_uint8_frames(frames) -> np.ndarray:
    """IMAGE-style float [N, H, W, 3] in 0..1 (torch or numpy) or uint8 -> uint8 [N, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach()
        if frames.dtype != torch.uint8:
            frames = (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0, 1) * 255.0).round().astype(np.uint8)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"expected frames [N, H, W, 3], got shape {tuple(frames.shape)}")
    return np.ascontiguousarray(frames[..., :3])


def reserve_output_path(folder: str | os.PathLike, stem: str, ext: str = ".mp4") -> Path:
    """Claim ``folder/stem_00001.mp4`` (the next free counter) by creating it empty with O_EXCL."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d+)" + re.escape(ext) + r"$")
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    counter = max(taken, default=0) + 1
    while True:
        path = folder / f"{stem}_{counter:05d}{ext}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            counter += 1
            continue
        os.close(fd)
        return path


class Mp4Writer:
    """Streams frames (and a soundtrack) into an MP4; see the module docstring.

    ``target`` must not exist, or be an empty file reserved by ``reserve_output_path``.  Use as a
    context manager: a clean exit publishes the file, an exception removes every trace.
    """

    def __init__(self, target: str | os.PathLike, frame_rate: float | Fraction, crf: int = 19,
                 audio: torch.Tensor | np.ndarray | None = None, sample_rate: int | None = None,
                 preset: str = "medium"):
        self.target = Path(target)
        if self.target.exists() and self.target.stat().st_size > 0:
            raise FileExistsError(f"refusing to overwrite {self.target}")
        self.frame_rate = Fraction(frame_rate).limit_denominator(1001)
        if self.frame_rate <= 0:
            _drop_empty(self.target)                   # our reservation: nothing half-made is left
            raise ValueError(f"frame rate must be positive, got {frame_rate}")
        self.crf = int(crf)
        self.preset = preset
        self.tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}.part")
        self.frames_written = 0
        self._audio, self._rate = _prepare_audio(audio, sample_rate)
        self._audio_pos = 0
        self._container = None
        self._video = None
        self._astream = None
        self._size = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Mp4Writer":
        self._container = av.open(str(self.tmp), mode="w", format="mp4")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> Path:
        """Flush, finish the soundtrack at the video's length and publish the file."""
        try:
            if self._video is None:
                raise ValueError("no frames were written; a video needs at least one frame")
            self._write_audio_until(self.frames_written, final=True)
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._astream is not None:
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            self._container = None
            self._publish()
        except BaseException:
            self.abort()
            raise
        return self.target

    def _publish(self) -> None:
        """Move the finished temp file into place without ever replacing a user's file."""
        if self.target.exists():
            if self.target.stat().st_size > 0:
                raise FileExistsError(f"{self.target} appeared while writing; not overwriting it")
            os.replace(self.tmp, self.target)          # our own empty reservation
        else:
            os.link(self.tmp, self.target)             # fails if the name was taken meanwhile
            self.tmp.unlink()

    def abort(self) -> None:
        """Drop the partial file (and an empty reservation of the target)."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError, ValueError) as err:
                log.debug("closing a failed mp4 container: %s", err)
            self._container = None
        self.tmp.unlink(missing_ok=True)
        if self.target.exists() and self.target.stat().st_size == 0:
            self.target.unlink()

    # ---------------------------------------------------------------- writing
    def write(self, frames) -> None:
        """Append frames: IMAGE float [N, H, W, 3] 0..1 or uint8."""
        frames = to_uint8_frames(frames)
        if self._video is None:
            self._open_streams(frames.shape[2], frames.shape[1])
        if (frames.shape[2], frames.shape[1]) != self._size:
            raise ValueError(f"frame size changed from {self._size[0]}x{self._size[1]} to "
                             f"{frames.shape[2]}x{frames.shape[1]} in the middle of a video")
        frames = _pad_even(frames)
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in self._video.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1
        self._write_audio_until(self.frames_written)

    def _open_streams(self, width: int, height: int) -> None:
        self._size = (width, height)
        stream = self._container.add_stream("libx264", rate=self.frame_rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._video = stream
        log.info("mp4: H.264 encode (crf %d) into %s", self.crf, self.target.name)
        if width % 2 or height % 2:
            log.info("H.264 yuv420p needs even sizes: padding %dx%d by one edge pixel", width, height)
        if self._audio is not None:
            layout = "mono" if self._audio.shape[0] == 1 else "stereo"
            self._astream = self._container.add_stream("aac", rate=self._rate, layout=layout)

    def _write_audio_until(self, n_frames: int, final: bool = False) -> None:
        if self._astream is None:
            return
        end = int(round(n_frames / self.frame_rate * self._rate))
        if end <= self._audio_pos:
            return
        chunk = self._audio[:, self._audio_pos:end]
        if final and chunk.shape[1] < end - self._audio_pos:  # pad the tail with silence
            pad = np.zeros((chunk.shape[0], end - self._audio_pos - chunk.shape[1]), np.float32)
            chunk = np.concatenate([chunk, pad], axis=1)
        if chunk.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                           layout=self._astream.layout.name)
        frame.sample_rate = self._rate
        frame.pts = self._audio_pos
        frame.time_base = Fraction(1, self._rate)
        self._audio_pos += chunk.shape[1]
        for packet in self._astream.encode(frame):
            self._container.mux(packet)


def _drop_empty(path: Path) -> None:
    if path.exists() and path.stat().st_size == 0:
        path.unlink()


_PART = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.part$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True                                   # someone else's live process: leave it
    return True


def sweep_leftovers(folder: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """Remove what killed writers left under ``folder``: each ``.NAME.PID.part`` whose process is gone,
    and ``NAME`` beside it when that is still the empty reservation. Nothing else is touched (links
    are not followed; ``max_depth`` folders deep at most). Returns the removed paths."""
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirs, files in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= max_depth:
            dirs[:] = []
        for name in files:
            m = _PART.match(name)
            if m is None or _alive(int(m.group("pid"))):
                continue
            part, target = Path(dirpath) / name, Path(dirpath) / m.group("name")
            try:
                part.unlink()
                removed.append(part)
                if target.is_file() and not target.is_symlink() and target.stat().st_size == 0:
                    target.unlink()
                    removed.append(target)
            except OSError as err:
                log.warning("could not remove the leftover %s: %s", part, err)
    if removed:
        log.info("removed %d leftovers of interrupted video writes under %s", len(removed), root)
    return removed


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _prepare_audio(audio, sample_rate) -> tuple[np.ndarray | None, int | None]:
    """[C, S] or [B, C, S] float audio -> float32 [C<=2, S] at a rate AAC accepts."""
    if audio is None:
        return None, None
    if sample_rate is None:
        raise ValueError("a soundtrack needs its sample_rate")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 3:
        audio = audio[0]
    if audio.ndim == 1:
        audio = audio[None]
    audio = audio[:2]
    rate = int(sample_rate)
    if rate not in AAC_RATES:
        target = min(AAC_RATES, key=lambda r: (r < rate, abs(r - rate)))
        n = int(round(audio.shape[1] * target / rate))
        src = np.arange(audio.shape[1]) / rate
        dst = np.arange(n) / target
        audio = np.stack([np.interp(dst, src, ch) for ch in audio]).astype(np.float32)
        log.info("soundtrack resampled from %d Hz to %d Hz for AAC", rate, target)
        rate = target
    return np.clip(audio, -1.0, 1.0), rate


# ------------------------------------------------------------------------- reading
def open_source(source):
    """A VIDEO's file for reading: a path (str or Path) or a file object, rewound to its start."""
    if hasattr(source, "seek"):
        source.seek(0)
    return av.open(str(source) if isinstance(source, Path) else source, mode="r")


def iter_frames(source, chunk: int = 16) -> Iterator[np.ndarray]:
    """Decode a video file (path or file-like) chunk by chunk: uint8 [n, H, W, 3] arrays."""
    with open_source(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        buf = []
        for frame in container.decode(stream):
            buf.append(frame.to_ndarray(format="rgb24"))
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)


def probe(path: str | os.PathLike) -> dict:
    """Streams of an mp4, for tests and logs: codec names, frame count, rate and durations."""
    info = {"video": None, "audio": None}
    with av.open(str(path)) as container:
        for stream in container.streams:
            if stream.type == "video":
                frames = sum(1 for _ in container.decode(stream))
                container.seek(0)
                info["video"] = {"codec": stream.codec_context.name, "frames": frames,
                                 "rate": stream.average_rate, "width": stream.width,
                                 "height": stream.height, "pix_fmt": stream.codec_context.pix_fmt,
                                 "duration": float(stream.duration * stream.time_base)
                                 if stream.duration else None}
            elif stream.type == "audio":
                info["audio"] = {"codec": stream.codec_context.name, "rate": stream.rate,
                                 "channels": stream.codec_context.channels,
                                 "duration": float(stream.duration * stream.time_base)
                                 if stream.duration else None}
    return info

