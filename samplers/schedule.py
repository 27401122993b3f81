"""Flow-matching timesteps with the official shift, and the Euler update.

Numerics follow the official InfiniteTalk pipeline: ``np.linspace(1000, 1, N, float32) + [0]``, each entry a
1-element float32 tensor pushed through ``t' = 1000 * s*u / (1 + (s-1)*u)`` with ``u = t/1000``. Everything is
elementwise float32, so the result is bit-exact against the golden ``schedule`` fixture.
"""
from __future__ import annotations

import numpy as np
import torch

NUM_TIMESTEPS = 1000
SHIFT_BY_RESOLUTION = {"480p": 7.0, "720p": 11.0}


def default_shift(resolution: str) -> float:
    """The official default shift for a resolution bucket ("480p" -> 7, "720p" -> 11)."""
    if resolution not in SHIFT_BY_RESOLUTION:
        raise ValueError(f"default_shift: resolution {resolution!r} is not one of {sorted(SHIFT_BY_RESOLUTION)}; "
                         "pass the shift explicitly for custom sizes")
    return SHIFT_BY_RESOLUTION[resolution]


def shift_timestep(t: torch.Tensor, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Shift a timestep on the 0..num_timesteps scale (same operation order as the reference)."""
    u = t / num_timesteps
    return (shift * u / (1 + (shift - 1) * u)) * num_timesteps


def timesteps(steps: int, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> list[torch.Tensor]:
    """``steps + 1`` shifted timesteps, each a float32 tensor of shape [1]; the last is 0."""
    if steps < 1:
        raise ValueError(f"timesteps: steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"timesteps: shift must be > 0, got {shift}")
    raw = list(np.linspace(num_timesteps, 1, steps, dtype=np.float32)) + [0.0]
    return [shift_timestep(torch.tensor([t], dtype=torch.float32), shift, num_timesteps) for t in raw]


def euler_step(latent: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """One flow-matching Euler step: x <- x - v * (t - t_next) / 1000 (v ~ noise - x0)."""
    dt = (t - t_next) / num_timesteps
    dt = dt.to(latent.device).view(-1, *([1] * (latent.dim() - 1)))
    return latent + (-velocity) * dt


def add_noise(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Forward process x_t = (1 - s) x0 + s noise, s = t/1000 (MultiTalk re-noises its context with this)."""
    s = (t.float() / num_timesteps).to(clean.device).view(-1, *([1] * (clean.dim() - 1)))
    return (1 - s) * clean + s * noise
