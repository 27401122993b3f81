"""Speaker routing masks [3, H, W] (speaker 1, speaker 2, background) and their latent-size versions.

Numerics follow the official pipeline: masks are made at the source-image size, resized/cropped like the image
(nearest), nearest-resized to the latent grid and thresholded > 0. The DiT resizes them once more to the token
grid (latent / 2); a class that owns no token there gives NaN in the official code, so we refuse it up front.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .conditioning import cover_resize_crop


class MaskError(ValueError):
    """A speaker mask that the model cannot use (empty at token resolution, wrong shape...)."""


def single_speaker_masks(height: int, width: int) -> torch.Tensor:
    """One speaker: all ones (the routing is not used)."""
    return torch.ones(3, height, width)


def _with_background(speaker1: torch.Tensor, speaker2: torch.Tensor) -> torch.Tensor:
    background = ((speaker1 + speaker2) <= 0).float()
    return torch.stack([speaker1, speaker2, background])


def halves_masks(height: int, width: int, face_scale: float = 0.05) -> torch.Tensor:
    """Default two-speaker rule: rows [0.05h, 0.95h), left/right halves each shrunk to 5%..95% of the half."""
    top, bottom = int(height * face_scale), int(height * (1 - face_scale))
    half = width // 2
    left0, left1 = int(half * face_scale), int(half * (1 - face_scale))
    right0, right1 = int(half * face_scale + half), int(half * (1 - face_scale) + half)
    speaker1, speaker2 = torch.zeros(height, width), torch.zeros(height, width)
    speaker1[top:bottom, left0:left1] = 1
    speaker2[top:bottom, right0:right1] = 1
    return _with_background(speaker1, speaker2)


def box_masks(height: int, width: int, boxes: Sequence[Sequence[float]], layout: str = "official") -> torch.Tensor:
    """Rectangles per speaker, in source pixels.

    layout "official": the official JSON bbox [a, b, c, d] = [top, left, bottom, right] (row first, despite
    its x_min/y_min names). layout "xyxy": [x_min, y_min, x_max, y_max] with x = column, y = row.
    """
    if len(boxes) != 2:
        raise MaskError(f"box_masks: need one box per speaker (2), got {len(boxes)}")
    if layout not in ("official", "xyxy"):
        raise MaskError(f"box_masks: layout must be 'official' or 'xyxy', got {layout!r}")
    out = []
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise MaskError(f"box_masks: box {i + 1} must have 4 numbers, got {list(box)}")
        a, b, c, d = (int(v) for v in box)
        top, left, bottom, right = (a, b, c, d) if layout == "official" else (b, a, d, c)
        m = torch.zeros(height, width)
        m[top:bottom, left:right] = 1
        out.append(m)
    return _with_background(out[0], out[1])


def user_masks(mask_1: torch.Tensor, mask_2: torch.Tensor) -> torch.Tensor:
    """Two host MASKs ([H, W] or [1, H, W], 0..1) -> [3, H, W] with the background = neither speaker."""
    m1, m2 = (m[0] if m.dim() == 3 else m for m in (mask_1, mask_2))
    if m1.shape != m2.shape:
        raise MaskError(f"user_masks: mask_1 {tuple(m1.shape)} and mask_2 {tuple(m2.shape)} differ in size")
    return _with_background((m1 > 0.5).float(), (m2 > 0.5).float())


def fit_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Source-size masks [3, H, W] -> the generation size, resized/cropped like the image (nearest)."""
    return cover_resize_crop(masks.float()[..., None], height, width, mode="nearest")[..., 0]


def to_latent(masks: torch.Tensor, lat_h: int, lat_w: int) -> torch.Tensor:
    """[3, H, W] -> [3, lat_h, lat_w] float 0/1 (nearest, > 0)."""
    resized = F.interpolate(masks.float()[None], size=(lat_h, lat_w), mode="nearest")[0]
    return (resized > 0).float()


def check_token_coverage(latent_masks: torch.Tensor, speakers: int) -> None:
    """Every class must own >= 1 token at token resolution (latent / 2), else the routing is undefined."""
    if speakers < 2:
        return
    _, lat_h, lat_w = latent_masks.shape
    tokens = F.interpolate(latent_masks[None].float(), size=(lat_h // 2, lat_w // 2), mode="nearest")[0] > 0
    names = ("speaker 1", "speaker 2", "background")
    for name, cls in zip(names, tokens):
        if not bool(cls.any()):
            raise MaskError(f"speaker masks: the {name} region covers no token at the model's token grid "
                            f"({lat_h // 2}x{lat_w // 2}, 16 pixels per token); make that region larger or "
                            "leave some background outside both speakers")


def speaker_masks(speakers: int, src_h: int, src_w: int, height: int, width: int,
                  masks: torch.Tensor | None = None) -> torch.Tensor:
    """Latent-size routing masks for a generation: user/box masks at source size, or the default rule."""
    if speakers == 1:
        full = single_speaker_masks(src_h, src_w)
    elif masks is None:
        full = halves_masks(src_h, src_w)
    else:
        if masks.dim() != 3 or masks.shape[0] != 3:
            raise MaskError(f"speaker masks must be [3, H, W] (speaker 1, speaker 2, background), got "
                            f"{tuple(masks.shape)}")
        full = masks
    latent = to_latent(fit_masks(full, height, width), height // 8, width // 8)
    check_token_coverage(latent, speakers)
    return latent
