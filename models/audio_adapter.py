"""InfiniteTalk / MultiTalk audio adapter: audio projection, per-block audio cross-attention and
the two-speaker routing (class map + 1-D RoPE "L-RoPE").

Numerics follow the official InfiniteTalk implementation (MeiGen-AI/InfiniteTalk); parameter names
equal the official checkpoint keys (``audio_proj.*``, ``blocks.N.audio_cross_attn.*``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .ops import TorchOps
from .rope import apply_rope_1d
from .routing_kernel import routing_class_probs

# Routing ranges of the reference (class_range 24, class_interval 4): speaker 1 -> [0, 4],
# speaker 2 -> [20, 24], background -> 12; audio keys sit at each speaker's range centre.
SPEAKER1_RANGE = (0.0, 4.0)
SPEAKER2_RANGE = (20.0, 24.0)
BACKGROUND_POS = 12.0
MAX_SPEAKERS = 2


def split_latent_audio(audio: torch.Tensor, vae_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-video-frame audio windows into the first latent frame and the later ones.

    audio [N, F, W, layers, C] with F = vae_scale·(T−1)+1 video frames and W-entry windows.
    Returns first [N, 1, W, layers, C] (video frame 0's whole window) and later
    [N, T−1, 8, layers, C]: per group of vae_scale video frames, entries 0..W/2 of the first frame,
    the centre entry of each middle frame and entries W/2..W−1 of the last frame.
    """
    n, frames, window = audio.shape[:3]
    if (frames - 1) % vae_scale:
        raise ValueError(f"audio has {frames} video frames; expected vae_scale·(T−1)+1 = {vae_scale}k+1 "
                         f"(e.g. 81 for 21 latent frames). Slice the audio windows to the clip length.")
    mid = window // 2
    first = audio[:, :1]
    groups = audio[:, 1:].unflatten(1, (-1, vae_scale))  # [N, T−1, vae_scale, W, layers, C]
    later = torch.cat([groups[:, :, 0, : mid + 1],         # first frame: entries 0..mid
                       groups[:, :, 1:-1, mid],            # middle frames: centre entry
                       groups[:, :, -1, mid:]], dim=2)      # last frame: entries mid..W−1
    return first, later  # later: [N, T−1, 8, layers, C] for W=5, vae_scale=4


class AudioProjModel(nn.Module):
    """wav2vec windows -> ``context_tokens`` audio tokens per latent frame (official ``audio_proj``)."""

    def __init__(self, seq_len: int = 5, seq_len_vf: int = 8, blocks: int = 12, channels: int = 768,
                 intermediate_dim: int = 512, output_dim: int = 768, context_tokens: int = 32,
                 norm_output_audio: bool = True, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = operations.Linear(seq_len * blocks * channels, intermediate_dim, **kw)
        self.proj1_vf = operations.Linear(seq_len_vf * blocks * channels, intermediate_dim, **kw)
        self.proj2 = operations.Linear(intermediate_dim, intermediate_dim, **kw)
        self.proj3 = operations.Linear(intermediate_dim, context_tokens * output_dim, **kw)
        # torch's default eps 1e-5 here (not the DiT's 1e-6): the reference's nn.LayerNorm default.
        self.norm = operations.LayerNorm(output_dim, **kw) if norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first [N, 1, 5, layers, C], later [N, T−1, 8, layers, C] -> [N, T, tokens, output_dim]."""
        first = F.relu(self.proj1(first.flatten(2)))     # [N, 1, inter]
        later = F.relu(self.proj1_vf(later.flatten(2)))  # [N, T−1, inter]
        h = F.relu(self.proj2(torch.cat([first, later], dim=1)))  # [N, T, inter]
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))  # [N, T, tokens, C]
        return self.norm(tokens)


def token_class_masks(ref_target_masks: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] masks (speaker 1, speaker 2, background) -> bool [3, Nh·Nw] at token resolution.

    Nearest resize (source index floor(dst·in/out)), then threshold > 0.
    """
    if ref_target_masks.dim() != 3 or ref_target_masks.shape[0] != 3:
        raise ValueError(f"ref_target_masks must be [3, H, W] (speaker 1, speaker 2, background); "
                         f"got shape {tuple(ref_target_masks.shape)}")
    resized = F.interpolate(ref_target_masks[None].float(), size=grid_hw, mode="nearest")[0]
    return (resized > 0).flatten(1)  # [3, Nh·Nw]


def check_class_masks(masks: torch.Tensor) -> None:
    """Raise ValueError if a class mask owns no token at token resolution.

    The official code divides by the class area there and yields NaN for the whole output; we choose
    to fail early with a message naming the mask instead (every golden fixture has >= 1 token per class).
    """
    counts = masks.sum(-1).tolist()
    names = ("speaker 1", "speaker 2", "background")
    for name, count in zip(names, counts):
        if count == 0:
            raise ValueError(
                f"speaker mask '{name}' covers no token at token resolution (latent H/2 × W/2), so "
                f"speaker routing is undefined (the official code produces NaN). Make that mask larger, "
                f"or choose a different box so it covers at least one 16×16-pixel cell.")


# Head chunk of the routing map: at most this many fp32 probabilities live at once (1 GiB).
ROUTING_CHUNK_ELEMENTS = 2 ** 28


def routing_map(q: torch.Tensor, k: torch.Tensor, class_masks: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """Class attention map [B, 3, L] from the self-attention q/k after RoPE ([B, L, H, D]).

    Keys are the first latent frame's ``frame_tokens`` tokens; heads are split in two groups; per
    group: softmax over the reference keys, mean probability inside each class mask, mean over heads;
    the two group maps are averaged. Computed in fp32: top1−top2 margins can be ~1e-6. Heads go in
    chunks (batched matmuls, [B, h, L, S] probabilities bounded by ROUTING_CHUNK_ELEMENTS) instead of
    one by one: same fp32 math, far fewer and larger kernels.

    CUDA bf16/fp16 q/k go through the fused kernel of routing_kernel.py instead (scores from the
    bf16 values with fp32 accumulation, online fp32 softmax and class sums, no [L, S] tensor in
    memory); the CPU and fp32 inputs keep this exact fp32 path (the golden tests).
    """
    b, seq, heads, d = q.shape
    group = heads // 2
    masks = class_masks.to(device=q.device, dtype=torch.float32)  # [3, S]
    per_key = (masks / masks.sum(-1, keepdim=True)).t()  # [S, 3]: mean over each class's keys
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        per_head = routing_class_probs(q, k[:, :frame_tokens], per_key)  # [B, H, L, 3]
        groups = per_head[:, : 2 * group].unflatten(1, (2, group)).sum(2) / group  # [B, 2, L, 3]
        return ((groups[:, 0] + groups[:, 1]) / 2).transpose(1, 2)  # [B, 3, L]
    chunk = max(1, min(group, ROUTING_CHUNK_ELEMENTS // max(1, b * seq * frame_tokens)))
    total = None
    for g in range(2):
        acc = None
        for h0 in range(g * group, (g + 1) * group, chunk):
            h1 = min(h0 + chunk, (g + 1) * group)
            qh = q[:, :, h0:h1].float().transpose(1, 2) * d ** -0.5          # [B, h, L, D]
            kh = k[:, :frame_tokens, h0:h1].float().transpose(1, 2)           # [B, h, S, D]
            probs = (qh @ kh.transpose(-2, -1)).softmax(-1)                   # [B, h, L, S]
            per_class = (probs @ per_key).sum(1)                              # [B, L, 3]
            acc = per_class if acc is None else acc + per_class
        m = (acc / group).transpose(1, 2)  # [B, 3, L]: mean over the group's heads
        total = m if total is None else total + m
    return total / 2


def _min_max(row: torch.Tensor, lo: float, hi: float, extrema=None) -> torch.Tensor:
    """Min-max normalise [B, L] rows into [lo, hi] with the reference's +1e-8."""
    rmin = row.amin(-1, keepdim=True)
    rmax = row.amax(-1, keepdim=True)
    if extrema is not None:
        rmin, rmax = extrema(rmin, rmax)
    return (row - rmin) / (rmax - rmin + 1e-8) * (hi - lo) + lo


def routing_positions(class_map: torch.Tensor, extrema=None) -> torch.Tensor:
    """[B, 3, L] class map -> [B, L] 1-D RoPE positions of the visual tokens.

    Each token takes the position of its argmax class on the raw map (ties -> first): speaker 1/2
    scores are min-max normalised over all L tokens into [0, 4] / [20, 24]; background is 12.
    ``extrema(min, max) -> (min, max)`` makes the per-row extrema global when the L tokens are a
    shard (sequence parallelism, models/sequence_parallel.py).
    """
    scores = torch.stack([_min_max(class_map[:, 0], *SPEAKER1_RANGE, extrema),
                          _min_max(class_map[:, 1], *SPEAKER2_RANGE, extrema),
                          torch.full_like(class_map[:, 0], BACKGROUND_POS)], dim=1)  # [B, 3, L]
    winner = class_map.argmax(dim=1, keepdim=True)  # [B, 1, L]
    return scores.gather(1, winner)[:, 0]  # [B, L]


class AudioCrossAttention(nn.Module):
    """Per-latent-frame cross-attention from visual tokens to that frame's audio tokens
    (official ``audio_cross_attn``: ``q_linear``, ``kv_linear`` (K then V, heads contiguous), ``proj``)."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = operations.Linear(dim, dim, **kw)
        self.kv_linear = operations.Linear(audio_dim, 2 * dim, **kw)
        self.proj = operations.Linear(dim, dim, **kw)

    def forward(self, x: torch.Tensor, audio_tokens: torch.Tensor, frame_tokens: int,
                positions: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """x [B, rows, dim]: token rows ``offset .. offset+rows`` of the video (all of it on one device,
        a shard under sequence parallelism); audio_tokens [B, T, A, audio_dim] (A = 32·speakers,
        speaker 1 first); frame_tokens S = tokens per latent frame; positions [B, rows] routing
        positions (two speakers) or None (one speaker: no RoPE)."""
        b, rows, dim = x.shape
        h, d = self.num_heads, self.head_dim
        # A shard may start or end inside a frame: zero query rows pad it to whole frames (each query
        # row attends on its own, so the padding changes no real row) and are dropped after.
        first, lead = divmod(offset, frame_tokens)
        frames = -(-(lead + rows) // frame_tokens)
        tail = frames * frame_tokens - lead - rows
        q = F.pad(self.q_linear(x), (0, 0, lead, tail)).view(b * frames, frame_tokens, h, d).transpose(1, 2)
        kv = self.kv_linear(audio_tokens[:, first:first + frames].flatten(0, 1))  # [B·T', A, 2·dim]
        k, v = kv.unflatten(-1, (2, h, d)).permute(2, 0, 3, 1, 4).unbind(0)  # each [B·T', H, A, D]
        if positions is not None:
            positions = F.pad(positions, (lead, tail))
            q = apply_rope_1d(q, positions.reshape(b * frames, 1, -1))  # per-frame rows of positions
            k = apply_rope_1d(k, _audio_key_positions(k.shape[2], k.device))
        out = attention(q, k, v)  # [B·T', H, S, D]
        out = out.transpose(1, 2).reshape(b, frames * frame_tokens, dim)[:, lead:lead + rows]  # [B, rows, dim]
        return self.proj(out)


def _audio_key_positions(tokens: int, device: torch.device) -> torch.Tensor:
    """Speaker 1's audio tokens (first half) at 2, speaker 2's (second half) at 22."""
    pos = torch.full((tokens,), sum(SPEAKER2_RANGE) / 2, device=device)
    pos[: tokens // 2] = sum(SPEAKER1_RANGE) / 2
    return pos


class RoutingMap(nn.Module):
    """Parameter-free wrapper of :func:`routing_map`, a module so that hooks can observe the map."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, class_masks: torch.Tensor, frame_tokens: int) -> torch.Tensor:
        return routing_map(q, k, class_masks, frame_tokens)
