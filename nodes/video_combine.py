"""InfiniteTalk Video Combine: a VIDEO or frames (+ soundtrack) -> an mp4 in the output folder
(the export itself: ``media/video_export.py``)."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import InputImpl, io, ui

from ..media.video_export import MAX_FPS, export_mp4
from .sampler_video import SAMPLER_CRF, SamplerVideo
from .types import CATEGORY, blaming

NODE = "InfiniteTalk Video Combine"


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
        out = os.path.abspath(folder_paths.get_output_directory())
        with blaming(NODE):
            path = export_mp4(video, images, audio, frame_rate, quality, filename_prefix, out,
                              sampler_video=isinstance(video, SamplerVideo))
        subfolder = os.path.relpath(os.path.dirname(path), out)
        preview = ui.PreviewVideo([ui.SavedResult(os.path.basename(path),
                                                  "" if subfolder == "." else subfolder,
                                                  io.FolderType.output)])
        return io.NodeOutput(InputImpl.VideoFromFile(path), path, ui=preview)
