"""Video Combine's export: a VIDEO or frames (+ soundtrack) -> a new mp4 in the output folder.

Memory stays flat however long the video is: the sampler's own file is copied stream by stream (its
H.264 packets untouched, so each video is encoded exactly once), other videos are decoded chunk by
chunk, and a VIDEO's soundtrack is read from its file's audio stream without decoding frames.
Nothing is ever overwritten: the output takes the next free counter name, reserved only once every
input is checked. Refusals are ``errors.InputError`` naming the input.
"""
from __future__ import annotations

import os
from fractions import Fraction

from ..errors import InputError
from .mp4_copy import copy_mp4, read_soundtrack, video_format
from .video_file import Mp4Writer, iter_frames, reserve_output_path

MIN_FPS, MAX_FPS = 1.0, 240.0      # below 1 fps a clip of a few frames becomes hours of video
MAX_PREFIX = 200                   # characters; file systems allow 255 for the whole name


def _stream_source(video):
    """The VIDEO's file (path or file object), or None for an in-memory VIDEO."""
    if video is None:
        return None
    try:
        return video.get_stream_source()
    except (AttributeError, NotImplementedError):
        return None


def _frames(video, images, source, chunk: int = 16):
    """Chunks of frames from a VIDEO (decoded from its file as it goes) or an IMAGE batch."""
    if source is not None:
        yield from iter_frames(source, chunk)
        return
    if video is not None:
        images = video.get_components().images
    for i in range(0, images.shape[0], chunk):
        yield images[i:i + chunk]


def _soundtrack(video, audio, source):
    """(waveform, rate) of the AUDIO input, else of the VIDEO's own audio stream, else (None, None)."""
    if audio is not None:
        return audio["waveform"], int(audio["sample_rate"])
    if source is not None:
        found = read_soundtrack(source)
        return found if found is not None else (None, None)
    if video is not None:
        try:
            sound = video.get_components().audio        # an in-memory VIDEO: already decoded
        except (AttributeError, ValueError, RuntimeError):
            sound = None
        if sound is not None:
            return sound["waveform"], int(sound["sample_rate"])
    return None, None


def _copyable(video, sampler_video: bool, source, frame_rate: float, quality: int) -> bool:
    """The sampler's own file, asked for at its rate and quality: its streams can be copied."""
    if not sampler_video or source is None or video.crf != quality:
        return False
    fmt = video_format(source)
    same_rate = Fraction(frame_rate).limit_denominator(1001) == fmt["rate"]
    return same_rate and fmt["codec"] == "h264" and fmt["pix_fmt"] == "yuv420p"


def _target(prefix: str, output_dir: str) -> tuple[str, str]:
    out = os.path.abspath(output_dir)
    fix = f"Use up to {MAX_PREFIX} plain characters, such as InfiniteTalk/video"
    if len(prefix) > MAX_PREFIX:
        raise InputError("filename_prefix", f"'{prefix[:40]}...' is {len(prefix)} characters long", fix)
    if any(not c.isprintable() for c in prefix):     # NUL, newline, lone surrogates, escapes
        raise InputError("filename_prefix", f"'{prefix}' holds control characters or invalid text", fix)
    prefix = os.path.normpath(prefix.strip() or "InfiniteTalk/video")
    folder = os.path.abspath(os.path.join(out, os.path.dirname(prefix)))
    if os.path.commonpath([out, folder]) != out or os.path.isabs(prefix):
        raise InputError("filename_prefix", f"'{prefix}' points outside the output folder",
                         "Use a relative name such as InfiniteTalk/video")
    return folder, os.path.basename(prefix) or "video"


def _rate(video, frame_rate: float) -> float:
    """The frame rate to write: the input's, or the video's own for 0 (checked before any file exists)."""
    if frame_rate == 0 and video is None:
        raise InputError("frame_rate", "0 means 'the video's own rate', but only images are connected",
                         "Set the frame rate of the images (InfiniteTalk makes 25)")
    if frame_rate == 0:
        frame_rate = float(video.get_frame_rate())
    if not MIN_FPS <= frame_rate <= MAX_FPS:
        raise InputError("frame_rate", f"{frame_rate:g} fps is outside {MIN_FPS:g}..{MAX_FPS:g}",
                         "Use the rate the frames were made at (InfiniteTalk: 25), or 0 for a video's own")
    return frame_rate


def _reserve(folder: str, stem: str, prefix: str):
    try:
        return reserve_output_path(folder, stem)
    except OSError as err:                      # read-only or full disk, a file where a folder should be
        raise InputError("filename_prefix", f"cannot create a file for '{prefix}' in the output "
                         f"folder ({err.strerror or err})",
                         "Make the output folder writable (and not full), or choose another prefix") from None


def export_mp4(video, images, audio, frame_rate: float, quality: int, filename_prefix: str, output_dir: str,
               sampler_video: bool = False) -> str:
    """The mp4's path. ``video``: the host's VIDEO (or None, then ``images``); ``audio``: the host's AUDIO
    or None; ``sampler_video``: ``video`` is the sampler's temp file (``.path``, ``.crf``,
    ``.moved_to(path)``), copied stream by stream when asked for at its rate and quality."""
    if video is None and images is None:
        raise InputError("video", "connect a video or images")
    if sampler_video and not os.path.isfile(video.path):
        raise InputError("video", f"the sampler's video file {video.path} no longer exists "
                         "(the host reused the sampler's earlier result)",
                         "Run the sampler again: change one of its inputs, or free the node cache")
    frame_rate = _rate(video, frame_rate)
    folder, stem = _target(filename_prefix, output_dir)
    source = _stream_source(video)
    if _copyable(video, sampler_video, source, frame_rate, quality):
        target = _reserve(folder, stem, filename_prefix)     # only once every input is checked
        wave, rate = (audio["waveform"], int(audio["sample_rate"])) if audio is not None else (None, None)
        copy_mp4(source, target, audio=wave, sample_rate=rate)
        if audio is None:                   # an exact copy: the temp file is no longer needed
            video.moved_to(str(target))
        return str(target)
    wave, rate = _soundtrack(video, audio, source)
    target = _reserve(folder, stem, filename_prefix)
    with Mp4Writer(target, Fraction(frame_rate).limit_denominator(1001), crf=quality, audio=wave,
                   sample_rate=rate) as writer:
        for chunk in _frames(video, images, _stream_source(video)):   # rewound after the audio
            writer.write(chunk)
    return str(target)
