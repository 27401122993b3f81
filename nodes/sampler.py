"""InfiniteTalk Sampler: the whole talking video, window by window, streamed into an mp4."""
from __future__ import annotations

import logging
import os

import av
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..loaders import host, managed_dit
from ..samplers import checks
from ..samplers import conditioning as C
from ..samplers.loop import Settings, generate
from ..samplers.presets import get_preset, modes_tooltip
from ..samplers.preview_frames import PreviewFrames
from ..media.source_video import SourceVideo
from ..samplers.teacache import OFFICIAL_THRESHOLD
from ..media.video_file import Mp4Writer, reserve_output_path
from ..samplers.windows import plan_windows
from .sampler_video import SAMPLER_CRF, SamplerVideo
from .types import CATEGORY, Audio, Model, Text, adv, input_error

NODE = "InfiniteTalk Sampler"
log = logging.getLogger(__name__)


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


def _reference(image, video, speech_frames: int):
    """(the reference for the loop, notes for the user)."""
    if video is not None:
        try:
            src = video.get_stream_source()
        except (AttributeError, NotImplementedError):     # an in-memory VIDEO: its frames as they are
            return video.get_components().images, []
        try:
            reader = SourceVideo(src)
        except (ValueError, IndexError, av.error.FFmpegError) as err:
            raise input_error(NODE, "video", f"the video cannot be read ({err})",
                              "Load a video file with frames (mp4, webm, mov)") from None
        return reader, reader.notes(speech_frames)
    if image is None:
        raise input_error(NODE, "image", "connect a reference image (or a video to dub)")
    if image.shape[0] > 1:
        log.info("%s: %d images given; the first one is the reference", NODE, image.shape[0])
    return image[0], []


class _Progress:
    """One bar for the whole run: per window, its conditioning, its steps and its decode.

    The loop reports steps; conditioning counts once the window's first VAE encode is done (every
    window encodes: the keyframe or its motion frames), the decode once it returns, so the bar moves
    before the first step and reaches the end only after the last window is decoded."""

    def __init__(self, windows: int, steps: int):
        self.total = windows * (steps + 2)
        self.steps = self.phases = 0
        self.encoded = False                # the current window's conditioning was counted
        self.bar = comfy.utils.ProgressBar(self.total)

    def _show(self) -> None:
        self.bar.update_absolute(min(self.steps + self.phases, self.total), self.total)

    def on_step(self, done: int, _total: int) -> None:
        self.steps = done
        self._show()

    def wrap(self, encode, decode):
        def encode_counted(frames):
            out = encode(frames)
            if not self.encoded:
                self.encoded = True
                self.phases += 1
                self._show()
            return out

        def decode_counted(latent):
            out = decode(latent)
            self.encoded = False            # the next encode belongs to the next window
            self.phases += 1
            self._show()
            return out
        return encode_counted, decode_counted


def _settings(model, mode, steps, text_guidance, audio_guidance, shift, seed, resolution, width,
              height, color_correction, motion_frames, apg, teacache_thresh, max_frames) -> Settings:
    preset = get_preset(mode)
    bucket = resolution if resolution in ("480p", "720p") else "480p"
    over = {"seed": int(seed), "family": model.family.lower(), "color_strength": color_correction,
            "apg": bool(apg), "teacache_thresh": float(teacache_thresh),
            "device": model.patcher.load_device, "dit_dtype": model.dtype}
    if steps > 0:
        over["steps"] = steps
    if text_guidance >= 0:
        over["text_scale"] = text_guidance
    if audio_guidance >= 0:
        over["audio_scale"] = audio_guidance
    if shift > 0:
        over["shift"] = shift
    if motion_frames > 0:
        if (motion_frames - 1) % 4:
            raise input_error(NODE, "motion_frames", f"{motion_frames} is not of the form 4n+1",
                              "Use 0 (the family's default), 1, 5, 9, 13, ... 65")
        over["motion_frames"] = motion_frames
    if max_frames > 0:
        over["max_frames"] = max_frames
    if resolution == "custom":
        if width % 16 or height % 16:
            raise input_error(NODE, "width", f"custom size {width}x{height} must be multiples of 16")
        over["size"] = (height, width)
    try:
        return Settings.from_preset(preset.name, bucket, **over)
    except ValueError as err:
        raise input_error(NODE, "steps", str(err)) from None


def run(model, text, audio, vae, clip_vision, image, video, masks, settings: Settings,
        image_frames_limit: int):
    """Sample into a temp mp4 (with the soundtrack); returns (path, preview frames, frames, info)."""
    audio_frames = int(audio["embeddings"].shape[1])
    plan = plan_windows(audio_frames, family=settings.family, frame_num=settings.frame_num,
                        motion_frames=settings.motion_frames, max_frames=settings.max_frames)
    reference, notes = _reference(image, video, plan.total_frames)
    for note in notes:
        log.warning("%s: %s", NODE, note)
    preview = PreviewFrames(image_frames_limit)
    progress = _Progress(len(plan), settings.steps)
    dit = managed_dit.load_for_sampling(model)
    folder = os.path.join(folder_paths.get_temp_directory(), "infinitetalk")
    target = reserve_output_path(folder, "sampler")

    def sink(frames):
        writer.write(frames)                # every frame goes to the video; the cap is preview's alone
        preview.add(frames)

    def should_stop():
        host.throw_if_interrupted()
        return False

    interrupted = False
    try:
        with (Mp4Writer(target, 25, crf=SAMPLER_CRF, audio=audio["soundtrack"],
                        sample_rate=audio["sample_rate"]) as writer,
              checks.first_output_finite(dit)):
            encode, decode = progress.wrap(*_host_vae(vae))
            result = generate(dit, encode, decode, _host_clip(clip_vision), reference,
                              audio["embeddings"], text, settings, masks=masks, sink=sink,
                              on_step=progress.on_step, should_stop=should_stop)
    except checks.NonFiniteOutput as err:
        raise input_error(NODE, "model", str(err), "Re-download the model, remove or weaken its LoRAs, or "
                          "choose precision bf16 or fp32 in the InfiniteTalk Model Loader") from None
    except BaseException as err:
        interrupted = host.is_interrupt(err)
        raise
    finally:
        managed_dit.release_after_sampling(model, interrupted=interrupted)
    if preview.note():
        log.info("%s: %s", NODE, preview.note())
    sound = audio["soundtrack"]
    info = [f"{result.frames} frames ({result.frames / 25:.2f} s at 25 fps), {result.width}x"
            f"{result.height}, {len(plan)} window(s); soundtrack {audio['sample_rate']} Hz, "
            f"{sound.shape[0] if sound.dim() > 1 else 1} channel(s)"]
    info += [f"warning: {n}" for n in notes] + ([preview.note()] if preview.note() else [])
    return str(target), preview.images(), result.frames, "\n".join(info)


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
        if motion_frames and (motion_frames - 1) % 4:
            return (f"{NODE}: input 'motion_frames': {motion_frames} is not of the form 4n+1. Use 0 "
                    "(the family's default), 1, 5, 9, 13, ... 65")
        return True

    @classmethod
    def execute(cls, model, text, audio, vae, clip_vision, mode, steps, text_guidance,
                audio_guidance, shift, seed, resolution, width, height, color_correction,
                motion_frames, apg, teacache_thresh, max_frames, image_frames_limit, image=None,
                video=None, masks=None) -> io.NodeOutput:
        if masks is not None and (masks.dim() != 3 or masks.shape[0] != 3):
            raise input_error(NODE, "masks", f"expected [3, H, W] speaker masks, got "
                              f"{list(masks.shape)}", "Use the InfiniteTalk Speaker Masks node")
        ref_hw = (image.shape[1:3] if image is not None else None)
        if masks is not None and ref_hw is not None and tuple(masks.shape[1:]) != tuple(ref_hw):
            raise input_error(NODE, "masks", f"masks are {masks.shape[2]}x{masks.shape[1]} but the image "
                              f"is {ref_hw[1]}x{ref_hw[0]}", "Make the masks from this image")
        settings = _settings(model, mode, steps, text_guidance, audio_guidance, shift, seed, resolution,
                             width, height, color_correction, motion_frames, apg, teacache_thresh,
                             max_frames)
        path, images, frames, info = run(model, text, audio, vae, clip_vision, image, video, masks,
                                         settings, image_frames_limit)
        return io.NodeOutput(SamplerVideo(path, SAMPLER_CRF), images, frames, info)
