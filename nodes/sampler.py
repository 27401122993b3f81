"""InfiniteTalk Sampler: the whole talking video, window by window, streamed into an mp4.

The run itself is ``runs/sample_video.py``; here: the declaration and the host's VAE, CLIP and
progress bar as the callables the run takes.
"""
from __future__ import annotations

import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..errors import InputError
from ..runs.sample_video import SAMPLER_CRF, sample_video
from ..samplers import conditioning as C
from ..samplers.presets import modes_tooltip
from ..samplers.settings import check_motion_frames
from ..samplers.teacache import OFFICIAL_THRESHOLD
from .sampler_video import SamplerVideo
from .types import CATEGORY, Audio, Model, Text, adv, blaming

NODE = "InfiniteTalk Sampler"


def _host_vae(vae):
    def encode(frames):                     # [n, H, W, 3] 0..1 -> normalised [16, T, h, w]
        return C.normalize_latent(vae.encode(frames[..., :3].float())[0].float())

    def decode(latent):                     # [16, T, h, w] -> [F, H, W, 3]
        out = vae.decode(C.denormalize_latent(latent.float())[None])
        return out.reshape(-1, *out.shape[-3:]).float()
    return encode, decode


def _host_clip(clip_vision):
    def encode(frame):                      # [H, W, 3] -> [1, 257, 1280]
        out = clip_vision.encode_image(frame[None, ..., :3].float(), crop=False)
        return out["penultimate_hidden_states"].float()
    return encode


def _progress_bar(total: int):
    return comfy.utils.ProgressBar(total).update_absolute


class InfiniteTalkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkSampler",
            display_name=NODE,
            category=CATEGORY,
            description="Generates the whole lip-synced video for the full audio, window by window "
                        "(progress covers each window's conditioning, steps and decode; Cancel stops "
                        "between steps). The video carries your audio as its soundtrack.",
            inputs=[
                Model.Input("model", tooltip="From InfiniteTalk Model Loader."),
                Text.Input("text", tooltip="From InfiniteTalk T5 Text Encode."),
                Audio.Input("audio", tooltip="audio_embeds from InfiniteTalk Audio Encode."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (Load VAE: Wan2.1_VAE.pth or "
                                            "wan_2.1_vae.safetensors)."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP vision ViT-H (Load CLIP Vision: "
                                                           "clip_vision_h.safetensors)."),
                io.Image.Input("image", optional=True,
                               tooltip="Reference picture of the person(s): image-to-video. The first "
                                       "image is used."),
                io.Video.Input("video", optional=True,
                               tooltip="A video to dub (video-to-video): its frames are the per-window "
                                       "references, read at 25 fps by their timestamps (other frame "
                                       "rates are resampled, with a warning). Shorter than the speech: "
                                       "its last frame is held (warning). Used instead of 'image' "
                                       "when connected."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Two speakers: [3, H, W] from InfiniteTalk Speaker Masks. Not "
                                      "connected: left half = speaker 1, right half = speaker 2."),
                io.Combo.Input("mode", options=["standard", "fast"], default="standard",
                               tooltip=modes_tooltip()),
                io.Int.Input("steps", display_name="steps (0 = preset: 40, fast 8)",
                             default=0, min=0, max=200,
                             tooltip="Sampling steps per window. 0 = the mode's preset (40 / 8)."),
                io.Float.Input("text_guidance", display_name="text_guidance (-1 = preset)",
                               default=-1.0, min=-1.0, max=30.0, step=0.1,
                               tooltip="Text guidance scale. -1 = preset (5 standard, 1 fast). 1 = off, "
                                       "one DiT pass per step fewer."),
                io.Float.Input("audio_guidance", display_name="audio_guidance (-1 = preset)",
                               default=-1.0, min=-1.0, max=30.0, step=0.1,
                               tooltip="Audio guidance scale (lip-sync strength). -1 = preset (4 "
                                       "standard, 2 fast). 1 = off, one DiT pass per step fewer (text and "
                                       "audio both 1: a single pass per step)."),
                io.Float.Input("shift", display_name="shift (0 = auto)",
                               default=0.0, min=0.0, max=50.0, step=0.1,
                               tooltip="Noise schedule shift. 0 = auto (7 at 480p, 11 at 720p, 2 fast)."),
                io.Int.Input("seed", default=42, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Random seed; the same seed gives the same video."),
                io.Combo.Input("resolution", options=["480p", "720p", "custom"], default="480p",
                               tooltip="Output size: the official size bucket nearest to the image's "
                                       "aspect ratio, or custom width/height."),
                io.Int.Input("width", display_name="width (custom only)",
                             default=832, min=16, max=4096, step=16,
                             tooltip="Custom width (resolution = custom), a multiple of 16.", **adv()),
                io.Int.Input("height", display_name="height (custom only)",
                             default=480, min=16, max=4096, step=16,
                             tooltip="Custom height (resolution = custom), a multiple of 16.", **adv()),
                io.Float.Input("color_correction", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Keeps colours matched to the reference over long videos "
                                       "(1 = official strength, 0 = off)."),
                io.Int.Input("motion_frames", display_name="motion_frames (0 = auto)",
                             default=0, min=0, max=65,
                             tooltip="Frames carried from one window to the next. 0 = the family's "
                                     "default (9 InfiniteTalk, 25 MultiTalk).", **adv()),
                io.Boolean.Input("apg", default=False,
                                 tooltip="Adaptive projected guidance (reduces over-saturation at high "
                                         "guidance).", **adv()),
                io.Float.Input("teacache_thresh", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip=f"The official TeaCache (0 = off; the official setting is "
                                       f"{OFFICIAL_THRESHOLD}). After 5 warm-up steps, a guidance pass whose "
                                       f"timestep embedding moved little since its last computed step "
                                       f"reuses that step's block residual instead of running the DiT "
                                       f"blocks: faster, at some cost in fine detail and motion; higher "
                                       f"skips more steps. Keeps one residual per pass on the GPU (about "
                                       f"0.3 GB each at 480p, 0.8 GB at 720p).", **adv()),
                io.Int.Input("max_frames", display_name="max_frames (0 = all)",
                             default=0, min=0, max=1_000_000,
                             tooltip="Stop after this many frames (25 per second). 0 = the whole audio."),
                io.Int.Input("image_frames_limit", default=250, min=0, max=100_000,
                             tooltip="The IMAGE output holds all frames only up to this count (memory: "
                                     "~5 MB per 480p frame); longer videos give just the first frame "
                                     "there (said in 'info'). The VIDEO output always has every frame, "
                                     "whatever this is.", **adv()),
            ],
            outputs=[io.Video.Output(display_name="video"), io.Image.Output(display_name="images"),
                     io.Int.Output(display_name="frames"),
                     io.String.Output(display_name="info",
                                      tooltip="What was made, and warnings (e.g. a dubbing source "
                                              "shorter than the speech, or not 25 fps).")],
        )

    @classmethod
    def validate_inputs(cls, motion_frames=0):
        """Before anything runs (the widget allows any value up to 65)."""
        try:
            check_motion_frames(motion_frames)
        except InputError as err:
            return f"{NODE}: input '{err.input}': {err}"
        return True

    @classmethod
    def execute(cls, model, text, audio, vae, clip_vision, image_frames_limit, image=None, video=None,
                masks=None, **options) -> io.NodeOutput:
        """``options``: the settings inputs (mode ... max_frames) by name, for
        ``samplers.settings.from_node_inputs``."""
        with blaming(NODE):
            run = sample_video(model, text, audio, image, video, masks, options, *_host_vae(vae),
                               _host_clip(clip_vision), folder_paths.get_temp_directory(), image_frames_limit,
                               _progress_bar)
        return io.NodeOutput(SamplerVideo(run.path, SAMPLER_CRF), run.images, run.frames, run.info)
