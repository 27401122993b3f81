"""The loop's settings: a preset plus overrides, or the Sampler node's inputs (comfy-free).

``Settings.from_preset(mode, resolution, **overrides)`` is what scripts and tests use;
``from_node_inputs`` reads the node's conventions (0 / -1 = the preset's value, ``custom`` size)
and raises ``errors.InputError`` naming the input at fault.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import InputError
from .presets import get_preset


@dataclass(frozen=True)
class Settings:
    steps: int = 40
    text_scale: float = 5.0
    audio_scale: float = 4.0
    shift: float = 7.0
    seed: int = 42
    family: str = "infinitetalk"          # "multitalk": MultiTalk checkpoints' context rule
    frame_num: int = 81
    motion_frames: int | None = None      # None: 9 (InfiniteTalk) / 25 (MultiTalk)
    max_frames: int | None = None         # cap on the output length (None: the whole audio)
    resolution: str = "480p"              # bucket table: "480p" or "720p"
    size: tuple[int, int] | None = None   # (height, width) override, multiples of 16
    color_strength: float = 1.0
    apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    teacache_thresh: float = 0.0          # the official TeaCache threshold (CLI default 0.2); 0 = off
    device: str | torch.device = "cpu"
    dit_dtype: torch.dtype | None = None  # None: the DiT module's parameter dtype (fp32 for plain callables)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampler settings: steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.color_strength <= 1.0:
            raise ValueError(f"sampler settings: colour correction strength must be in 0..1, got "
                             f"{self.color_strength}")
        if self.teacache_thresh < 0:
            raise ValueError(f"sampler settings: teacache_thresh must be >= 0, got {self.teacache_thresh}")

    @classmethod
    def from_preset(cls, mode: str, resolution: str = "480p", **overrides) -> "Settings":
        """"standard" or "fast" defaults; ``overrides`` replace any field (steps are checked against the mode)."""
        preset = get_preset(mode)
        base = cls(steps=preset.steps, text_scale=preset.text_scale, audio_scale=preset.audio_scale,
                   shift=preset.resolve_shift(resolution), resolution=resolution)
        out = replace(base, **overrides)
        preset.check_steps(out.steps)
        return out


def check_motion_frames(motion_frames: int) -> None:
    """0 (the family's default) or 4n+1 frames: the VAE encodes 1 + 4k frames."""
    if motion_frames and (motion_frames - 1) % 4:
        raise InputError("motion_frames", f"{motion_frames} is not of the form 4n+1",
                         "Use 0 (the family's default), 1, 5, 9, 13, ... 65")


def from_node_inputs(family: str, device, dit_dtype, *, mode: str, steps: int, text_guidance: float,
                     audio_guidance: float, shift: float, seed: int, resolution: str, width: int, height: int,
                     color_correction: float, motion_frames: int, apg: bool, teacache_thresh: float,
                     max_frames: int) -> Settings:
    """The Sampler node's inputs (by their names) -> Settings. 0 steps / shift / motion_frames /
    max_frames and -1 guidance mean the preset's (or family's) value; ``family`` / ``device`` /
    ``dit_dtype`` come from the loaded model."""
    preset = get_preset(mode)
    bucket = resolution if resolution in ("480p", "720p") else "480p"
    over = {"seed": int(seed), "family": family.lower(), "color_strength": color_correction,
            "apg": bool(apg), "teacache_thresh": float(teacache_thresh), "device": device,
            "dit_dtype": dit_dtype}
    if steps > 0:
        over["steps"] = steps
    if text_guidance >= 0:
        over["text_scale"] = text_guidance
    if audio_guidance >= 0:
        over["audio_scale"] = audio_guidance
    if shift > 0:
        over["shift"] = shift
    if max_frames > 0:
        over["max_frames"] = max_frames
    if motion_frames > 0:
        check_motion_frames(motion_frames)
        over["motion_frames"] = motion_frames
    if resolution == "custom":
        if width % 16 or height % 16:
            raise InputError("width", f"custom size {width}x{height} must be multiples of 16")
        over["size"] = (height, width)
    try:
        return Settings.from_preset(preset.name, bucket, **over)
    except ValueError as err:
        raise InputError("steps", str(err)) from None
