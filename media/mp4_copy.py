"""An mp4 copied stream by stream (no re-encode), and its soundtrack read without decoding frames.

Video Combine saves the sampler's VIDEO with ``copy_mp4``: the H.264 packets the sampler encoded go
into the output file untouched (one encode per video, no generation loss, constant memory), with the
sampler's AAC soundtrack copied too, or a given AUDIO encoded in its place (trimmed or padded with
silence to the video's length). ``read_soundtrack`` decodes only the audio stream of a file.

The output appears atomically, as with ``Mp4Writer``: a hidden temp file in the same folder is
moved over the (empty) reserved name only when complete; any failure removes both.
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .video_file import _prepare_audio, open_source

log = logging.getLogger(__name__)


def video_format(source) -> dict:
    """codec, pix_fmt and average rate of the first video stream (read from the header only)."""
    with open_source(source) as container:
        stream = container.streams.video[0]
        return {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "rate": stream.average_rate}


def read_soundtrack(source) -> tuple[np.ndarray, int] | None:
    """The first audio stream as float32 [C, S] and its rate (None when there is none).

    Video packets are read past but never decoded, so this costs no memory per frame."""
    with open_source(source) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = None
        chunks = []
        for frame in container.decode(stream):
            if resampler is None:
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name,
                                              rate=frame.sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        if not chunks:
            return None
        return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(stream.rate)


class _AudioEncoder:
    """AAC for a replacement soundtrack, written up to a time as the video packets go by."""

    def __init__(self, container, audio, rate: int):
        self.audio, self.rate = _prepare_audio(audio, rate)      # [C<=2, S] at a rate AAC takes
        self.pos, self.container = 0, container
        layout = "mono" if self.audio.shape[0] == 1 else "stereo"
        self.stream = container.add_stream("aac", rate=rate, layout=layout)

    def until(self, seconds: float, final: bool = False) -> None:
        end = int(round(seconds * self.rate))
        if end <= self.pos:
            return
        chunk = self.audio[:, self.pos:end]
        if final and chunk.shape[1] < end - self.pos:
            chunk = np.pad(chunk, ((0, 0), (0, end - self.pos - chunk.shape[1])))
        if chunk.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                           layout=self.stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self.pos, Fraction(1, self.rate)
        self.pos += chunk.shape[1]
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def flush(self, seconds: float) -> None:
        self.until(seconds, final=True)
        for packet in self.stream.encode(None):
            self.container.mux(packet)


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished temp file into place, never replacing a user's file."""
    if target.exists():
        if target.stat().st_size > 0:
            raise FileExistsError(f"{target} appeared while writing; not overwriting it")
        os.replace(tmp, target)                    # our own empty reservation
    else:
        os.link(tmp, target)                       # fails if the name was taken meanwhile
        tmp.unlink()


def copy_mp4(source, target: str | os.PathLike, audio=None,
             sample_rate: int | None = None) -> Path:
    """Copy ``source``'s video stream (and its soundtrack, or ``audio`` instead) into ``target``."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open_source(source) as inp, av.open(str(tmp), mode="w", format="mp4") as out:
            vin = inp.streams.video[0]
            vout = out.add_stream_from_template(vin)
            ain = inp.streams.audio[0] if audio is None and inp.streams.audio else None
            aout = out.add_stream_from_template(ain) if ain is not None else None
            encoder = _AudioEncoder(out, audio, int(sample_rate)) if audio is not None else None
            end = 0.0
            for packet in inp.demux([s for s in (vin, ain) if s is not None]):
                if packet.dts is None:                 # the demuxer's end-of-stream marker
                    continue
                is_video = packet.stream is vin
                if is_video and packet.pts is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
                packet.stream = vout if is_video else aout
                out.mux(packet)
                if encoder is not None and is_video:
                    encoder.until(end)
            if encoder is not None:
                encoder.flush(end)
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if target.exists() and target.stat().st_size == 0:
            target.unlink()
        raise
    log.info("mp4: %s copied stream by stream into %s (no re-encode)", source, target.name)
    return target
