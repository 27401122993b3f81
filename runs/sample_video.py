"""One Sampler run without the host: the whole talking video into a temp mp4 with the soundtrack.

The node hands in what only the host has: the VAE and CLIP as callables (``vae_encode``,
``vae_decode``, ``clip_encode``, see ``samplers/loop.py``), the temp folder and a progress bar
(``make_bar(total) -> update(done, total)``). The model brings its own host calls
(``HostModel.host``): loading for sampling, interruption. Every refusal is an ``errors.InputError``
naming the input at fault; the temp mp4 is published only when the run completes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import av
import torch

from ..errors import InputError
from ..loaders import managed_dit
from ..media.source_video import SourceVideo
from ..media.speech_features import FPS
from ..media.video_file import Mp4Writer, reserve_output_path
from ..samplers import checks
from ..samplers.loop import generate
from ..samplers.preview_frames import PreviewFrames
from ..samplers.settings import from_node_inputs
from ..samplers.windows import plan_windows

log = logging.getLogger(__name__)
SAMPLER_CRF = 19             # the sampler's H.264 quality; Video Combine's default matches it


@dataclass
class Sampled:
    path: str                # the temp mp4 (H.264 crf SAMPLER_CRF + the soundtrack)
    images: torch.Tensor     # the IMAGE output (all frames up to image_frames_limit, else the first)
    frames: int
    info: str                # what was made, and warnings


def check_masks(masks, image) -> None:
    """[3, H, W] speaker masks, of the image's size when an image is the reference."""
    if masks is None:
        return
    if masks.dim() != 3 or masks.shape[0] != 3:
        raise InputError("masks", f"expected [3, H, W] speaker masks, got {list(masks.shape)}",
                         "Use the InfiniteTalk Speaker Masks node")
    if image is not None and tuple(masks.shape[1:]) != tuple(image.shape[1:3]):
        raise InputError("masks", f"masks are {masks.shape[2]}x{masks.shape[1]} but the image is "
                         f"{image.shape[2]}x{image.shape[1]}", "Make the masks from this image")


def reference_of(image, video, speech_frames: int):
    """(the reference for the loop, notes for the user): a dubbing VIDEO read at 25 fps, else the
    first image."""
    if video is not None:
        try:
            src = video.get_stream_source()
        except (AttributeError, NotImplementedError):     # an in-memory VIDEO: its frames as they are
            return video.get_components().images, []
        try:
            reader = SourceVideo(src)
        except (ValueError, IndexError, av.error.FFmpegError) as err:
            raise InputError("video", f"the video cannot be read ({err})",
                             "Load a video file with frames (mp4, webm, mov)") from None
        return reader, reader.notes(speech_frames)
    if image is None:
        raise InputError("image", "connect a reference image (or a video to dub)")
    if image.shape[0] > 1:
        log.info("InfiniteTalk Sampler: %d images given; the first one is the reference", image.shape[0])
    return image[0], []


class Progress:
    """One bar for the whole run: per window, its conditioning, its steps and its decode.

    The loop reports steps; conditioning counts once the window's first VAE encode is done (every
    window encodes: the keyframe or its motion frames), the decode once it returns, so the bar moves
    before the first step and reaches the end only after the last window is decoded."""

    def __init__(self, windows: int, steps: int, make_bar: Callable | None = None):
        self.total = windows * (steps + 2)
        self.steps = self.phases = 0
        self.encoded = False                # the current window's conditioning was counted
        self.update = make_bar(self.total) if make_bar is not None else None

    def done(self) -> int:
        return min(self.steps + self.phases, self.total)

    def _show(self) -> None:
        if self.update is not None:
            self.update(self.done(), self.total)

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


def sample_video(model, text, audio, image, video, masks, options: dict, vae_encode, vae_decode, clip_encode,
                 temp_dir: str, image_frames_limit: int, make_bar: Callable | None = None) -> Sampled:
    """``model``: a ``managed_dit.HostModel``; ``options``: the node's settings inputs by name
    (``samplers.settings.from_node_inputs``); ``audio``: Audio Encode's output."""
    check_masks(masks, image)
    settings = from_node_inputs(model.family, model.patcher.load_device, model.dtype, **options)
    plan = plan_windows(int(audio["embeddings"].shape[1]), family=settings.family, frame_num=settings.frame_num,
                        motion_frames=settings.motion_frames, max_frames=settings.max_frames)
    reference, notes = reference_of(image, video, plan.total_frames)
    for note in notes:
        log.warning("InfiniteTalk Sampler: %s", note)
    preview = PreviewFrames(image_frames_limit)
    progress = Progress(len(plan), settings.steps, make_bar)
    dit = managed_dit.load_for_sampling(model)
    target = reserve_output_path(os.path.join(temp_dir, "infinitetalk"), "sampler")

    def sink(frames):
        writer.write(frames)                # every frame goes to the video; the cap is preview's alone
        preview.add(frames)

    def should_stop():
        model.host.throw_if_interrupted()
        return False

    interrupted = False
    try:
        with (Mp4Writer(target, FPS, crf=SAMPLER_CRF, audio=audio["soundtrack"],
                        sample_rate=audio["sample_rate"]) as writer,
              checks.first_output_finite(dit)):
            encode, decode = progress.wrap(vae_encode, vae_decode)
            result = generate(dit, encode, decode, clip_encode, reference, audio["embeddings"], text, settings,
                              masks=masks, sink=sink, on_step=progress.on_step, should_stop=should_stop)
    except checks.NonFiniteOutput as err:
        raise InputError("model", str(err), "Re-download the model, remove or weaken its LoRAs, or choose "
                         "precision bf16 or fp32 in the InfiniteTalk Model Loader") from None
    except BaseException as err:
        interrupted = model.host.is_interrupt(err)
        raise
    finally:
        managed_dit.release_after_sampling(model, interrupted=interrupted)
    if preview.note():
        log.info("InfiniteTalk Sampler: %s", preview.note())
    sound = audio["soundtrack"]
    info = [f"{result.frames} frames ({result.frames / FPS:.2f} s at {FPS} fps), {result.width}x"
            f"{result.height}, {len(plan)} window(s); soundtrack {audio['sample_rate']} Hz, "
            f"{sound.shape[0] if sound.dim() > 1 else 1} channel(s)"]
    info += [f"warning: {n}" for n in notes] + ([preview.note()] if preview.note() else [])
    return Sampled(str(target), preview.images(), result.frames, "\n".join(info))
