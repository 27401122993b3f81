"""The long-video loop: plan the windows, then per window condition, sample, decode, colour-correct, stream out.

Numerics follow the official InfiniteTalk ``generate_infinitetalk`` (and MultiTalk's context rule). The DiT, the
VAE and CLIP arrive as callables, so this module never imports the host:

* ``dit(x [1,16,T,h,w], t [1], context [1,L,D], clip_fea [1,257,1280], y [1,20,T,h,w], audio [N,F,5,12,768],
  ref_target_masks=[3,h,w]) -> [1,16,T,h,w]``; with TeaCache on (``teacache_thresh`` > 0) it also gets
  ``block_cache=`` (see ``WanModel.forward``)
* ``vae_encode(frames [n,H,W,3] 0..1) -> normalised latent [16, 1+(n-1)//4, H/8, W/8]``
* ``vae_decode(latent [16,T,h,w]) -> frames [4(T-1)+1, H, W, 3] 0..1``
* ``clip_encode(frame [H,W,3] 0..1) -> [1, 257, 1280]``

Noise comes from ONE CPU ``torch.Generator`` seeded once, drawn in the reference's order (per window: the latent
noise [16,T,h,w], then, from window 1 on, one context-noise draw before the steps and one after each step - the
reference draws them even where it then overwrites the result), so a seed gives the same video as the reference
run on CPU. Latents stay fp32; the DiT is called in its own dtype. Only each window's NEW frames leave the loop,
so memory stays flat however long the audio is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .audio_windows import frame_audio_windows
from .color import match_colors
from .conditioning import build_y, cover_resize_crop, frame_mask, padded_clip, target_size
from .guidance import APG, combine, null_audio, pass_inputs, pass_names
from .masks import speaker_masks
from .schedule import add_noise, euler_step, timesteps
from .settings import Settings
from .teacache import TeaCache
from .windows import Window, WindowPlan, latent_frames, plan_windows

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """The user stopped the generation; raised between two sampling steps (no partial window is emitted)."""


@dataclass(frozen=True)
class GenerationResult:
    frames: int           # frames sent to the sink
    height: int
    width: int
    plan: WindowPlan
    skipped_passes: int   # DiT passes whose block stack TeaCache skipped


@dataclass
class WindowInputs:
    """Everything one window's DiT passes see besides x and t (already in the DiT's dtype and device)."""
    y: torch.Tensor
    clip_fea: torch.Tensor
    context: torch.Tensor
    context_null: torch.Tensor
    audio: torch.Tensor
    masks: torch.Tensor


@dataclass
class Context:
    """Context latents at latent positions 0..n-1: "clean" (InfiniteTalk, re-pinned before every pass and after
    every step), "renoise" (MultiTalk, re-noised to the current t after every step) or "none"."""
    latent: torch.Tensor | None = None
    mode: str = "none"
    draw: Callable[[tuple], torch.Tensor] | None = None  # context-noise source (consumed in every mode but "none")


def _stop_if_asked(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted("generation interrupted by the user")


def _pin(latent: torch.Tensor, ctx: Context, t: torch.Tensor | None) -> None:
    """Apply the context rule: ``t`` None -> clean pin; else the re-noise draw at ``t`` (drawn in every mode)."""
    if ctx.latent is None or ctx.mode == "none":
        return
    n = ctx.latent.shape[1]
    if t is None:
        if ctx.mode == "clean":
            latent[:, :n] = ctx.latent
        return
    if ctx.draw is None:
        return
    noise = ctx.draw(tuple(ctx.latent.shape)).to(latent.device)
    if ctx.mode == "renoise":
        latent[:, :n] = add_noise(ctx.latent, noise, t)


def sample_window(dit: Callable, noise: torch.Tensor, inputs: WindowInputs, settings: Settings,
                  ctx: Context | None = None, on_step: Callable[[], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, cache: TeaCache | None = None,
                  trace: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Denoise one window from ``noise`` [16, T, h, w] (fp32) and return x0 [16, T, h, w] (fp32)."""
    ctx = ctx or Context()
    schedule = timesteps(settings.steps, settings.shift)
    names = pass_names(settings.text_scale, settings.audio_scale)
    audio_null = null_audio(inputs.audio)
    apg = APG(settings.apg_momentum, settings.apg_norm_threshold) if settings.apg else None
    dtype = inputs.y.dtype
    latent = noise.to(settings.device, torch.float32).clone()
    _pin(latent, ctx, schedule[0])
    for i in range(settings.steps):
        _stop_if_asked(should_stop)
        t = schedule[i].to(latent.device)
        _pin(latent, ctx, None)
        x = latent[None].to(dtype)
        preds = {}
        for name in names:
            context, audio = pass_inputs(name, inputs.context, inputs.context_null, inputs.audio, audio_null)
            extra = {} if cache is None else {"block_cache": cache.slot(name)}
            out = dit(x, t, context, inputs.clip_fea, inputs.y, audio, ref_target_masks=inputs.masks, **extra)
            preds[name] = out[0].float()
        if trace is not None:
            trace(f"step{i}.latent_in", latent.clone())
            trace(f"step{i}.t", schedule[i])
            for name, pred in preds.items():
                trace(f"step{i}.{name}.noise_pred", pred)
        velocity = combine(preds, settings.text_scale, settings.audio_scale, apg)
        if trace is not None and apg is not None:
            for term in apg.running:
                trace(f"step{i}.apg_{term}.running_average", apg.running[term])
                trace(f"step{i}.apg_{term}.update", apg.updates[term])
        latent = euler_step(latent, velocity, schedule[i], schedule[i + 1])
        _pin(latent, ctx, schedule[i + 1])
        _pin(latent, ctx, None)
        if on_step is not None:
            on_step()
    return latent


# ----------------------------------------------------------------------------------------- generate
def _dit_dtype(dit, settings: Settings) -> torch.dtype:
    if settings.dit_dtype is not None:
        return settings.dit_dtype
    params = getattr(dit, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def _text_pair(text) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, context_null), each [L, D], from a pair, a dict or an object with those attributes."""
    if isinstance(text, dict):
        pair = text["context"], text["context_null"]
    elif isinstance(text, (tuple, list)):
        pair = text[0], text[1]
    else:
        pair = text.context, text.context_null
    return tuple(c[0] if c.dim() == 3 else c for c in pair)


def _check_audio(audio_embeds: torch.Tensor) -> torch.Tensor:
    if audio_embeds.dim() == 3:
        audio_embeds = audio_embeds[None]
    if audio_embeds.dim() != 4 or audio_embeds.shape[0] not in (1, 2):
        raise ValueError(f"generate: audio embeddings must be [speakers (1 or 2), frames, 12, 768], got "
                         f"{tuple(audio_embeds.shape)}; encode the audio with the InfiniteTalk Audio Encode node")
    return audio_embeds


class _Source:
    """Reference frames: a still [H, W, 3] or a video (anything with len() and [i] -> [H, W, 3]), resized."""

    def __init__(self, reference, settings: Settings):
        self.still = isinstance(reference, torch.Tensor) and reference.dim() == 3
        self.reference = reference
        if not self.still and len(reference) < 1:
            raise ValueError("generate: the reference video has no frames")
        first = reference if self.still else reference[0]
        self.src_h, self.src_w = int(first.shape[0]), int(first.shape[1])
        self.height, self.width = target_size(self.src_h, self.src_w, settings.resolution, settings.size)
        self.count = None if self.still else len(reference)

    def frame(self, index: int) -> torch.Tensor:
        raw = self.reference if self.still else self.reference[min(index, self.count - 1)]
        return cover_resize_crop(raw[None].float(), self.height, self.width)[0]


def _condition(window: Window, plan: WindowPlan, source: _Source, history: torch.Tensor | None,
               vae_encode, clip_encode, keyframes: dict) -> tuple[torch.Tensor, torch.Tensor, Context]:
    """(y [1,20,T,h,w], clip_fea, context) of a window, fp32 - the i2v keyframe or MultiTalk's motion video.

    ``keyframes`` memoises (y, clip_fea) per reference frame: a still image gives the same keyframe to
    every window, so its 81-frame VAE encode and CLIP encode run once, not once per window."""
    lat_h, lat_w = source.height // 8, source.width // 8
    if plan.family == "multitalk" and window.index > 0:
        motion = history[-plan.motion_frames:]
        clip_fea = clip_encode(motion[-1])
        latent = vae_encode(padded_clip(motion, plan.frame_num)).float()
        mask = frame_mask(plan.frame_num, lat_h, lat_w, known_frames=plan.motion_frames)
        ctx = Context(latent[:, :latent_frames(plan.motion_frames)], "renoise")
        return build_y(latent, mask), clip_fea, ctx
    keyframe = source.frame(window.reference_frame)
    key = "still" if source.still else window.reference_frame
    if key not in keyframes:
        latent = vae_encode(padded_clip(keyframe[None], plan.frame_num)).float()
        keyframes.clear()  # a video's keyframes never repeat: keep one entry
        keyframes[key] = (build_y(latent, frame_mask(plan.frame_num, lat_h, lat_w, known_frames=1)),
                          clip_encode(keyframe))
    y, clip_fea = keyframes[key]
    if plan.family == "multitalk":
        return y, clip_fea, Context()
    pinned = vae_encode(keyframe[None]) if window.index == 0 else vae_encode(history[-plan.motion_frames:])
    return y, clip_fea, Context(pinned.float(), "clean")


def _window_inputs(y, clip_fea, context, context_null, audio, masks, device, dtype) -> WindowInputs:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)
    return WindowInputs(y=cast(y), clip_fea=cast(clip_fea), context=cast(context[None]),
                        context_null=cast(context_null[None]), audio=cast(audio), masks=cast(masks))


def generate(dit: Callable, vae_encode: Callable, vae_decode: Callable, clip_encode: Callable, reference,
             audio_embeds: torch.Tensor, text, settings: Settings, masks: torch.Tensor | None = None,
             sink: Callable[[torch.Tensor], None] | None = None,
             on_step: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
             trace: Callable[[str, torch.Tensor], None] | None = None) -> GenerationResult:
    """Generate the whole talking video window by window; each window's new frames [n, H, W, 3] (0..1) go to
    ``sink`` as soon as they are decoded. See the module docstring for the callables' contracts.

    reference: a still [H, W, 3] (0..1) or a video (len() + [i] -> [H, W, 3]); resized to the bucket.
    audio_embeds: [speakers, frames, 12, 768] at 25 fps. text: (context, context_null) or an object/dict with
    those. masks: source-size [3, H, W] speaker masks (two speakers; None: left/right halves).
    on_step(done, total) counts DiT steps over all windows; should_stop() is polled between steps and raises
    ``Interrupted``."""
    embeds = _check_audio(audio_embeds)
    context, context_null = _text_pair(text)
    source = _Source(reference, settings)
    plan = plan_windows(embeds.shape[1], family=settings.family, frame_num=settings.frame_num,
                        motion_frames=settings.motion_frames, max_frames=settings.max_frames,
                        source_frames=source.count)
    route = speaker_masks(embeds.shape[0], source.src_h, source.src_w, source.height, source.width, masks)
    color_ref = source.frame(0) if settings.color_strength > 0 else None
    dtype = _dit_dtype(dit, settings)
    rng = torch.Generator(device="cpu").manual_seed(settings.seed)
    cache = TeaCache(settings.teacache_thresh, settings.resolution) if settings.teacache_thresh > 0 else None
    total, done, emitted = len(plan) * settings.steps, 0, 0
    history, keyframes = None, {}
    passes = len(pass_names(settings.text_scale, settings.audio_scale))
    log.info("generating %d frames at %dx%d in %d windows (%d steps each, %d DiT passes per step)",
             plan.total_frames, source.width, source.height, len(plan), settings.steps, passes)

    def step_done() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    for window in plan.windows:
        _stop_if_asked(should_stop)
        y, clip_fea, ctx = _condition(window, plan, source, history, vae_encode, clip_encode, keyframes)
        audio = frame_audio_windows(embeds, window.start, plan.frame_num, window.audio_length)
        inputs = _window_inputs(y, clip_fea, context, context_null, audio, route, settings.device, dtype)
        noise = torch.randn((16,) + tuple(y.shape[2:]), generator=rng, dtype=torch.float32)
        if window.index > 0:  # the reference draws context noise from window 1 on (used by MultiTalk only)
            ctx.draw = lambda shape: torch.randn(shape, generator=rng, dtype=torch.float32)
        if cache is not None:
            cache.reset()
        x0 = sample_window(dit, noise, inputs, settings, ctx, step_done, should_stop, cache, trace)
        if trace is not None:
            trace("x0", x0)
        del inputs, noise
        frames = vae_decode(x0).float().cpu()
        if color_ref is not None:
            frames = match_colors(frames, color_ref, settings.color_strength)
        new = frames[window.emit_offset:window.emit_offset + window.emit_count]
        if sink is not None and len(new):
            sink(new)
        emitted += len(new)
        history = frames[-plan.motion_frames:].clone()
        del frames, new, x0
    if cache is not None:
        log.info("TeaCache (threshold %g) skipped the blocks of %d of %d DiT passes", settings.teacache_thresh,
                 cache.skipped, len(plan) * settings.steps * passes)
    return GenerationResult(frames=emitted, height=source.height, width=source.width, plan=plan,
                            skipped_passes=cache.skipped if cache is not None else 0)
