"""InfiniteTalk Video Combine: frames (+ soundtrack) -> an mp4 in the output folder, never overwriting."""
from __future__ import annotations

import os
from fractions import Fraction

import folder_paths
from comfy_api.latest import InputImpl, io, ui

from ..samplers.video_file import Mp4Writer, iter_frames, reserve_output_path
from .types import CATEGORY, input_error

NODE = "InfiniteTalk Video Combine"
MIN_FPS, MAX_FPS = 1.0, 240.0      # below 1 fps a clip of a few frames becomes hours of video
MAX_PREFIX = 200                   # characters; file systems allow 255 for the whole name


def _frames(video, images, chunk: int = 16):
    """Chunks of frames from a VIDEO (decoded from its file as it goes) or an IMAGE batch."""
    if video is not None:
        try:
            source = video.get_stream_source()
        except (AttributeError, NotImplementedError):
            source = None
        if source is not None:
            yield from iter_frames(source, chunk)
            return
        images = video.get_components().images
    for i in range(0, images.shape[0], chunk):
        yield images[i:i + chunk]


def _audio_of(video, audio):
    if audio is not None:
        return audio
    if video is None:
        return None
    try:
        return video.get_components().audio
    except (AttributeError, ValueError, RuntimeError):
        return None


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
    frame_rate = _rate(video, frame_rate)
    folder, stem = _target(filename_prefix)
    target = _reserve(folder, stem, filename_prefix)        # only once every input is checked
    sound = _audio_of(video, audio)
    wave, rate = (sound["waveform"], sound["sample_rate"]) if sound is not None else (None, None)
    with Mp4Writer(target, Fraction(frame_rate).limit_denominator(1001), crf=quality, audio=wave,
                   sample_rate=rate) as writer:
        for chunk in _frames(video, images):
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
                        "existing files are never overwritten.",
            inputs=[
                io.Video.Input("video", optional=True,
                               tooltip="A VIDEO (e.g. the sampler's); read frame by frame, so long videos "
                                       "need little memory. Its own soundtrack is used if 'audio' is "
                                       "not connected."),
                io.Image.Input("images", optional=True, tooltip="Frames, when no video is connected."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Soundtrack; trimmed or padded with silence to the video length."),
                io.Float.Input("frame_rate", default=25.0, min=0.0, max=MAX_FPS, step=0.01,
                               tooltip="Frames per second, 1 to 240 (InfiniteTalk makes 25). 0 = the "
                                       "connected video's own rate."),
                io.Int.Input("quality", default=19, min=0, max=51,
                             tooltip="H.264 CRF: lower is better and bigger (17-23 is usual)."),
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
