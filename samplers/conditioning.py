"""Image-to-video conditioning: resolution buckets, resize/crop, the frame mask + VAE latent ``y``, and the Wan 2.1
latent normalisation that the host VAE leaves to us.

Numerics follow the official InfiniteTalk pipeline: the reference's aspect ratio h/w picks the nearest bucket of
ASPECT_RATIO_627 (480p) or ASPECT_RATIO_960 (720p); the image is resized to cover (bilinear) and centre-cropped
(top = round((H - h)/2)). The host VAE does NOT apply the Wan latent mean/std: call ``normalize_latent`` after
encoding and ``denormalize_latent`` before decoding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# h/w ratio -> (height, width); official tables (values are facts of the released model's training buckets).
ASPECT_RATIO_627 = {
    0.26: (320, 1216), 0.38: (384, 1024), 0.50: (448, 896), 0.67: (512, 768), 0.82: (576, 704),
    1.00: (640, 640), 1.22: (704, 576), 1.50: (768, 512), 1.86: (832, 448), 2.00: (896, 448),
    2.50: (960, 384), 2.83: (1088, 384), 3.60: (1152, 320), 3.80: (1216, 320), 4.00: (1280, 320)}
ASPECT_RATIO_960 = {
    0.22: (448, 2048), 0.29: (512, 1792), 0.36: (576, 1600), 0.45: (640, 1408), 0.55: (704, 1280),
    0.63: (768, 1216), 0.76: (832, 1088), 0.88: (896, 1024), 1.00: (960, 960), 1.14: (1024, 896),
    1.31: (1088, 832), 1.50: (1152, 768), 1.58: (1216, 768), 1.82: (1280, 704), 1.91: (1344, 704),
    2.20: (1408, 640), 2.30: (1472, 640), 2.67: (1536, 576), 2.89: (1664, 576), 3.62: (1856, 512),
    3.75: (1920, 512)}
BUCKETS = {"480p": ASPECT_RATIO_627, "720p": ASPECT_RATIO_960}

# Wan 2.1 VAE per-channel latent statistics (z_dim 16).
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
VAE_STRIDE = (4, 8, 8)


def target_size(height: int, width: int, resolution: str = "480p",
                override: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of the generated video for a reference of ``height x width``.

    ``override`` = (height, width), multiples of 16, replaces the bucket choice."""
    if override is not None:
        oh, ow = override
        if oh <= 0 or ow <= 0 or oh % 16 or ow % 16:
            raise ValueError(f"width/height override must be positive multiples of 16, got {ow}x{oh}")
        return oh, ow
    if resolution not in BUCKETS:
        raise ValueError(f"resolution must be one of {sorted(BUCKETS)}, got {resolution!r}")
    ratio = height / width
    table = BUCKETS[resolution]
    best = sorted(table, key=lambda key: abs(key - ratio))[0]  # stable: ties keep table order
    return table[best]


def cover_resize_crop(frames: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``frames`` [N, H, W, C] to cover height x width (aspect kept), then centre-crop."""
    _, src_h, src_w, _ = frames.shape
    if (src_h, src_w) == (height, width):
        return frames
    scale = max(height / src_h, width / src_w)
    new_h, new_w = math.ceil(scale * src_h), math.ceil(scale * src_w)
    x = frames.permute(0, 3, 1, 2).float()
    if mode == "nearest":
        x = F.interpolate(x, size=(new_h, new_w), mode="nearest")
    else:  # PIL-like bilinear (antialiased when shrinking)
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((new_h - height) / 2)), int(round((new_w - width) / 2))
    x = x[:, :, top:top + height, left:left + width]
    return x.permute(0, 2, 3, 1).to(frames.dtype).contiguous()


def frame_mask(frame_num: int, lat_h: int, lat_w: int, known_frames: int = 1) -> torch.Tensor:
    """i2v mask [1, 4, T, lat_h, lat_w]: 1 on the ``known_frames`` given frames; frame 0 is counted 4 times so
    the 4(T-1)+1 frames fold into 4 channels per latent frame."""
    msk = torch.zeros(1, frame_num, lat_h, lat_w)
    msk[:, :known_frames] = 1
    msk = torch.cat([msk[:, :1].repeat(1, 4, 1, 1), msk[:, 1:]], dim=1)  # [1, 4T, h, w]
    return msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)  # [1, 4, T, h, w]


def padded_clip(frames: torch.Tensor, frame_num: int) -> torch.Tensor:
    """[n, H, W, 3] in 0..1 followed by mid-grey (0 in the VAE's [-1, 1]) up to ``frame_num`` frames."""
    n, h, w, c = frames.shape
    grey = torch.full((frame_num - n, h, w, c), 0.5, dtype=frames.dtype, device=frames.device)
    return torch.cat([frames, grey], dim=0)


def build_y(latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """y [1, 20, T, h, w] = [frame mask (4) ; VAE latent (16)] from latent [16, T, h, w]."""
    return torch.cat([mask.to(latent.device, latent.dtype), latent[None]], dim=1)


def _stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1,) + (1,) * (z.dim() - 1) if z.shape[0] == 16 else (1, -1) + (1,) * (z.dim() - 2)
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=z.device).view(shape)
    inv_std = 1.0 / torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=z.device).view(shape)
    return mean, inv_std


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Raw Wan 2.1 VAE latent ([16, T, h, w] or [B, 16, T, h, w]) -> the DiT's latent space: (z - mean) / std."""
    mean, inv_std = _stats(z)
    return ((z.float() - mean) * inv_std).to(z.dtype)


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """The DiT's latent space -> raw Wan 2.1 VAE latent: z * std + mean."""
    mean, inv_std = _stats(z)
    return (z.float() / inv_std + mean).to(z.dtype)
