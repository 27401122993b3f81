"""Sampling presets as data: the official "standard" settings and the FusionX / lightx2v "fast" ones."""
from __future__ import annotations

from dataclasses import dataclass

from .schedule import default_shift


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int
    min_steps: int
    max_steps: int
    text_scale: float
    audio_scale: float
    shift: float | None  # None: by resolution (7 at 480p, 11 at 720p)
    note: str

    def resolve_shift(self, resolution: str) -> float:
        return self.shift if self.shift is not None else default_shift(resolution)

    def check_steps(self, steps: int) -> int:
        if not self.min_steps <= steps <= self.max_steps:
            raise ValueError(f"preset {self.name!r}: steps must be in {self.min_steps}..{self.max_steps}, got {steps}")
        return steps


PRESETS = {
    "standard": Preset("standard", steps=40, min_steps=1, max_steps=200, text_scale=5.0, audio_scale=4.0,
                       shift=None, note="official 40 steps, text + audio guidance: 3 DiT passes per step "
                                        "(120 per window)"),
    # Distilled weights (FusionX / lightx2v LoRA or the *_lora quant files): text CFG 1 -> 2 passes per step,
    # and 1 pass where the recipe also runs audio guidance 1 (a pass of weight 0 is not run).
    "fast": Preset("fast", steps=8, min_steps=4, max_steps=8, text_scale=1.0, audio_scale=2.0, shift=2.0,
                   note="4-8 steps for FusionX / lightx2v distilled weights or LoRAs, text guidance 1: 2 DiT "
                        "passes per step (16 per window at 8 steps), 1 pass with audio guidance 1 too"),
}


def modes_tooltip() -> str:
    """One line per preset with what it costs in DiT passes (the sampler node's ``mode`` tooltip)."""
    return " ".join(f"{p.name}: {p.note}." for p in PRESETS.values())


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown sampling mode {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
