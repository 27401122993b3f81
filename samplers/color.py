"""Lab colour correction of decoded frames towards the reference image (sRGB, D65, in torch).

Numerics follow the official ``match_and_blend_colors``: per frame, each Lab channel is shifted/scaled to the
reference's mean and (population) std (a flat channel is set to the reference mean), converted back to RGB,
clipped, then blended with the original frame by ``strength``. The conversions follow the usual sRGB / CIE Lab
formulas (the ones the official code gets from scikit-image), computed per frame in float64.
"""
from __future__ import annotations

import torch

_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = 0.008856  # (6/29)^3
_KAPPA = 7.787       # linear-segment slope of f(t)


def _matrix(device) -> torch.Tensor:
    return torch.tensor(_RGB_TO_XYZ, dtype=torch.float64, device=device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB in 0..1 -> CIE Lab (L 0..100)."""
    rgb = rgb.double()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _matrix(rgb.device).T
    xyz = xyz / torch.tensor(_WHITE_D65, dtype=torch.float64, device=rgb.device)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(0) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab -> [..., 3] sRGB clipped to 0..1."""
    lab = lab.double()
    L, a, b = lab.unbind(-1)
    fy = (L + 16) / 116
    f = torch.stack([a / 500 + fy, fy, (fy - b / 200).clamp_min(0)], dim=-1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / _KAPPA)
    xyz = xyz * torch.tensor(_WHITE_D65, dtype=torch.float64, device=lab.device)
    linear = xyz @ torch.linalg.inv(_matrix(lab.device)).T
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def _lab_stats(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = lab.reshape(-1, 3)
    return flat.mean(0), flat.std(0, unbiased=False)


def match_colors(frames: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Colour-correct ``frames`` [N, H, W, 3] (0..1) towards ``reference`` [H, W, 3] (0..1).

    strength 0 returns the frames unchanged; 1 is the full Lab mean/std transfer."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength must be in 0..1, got {strength}")
    if strength == 0.0:
        return frames
    ref_mean, ref_std = _lab_stats(rgb_to_lab(reference.clamp(0, 1)))
    out = torch.empty_like(frames)
    for i, frame in enumerate(frames):  # per frame keeps the float64 working set small
        src = frame.double().clamp(0, 1)
        lab = rgb_to_lab(src)
        mean, std = _lab_stats(lab)
        flat = std == 0
        scaled = (lab - mean) * (ref_std / torch.where(flat, torch.ones_like(std), std)) + ref_mean
        corrected = torch.where(flat, ref_mean.expand_as(lab), scaled)
        rgb = lab_to_rgb(corrected)
        out[i] = ((1 - strength) * src + strength * rgb).clamp(0, 1).to(frames.dtype)
    return out
