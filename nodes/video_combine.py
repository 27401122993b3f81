"""InfiniteTalk Video Combine: a VIDEO or frames (+ soundtrack) -> an mp4 in the output folder.

Memory stays flat however long the video is: the sampler's VIDEO is copied stream by stream (its
H.264 packets untouched, so each video is encoded exactly once), other videos are decoded chunk by
chunk, and a VIDEO's soundtrack is read from its file's audio stream without decoding frames.
Nothing is ever overwritten: the output takes the next free counter name.
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction

import folder_paths
from comfy_api.latest import InputImpl, io, ui

from ..media.mp4_copy import copy_mp4, read_soundtrack, video_format
from ..media.video_file import Mp4Writer, iter_frames, reserve_output_path
from .sampler_video import SAMPLER_CRF, SamplerVideo
from .types import CATEGORY, input_error

NODE = "InfiniteTalk Video Combine"
MIN_FPS, MAX_FPS = 1.0, 240.0      # below 1 fps a clip of a few frames becomes hours of video
MAX_PREFIX = 200                   # characters; file systems allow 255 for the whole name
log = logging.getLogger(__name__)


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


def _copyable(video, source, frame_rate: float, quality: int) -> bool:
    """The sampler's own file, asked for at its rate and quality: its streams can be copied."""
    if not isinstance(video, SamplerVideo) or source is None or video.crf != quality:
        return False
    fmt = video_format(source)
    same_rate = Fraction(frame_rate).limit_denominator(1001) == fmt["rate"]
    return same_rate and fmt["codec"] == "h264" and fmt["pix_fmt"] == "yuv420p"


def _target(prefix: str) -> tuple[str, str]:
    out = os.path.abspath(folder_paths.get_output_directory())
    fix = f"Use up to {MAX_PREFIX} plain characters, such as InfiniteTalk/video"
    if len(prefix) > MAX_PREFIX:
        raise input_error(NODE, "filename_prefix", f"'{prefix[:40]}...' is {len(prefix)} characters long", fix)
    if any(not c.isprintable() for c in prefix):     # NUL, newline, lone surrogates, escapes
        raise input_error(NODE, "filename_prefix", f"'{prefix}' holds control characters or invalid text",
                          fix)
    prefix = os.path.normpath(prefix.strip() or "InfiniteTalk/video")
    folder = os.path.abspath(os.path.join(out, os.path.dirname(prefix)))
    if os.path.commonpath([out, folder]) != out or os.path.isabs(prefix):
        raise input_error(NODE, "filename_prefix", f"'{prefix}' points outside the output folder",
                          "Use a relative name such as InfiniteTalk/video")
    return folder, os.path.basename(prefix) or "video"


def _rate(video, frame_rate: float) -> float:
    """The frame rate to write: the input's, or the video's own for 0 (checked before any file exists)."""
    if frame_rate == 0 and video is None:
        raise input_error(NODE, "frame_rate", "0 means 'the video's own rate', but only images are connected",
                          "Set the frame rate of the images (InfiniteTalk makes 25)")
    if frame_rate == 0:
        frame_rate = float(video.get_frame_rate())
    if not MIN_FPS <= frame_rate <= MAX_FPS:
        raise input_error(NODE, "frame_rate", f"{frame_rate:g} fps is outside {MIN_FPS:g}..{MAX_FPS:g}",
                          "Use the rate the frames were made at (InfiniteTalk: 25), or 0 for a video's own")
    return frame_rate


def _reserve(folder: str, stem: str, prefix: str):
    try:
        return reserve_output_path(folder, stem)
    except OSError as err:                      # read-only or full disk, a file where a folder should be
        raise input_error(NODE, "filename_prefix", f"cannot create a file for '{prefix}' in the output "
                          f"folder ({err.strerror or err})",
                          "Make the output folder writable (and not full), or choose another prefix") from None


def write(video, images, audio, frame_rate: float, quality: int, filename_prefix: str) -> str:
    if video is None and images is None:
        raise input_error(NODE, "video", "connect a video or images")
    if isinstance(video, SamplerVideo) and not os.path.isfile(video.path):
        raise input_error(NODE, "video", f"the sampler's video file {video.path} no longer exists "
                          "(the host reused the sampler's earlier result)",
                          "Run the sampler again: change one of its inputs, or free the node cache")
    frame_rate = _rate(video, frame_rate)
    folder, stem = _target(filename_prefix)
    source = _stream_source(video)
    if _copyable(video, source, frame_rate, quality):
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


class InfiniteTalkVideoCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkVideoCombine",
            display_name=NODE,
            category=CATEGORY,
            description="Saves an mp4 (H.264 + AAC) into the output folder under the next free number; "
                        "existing files are never overwritten. The sampler's video is copied as it is "
                        "(no second encode); the soundtrack is the speech you loaded, at its own sample "
                        "rate and channels.",
            inputs=[
                io.Video.Input("video", optional=True,
                               tooltip="A VIDEO (e.g. the sampler's, which already holds your audio). "
                                       "The sampler's is copied without re-encoding when frame_rate "
                                       "and quality are left as they are; other videos are re-encoded "
                                       "frame by frame (little memory). Its own soundtrack is used if "
                                       "'audio' is not connected."),
                io.Image.Input("images", optional=True, tooltip="Frames, when no video is connected."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Soundtrack instead of the video's own (e.g. Audio Encode's "
                                       "'soundtrack': your speech as loaded); trimmed or padded with "
                                       "silence to the video length."),
                io.Float.Input("frame_rate", default=25.0, min=0.0, max=MAX_FPS, step=0.01,
                               tooltip="Frames per second, 1 to 240 (InfiniteTalk makes 25). 0 = the "
                                       "connected video's own rate. Another rate than the video's "
                                       "re-encodes it."),
                io.Int.Input("quality", default=SAMPLER_CRF, min=0, max=51,
                             tooltip=f"H.264 CRF: lower is better and bigger (17-23 is usual). The "
                                     f"sampler encodes at {SAMPLER_CRF}; at that value its video is "
                                     f"copied as is, another value encodes it a second time."),
                io.String.Input("filename_prefix", default="InfiniteTalk/video",
                                tooltip="Name inside the output folder; a counter is added "
                                        "(InfiniteTalk/video_00001.mp4, ...)."),
            ],
            outputs=[io.Video.Output(display_name="video"), io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frame_rate, quality, filename_prefix, video=None, images=None,
                audio=None) -> io.NodeOutput:
        path = write(video, images, audio, frame_rate, quality, filename_prefix)
        out = os.path.abspath(folder_paths.get_output_directory())
        subfolder = os.path.relpath(os.path.dirname(path), out)
        preview = ui.PreviewVideo([ui.SavedResult(os.path.basename(path),
                                                  "" if subfolder == "." else subfolder,
                                                  io.FolderType.output)])
        return io.NodeOutput(InputImpl.VideoFromFile(path), path, ui=preview)
