"""Wan2.1 I2V DiT with InfiniteTalk / MultiTalk audio cross-attention blocks.

Numerics follow the official InfiniteTalk implementation (``wan/modules/multitalk_model.py``);
module attribute paths equal the official checkpoint keys, so loading is a strict
``load_state_dict``. Layers come from the injected ``operations`` namespace. Activations run in the
compute dtype (the patch embedding's weight dtype unless ``compute_dtype`` is set); modulation,
residual updates, norms and the speaker-routing map run in fp32 as in the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .audio_adapter import (MAX_SPEAKERS, AudioCrossAttention, AudioProjModel, RoutingMap, check_class_masks,
                            routing_positions, token_class_masks, split_latent_audio)
from .compile_guard import CompileFallback
from .ops import TorchOps
from .rope import apply_rope_3d, rope_table_3d
from .sequence_parallel import LOCAL, TokenView

CLIP_DIM = 1280
WAV2VEC_LAYERS, WAV2VEC_DIM = 12, 768

# Official constructor kwargs with the Wan2.1-I2V-14B values (config.json + class defaults).
DEFAULT_CONFIG = {
    "model_type": "i2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 36, "dim": 5120,
    "ffn_dim": 13824, "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 40,
    "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "audio_window": 5,
    "intermediate_dim": 512, "output_dim": 768, "context_tokens": 32, "vae_scale": 4,
    "norm_input_visual": True, "norm_output_audio": True, "weight_init": False,
}


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Non-affine LayerNorm computed in fp32, returned in x's dtype (the reference's WanLayerNorm)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LN(x)·(1+scale)+shift in fp32 (shift/scale are fp32), back to x's dtype."""
    return (_layer_norm(x, eps).float() * (1 + scale) + shift).to(x.dtype)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps -> [B, dim] = [cos(t·ω_k), sin(t·ω_k)], ω_k = 10000^(−k/(dim/2)); float64 -> fp32."""
    half = dim // 2
    pos = t.to(torch.float64)
    omega = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64).div(half))
    angles = torch.outer(pos, omega)  # [B, half]
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


class RMSNorm(nn.Module):
    """x·rsqrt(mean x² + eps)·weight, normalised in fp32 (parameter name ``weight``)."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class SelfAttention(nn.Module):
    """Full self-attention over all video tokens with qk RMSNorm and 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, operations, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k = operations.Linear(dim, dim, **kw), operations.Linear(dim, dim, **kw)
        self.v, self.o = operations.Linear(dim, dim, **kw), operations.Linear(dim, dim, **kw)
        self.norm_q = RMSNorm(dim, eps, **kw) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps, **kw) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], view: TokenView):
        """x [B, L, dim] -> (out [B, L, dim], q, k [B, L, H, D] after RoPE, for speaker routing).
        Under sequence parallelism L is this rank's shard and ``view.attention`` reaches the rest."""
        b, seq, dim = x.shape
        heads = (b, seq, self.num_heads, self.head_dim)
        q = apply_rope_3d(self.norm_q(self.q(x)).view(heads), rope)  # [B, L, H, D]
        k = apply_rope_3d(self.norm_k(self.k(x)).view(heads), rope)  # [B, L, H, D]
        v = self.v(x).view(heads)                                     # [B, L, H, D]
        out = view.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, H, L, D]
        return self.o(out.transpose(1, 2).reshape(b, seq, dim)), q, k


class I2VCrossAttention(nn.Module):
    """Cross-attention to text tokens plus a separate branch to CLIP image tokens; outputs summed before ``o``."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, operations, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        for name in ("q", "k", "v", "o", "k_img", "v_img"):
            setattr(self, name, operations.Linear(dim, dim, **kw))
        for name in ("norm_q", "norm_k", "norm_k_img"):
            setattr(self, name, RMSNorm(dim, eps, **kw) if qk_norm else nn.Identity())

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, L, dim] -> [B, H, L, D]

    def forward(self, x: torch.Tensor, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], text [B, text_len, dim], image [B, 257, dim] -> [B, L, dim]."""
        q = self._heads(self.norm_q(self.q(x)))
        out_text = attention(q, self._heads(self.norm_k(self.k(text))), self._heads(self.v(text)))
        out_img = attention(q, self._heads(self.norm_k_img(self.k_img(image))), self._heads(self.v_img(image)))
        out = (out_text + out_img).transpose(1, 2).flatten(2)  # [B, H, L, D] -> [B, L, dim]
        return self.o(out)


class WanAttentionBlock(nn.Module):
    """Self-attention, text/image cross-attention, audio cross-attention, FFN (modulated by e0)."""

    def __init__(self, cfg: dict, operations, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        dim, heads, eps = cfg["dim"], cfg["num_heads"], cfg["eps"]
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim, **kw) / dim ** 0.5)
        self.self_attn = SelfAttention(dim, heads, cfg["qk_norm"], eps, operations, **kw)
        self.norm3 = (operations.LayerNorm(dim, eps=eps, elementwise_affine=True, **kw)
                      if cfg["cross_attn_norm"] else nn.Identity())
        self.cross_attn = I2VCrossAttention(dim, heads, cfg["qk_norm"], eps, operations, **kw)
        self.norm_x = (operations.LayerNorm(dim, eps=eps, elementwise_affine=True, **kw)
                       if cfg["norm_input_visual"] else nn.Identity())
        self.audio_cross_attn = AudioCrossAttention(dim, cfg["output_dim"], heads, operations, **kw)
        self.ffn = nn.Sequential(operations.Linear(dim, cfg["ffn_dim"], **kw), nn.GELU(approximate="tanh"),
                                 operations.Linear(cfg["ffn_dim"], dim, **kw))
        self.routing = RoutingMap()  # no parameters: adds no checkpoint keys

    def forward(self, x, e0, text, image, audio_tokens, grid, rope, class_masks, speakers, view=None):
        """x [B, L, dim]; e0 [B, 6, dim] fp32; class_masks [3, Nh·Nw] bool or None (no routing map);
        view: which token rows x holds (models/sequence_parallel.py; None: all of them)."""
        view = view or LOCAL.view(x.shape[1])
        frame_tokens = grid[1] * grid[2]
        m = (self.modulation.float() + e0).chunk(6, dim=1)  # 6 × [B, 1, dim] fp32
        # 1. Self-attention (its q/k also feed the speaker-routing map).
        y, q, k = self.self_attn(_modulate(x, m[0], m[1], self.eps), rope, view)
        x = (x.float() + y.float() * m[2]).to(x.dtype)
        positions = None
        if class_masks is not None:
            keys = view.frame0_keys(k, frame_tokens)  # the first latent frame's keys, from any rank
            class_map = self.routing(q, keys, class_masks, frame_tokens)  # [B, 3, L]
            if speakers == MAX_SPEAKERS:
                positions = routing_positions(class_map, view.extrema)  # [B, L]
        # 2. Text + image cross-attention.
        x = x + self.cross_attn(self.norm3(x), text, image)
        # 3. Audio cross-attention, per latent frame.
        x = x + self.audio_cross_attn(self.norm_x(x), audio_tokens, frame_tokens, positions, view.start)
        # 4. Feed-forward.
        y = self.ffn(_modulate(x, m[3], m[4], self.eps))
        return (x.float() + y.float() * m[5]).to(x.dtype)


class Head(nn.Module):
    """Final modulated LN + Linear to (patch volume × out_dim) values per token; modulated by e, not e0."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float, operations, device, dtype):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 2, dim, device=device, dtype=dtype) / dim ** 0.5)
        self.head = operations.Linear(dim, out_dim * math.prod(patch_size), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e[:, None]).chunk(2, dim=1)  # 2 × [B, 1, dim]
        return self.head(_modulate(x, shift, scale, self.eps))  # [B, L, prod(patch)·out_dim]


class MLPProj(nn.Module):
    """CLIP tokens -> dim: LN -> Linear -> GELU -> Linear -> LN (torch default eps 1e-5, as the reference)."""

    def __init__(self, in_dim: int, out_dim: int, operations, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.proj = nn.Sequential(operations.LayerNorm(in_dim, **kw), operations.Linear(in_dim, in_dim, **kw),
                                  nn.GELU(), operations.Linear(in_dim, out_dim, **kw),
                                  operations.LayerNorm(out_dim, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class WanModel(nn.Module):
    """Wan2.1 I2V DiT + InfiniteTalk/MultiTalk audio blocks; takes exactly the official constructor kwargs.

    ``model(x, t, context, clip_fea, y, audio, ref_target_masks=None) -> velocity [B, out_dim, T, H, W]``
    (see :meth:`forward`). ``model.config`` is the resolved kwargs dict. For the real model build it
    under ``torch.device("meta")`` and materialise with ``load_state_dict(sd, assign=True)``: there are
    no buffers (the RoPE tables are computed on the device of the activations and cached in rope.py).
    """

    def __init__(self, model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=5120,
                 ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16, num_heads=40, num_layers=40,
                 window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, audio_window=5,
                 intermediate_dim=512, output_dim=768, context_tokens=32, vae_scale=4,
                 norm_input_visual=True, norm_output_audio=True, weight_init=False,
                 operations=TorchOps, device=None, dtype=None):
        super().__init__()
        cfg = {k: v for k, v in locals().items() if k in DEFAULT_CONFIG}
        _validate_config(cfg)
        self.config = cfg
        kw = {"device": device, "dtype": dtype}
        self.patch_size, self.text_len, self.dim, self.out_dim = tuple(patch_size), text_len, dim, out_dim
        self.freq_dim, self.num_heads, self.vae_scale, self.eps = freq_dim, num_heads, vae_scale, eps
        self.compute_dtype: torch.dtype | None = None  # None: the patch embedding's weight dtype
        self.capture_routing_map = False  # tests: also compute the (unused) map for one speaker
        # Who holds which video tokens: LOCAL (all, here) or a sequence-parallel group injected by a
        # worker (models/sequence_parallel.py); not a module, so it adds no checkpoint keys.
        self.sequence = LOCAL

        self.patch_embedding = operations.Conv3d(in_dim, dim, kernel_size=self.patch_size,
                                                 stride=self.patch_size, **kw)
        self.text_embedding = nn.Sequential(operations.Linear(text_dim, dim, **kw), nn.GELU(approximate="tanh"),
                                            operations.Linear(dim, dim, **kw))
        self.time_embedding = nn.Sequential(operations.Linear(freq_dim, dim, **kw), nn.SiLU(),
                                            operations.Linear(dim, dim, **kw))
        self.time_projection = nn.Sequential(nn.SiLU(), operations.Linear(dim, dim * 6, **kw))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg, operations, **kw) for _ in range(num_layers))
        self.head = Head(dim, out_dim, self.patch_size, eps, operations, **kw)
        self.img_emb = MLPProj(CLIP_DIM, dim, operations, **kw)
        self.audio_proj = AudioProjModel(seq_len=audio_window, seq_len_vf=audio_window + vae_scale - 1,
                                         blocks=WAV2VEC_LAYERS, channels=WAV2VEC_DIM,
                                         intermediate_dim=intermediate_dim, output_dim=output_dim,
                                         context_tokens=context_tokens, norm_output_audio=norm_output_audio,
                                         operations=operations, **kw)
        if weight_init and torch.device(device or "cpu").type != "meta":
            self._init_weights()

    @classmethod
    def from_config(cls, config: dict, operations=TorchOps, device=None, dtype=None) -> "WanModel":
        """Build from a config dict (e.g. a checkpoint's config.json); missing keys take 14B defaults."""
        known = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(known) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"WanModel config has unknown keys {unknown}; expected a subset of "
                             f"{sorted(DEFAULT_CONFIG)} (the official WanModel constructor kwargs)")
        return cls(**known, operations=operations, device=device, dtype=dtype)

    def compile_blocks(self, fallback: bool = False, passthrough: tuple = ()) -> None:
        """torch.compile each block's forward; with modules inlined and parameters as graph inputs one
        graph serves all blocks (4.30 -> 3.14 s per 480p forward on an H100, docs/PERFORMANCE.md).
        ``fallback``: a compile failure (at any call) logs one warning and the blocks run eagerly from
        then on (models/compile_guard.py); without it the failure propagates (benchmarks)."""
        import torch._dynamo
        cfg = torch._dynamo.config
        cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
        cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 512)
        guard = CompileFallback(self.uncompile_blocks, passthrough) if fallback else None
        self.compile_guard = guard
        for block in self.blocks:
            eager = block.forward
            block.forward = guard.wrap(eager, dynamic=False) if guard else torch.compile(eager, dynamic=False)

    def uncompile_blocks(self) -> None:
        for block in self.blocks:
            block.__dict__.pop("forward", None)

    def compile_failed(self) -> str | None:
        """Why the guarded compile gave up (None: it did not, or nothing was compiled with fallback)."""
        guard = getattr(self, "compile_guard", None)
        return guard.failed if guard else None

    def forward(self, x, t, context, clip_fea, y, audio, ref_target_masks=None, block_cache=None):
        """Velocity prediction.

        x [B, 16, T, H, W] noisy latent; t [B] timestep (0..1000, shifted); context [B, Lt, text_dim]
        (Lt <= text_len, zero-padded inside); clip_fea [B, 257, 1280]; y [B, 20, T, H, W];
        audio [N, F, 5, 12, 768] for N = 1 or 2 speakers, F = vae_scale·(T−1)+1 (shared by the batch);
        ref_target_masks [3, H, W] (speaker 1, speaker 2, background) or None (one speaker only).
        block_cache: optional step cache around the block stack (e.g. the official TeaCache): an object with
        ``reuse(e0, x) -> tokens | None`` (called with e0 [B, 6, dim] fp32 and the block-0 input x [B, L, dim];
        a tensor replaces the whole block stack's output) and ``store(x_in, x_out)`` (called after the blocks
        ran). Returns [B, out_dim, T, H, W] float32.
        """
        dtype = self.compute_dtype or self.patch_embedding.weight.dtype
        # 1. Patch embedding: [B, 36, T, H, W] -> [B, dim, T, H/2, W/2] -> tokens [B, L, dim].
        h = self.patch_embedding(torch.cat([x, y], dim=1).to(dtype))
        grid = tuple(h.shape[2:])
        h = h.flatten(2).transpose(1, 2)  # [B, L, dim], (t, h, w) row-major
        # 2. Time embedding (kept fp32 for the modulation).
        e, e0 = self.time_modulation(t.to(h.device), dtype)
        # 3. The block stack, or the cache's stand-in for it (then no text/audio/block work runs).
        # The blocks run on this device's token rows (all of them unless sequence parallel).
        cached = block_cache.reuse(e0, h) if block_cache is not None else None
        if cached is not None:
            h = cached
        else:
            view = self.sequence.view(h.shape[1])
            out = self._blocks(view.scatter(h), e0, grid, context, clip_fea, audio, ref_target_masks, dtype,
                               view)
            if block_cache is None:  # gather the head's output: 64 values a token instead of dim
                return self.unpatchify(view.gather(self.head(out, e)), grid).float()
            out = view.gather(out)   # the cache keeps whole-sequence tokens
            block_cache.store(h, out)
            h = out
        # 4. Head and unpatchify.
        return self.unpatchify(self.head(h, e), grid).float()

    def time_modulation(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> (e [B, dim], e0 [B, 6, dim]), both fp32: the head's and the blocks' modulation (e0 is
        also what TeaCache compares)."""
        sinus = sinusoidal_embedding(t, self.freq_dim)  # [B, freq_dim] fp32
        e = self.time_embedding(sinus.to(dtype)).float()  # [B, dim]
        e0 = self.time_projection(e.to(dtype)).float().unflatten(1, (6, self.dim))  # [B, 6, dim]
        return e, e0

    def _blocks(self, h, e0, grid, context, clip_fea, audio, ref_target_masks, dtype,
                view: TokenView) -> torch.Tensor:
        """Text, CLIP and audio context, then every block: tokens [B, rows, dim] -> [B, rows, dim] (``view``:
        which rows of the video these are; all of them on one device)."""
        text = self.text_embedding(self._pad_text(context.to(dtype)))  # [B, text_len, dim]
        image = self.img_emb(clip_fea.to(dtype))  # [B, 257, dim]
        # Audio tokens per latent frame, speakers concatenated on the token axis.
        audio_tokens, speakers = self._audio_tokens(audio.to(device=h.device, dtype=dtype), grid[0])
        audio_tokens = audio_tokens.expand(h.shape[0], -1, -1, -1)  # [B, T, 32·N, C]
        # Speaker class masks (only where the routing map is used).
        class_masks = self._class_masks(ref_target_masks, grid, speakers, h.device)
        rope = rope_table_3d(grid, self.dim // self.num_heads, h.device)
        rope = tuple(view.scatter(table, dim=0) for table in rope)  # this device's rows
        for block in self.blocks:
            h = block(h, e0, text, image, audio_tokens, grid, rope, class_masks, speakers, view)
        return h

    def _pad_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, Lt, text_dim] -> [B, text_len, text_dim] zero-padded (no text mask: all rows are attended)."""
        extra = self.text_len - context.shape[1]
        if extra < 0:
            raise ValueError(f"context has {context.shape[1]} text tokens; at most text_len={self.text_len} "
                             f"are supported. Trim the T5 output to its real token count.")
        return F.pad(context, (0, 0, 0, extra))

    def _audio_tokens(self, audio: torch.Tensor, frames: int) -> tuple[torch.Tensor, int]:
        """audio [N, F, 5, 12, 768] -> ([1, T, 32·N, C] speaker 1 first, N)."""
        speakers, video_frames = audio.shape[0], audio.shape[1]
        expected = self.vae_scale * (frames - 1) + 1
        if audio.dim() != 5 or video_frames != expected or not 1 <= speakers <= MAX_SPEAKERS:
            raise ValueError(f"audio must be [speakers (1 or 2), {expected}, window, 12, 768] for {frames} latent "
                             f"frames; got {tuple(audio.shape)}. Window the wav2vec features per video frame.")
        tokens = self.audio_proj(*split_latent_audio(audio, self.vae_scale))  # [N, T, 32, C]
        return tokens.transpose(0, 1).flatten(1, 2)[None], speakers  # [1, T, N·32, C]

    def _class_masks(self, ref_target_masks, grid, speakers: int, device) -> torch.Tensor | None:
        """Token-level class masks [3, Nh·Nw] when the routing map is needed, else None."""
        if speakers < MAX_SPEAKERS and not self.capture_routing_map:
            return None  # one speaker: the map would have no effect
        tokens_hw = (grid[1], grid[2])
        if ref_target_masks is None:
            if speakers == MAX_SPEAKERS:
                raise ValueError("two speakers need ref_target_masks [3, H, W] (speaker 1, speaker 2, "
                                 "background); connect the InfiniteTalk Speaker Masks output")
            return torch.ones(3, tokens_hw[0] * tokens_hw[1], dtype=torch.bool, device=device)
        masks = token_class_masks(ref_target_masks.to(device), tokens_hw)
        check_class_masks(masks)
        return masks

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        """[B, L, pt·ph·pw·C] (C fastest) -> [B, C, T·pt, H·ph, W·pw]."""
        b, c = x.shape[0], self.out_dim
        pt, ph, pw = self.patch_size
        x = x.view(b, *grid, pt, ph, pw, c)  # [B, T, Nh, Nw, pt, ph, pw, C]
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)  # [B, C, T, pt, Nh, ph, Nw, pw]
        return x.reshape(b, c, grid[0] * pt, grid[1] * ph, grid[2] * pw)

    def _init_weights(self) -> None:
        """Random init for training-from-scratch experiments (checkpoints overwrite every parameter)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.head.head.weight)


def _validate_config(cfg: dict) -> None:
    if cfg["model_type"] != "i2v":
        raise ValueError(f"WanModel: model_type {cfg['model_type']!r} is not supported; InfiniteTalk uses the "
                         f"Wan2.1 image-to-video DiT (model_type 'i2v', in_dim 36)")
    if cfg["dim"] % cfg["num_heads"]:
        raise ValueError(f"WanModel: dim {cfg['dim']} is not divisible by num_heads {cfg['num_heads']}")
    if tuple(cfg["window_size"]) != (-1, -1):
        raise ValueError(f"WanModel: window_size {cfg['window_size']} (local attention) is not supported; "
                         f"the official checkpoints use (-1, -1)")
