"""umT5-XXL encoder (the Wan / InfiniteTalk text encoder).

Numerics follow the official InfiniteTalk implementation (``wan/modules/t5.py``, encoder only):
RMS norms without mean subtraction, attention without 1/sqrt(d) scaling plus a per-block
relative-position bias, a gated-GELU(tanh) feed-forward and a final RMS norm. Parameter names equal
the keys of ``models_t5_umt5-xxl-enc-bf16.pth`` so loading is a strict ``load_state_dict``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .ops import TorchOps


class T5RMSNorm(nn.Module):
    """w * x * rsqrt(mean(x^2) + eps), statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class T5RelativeEmbedding(nn.Module):
    """Bidirectional bucketed relative-position bias: [1, heads, Lq, Lk]."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int = 128, device=None, dtype=None):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads, device=device, dtype=dtype)

    def buckets(self, lq: int, lk: int, device) -> torch.Tensor:
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]  # k - q
        half = self.num_buckets // 2
        bucket = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        # Log-spaced buckets beyond `exact`; clamp(min=1) only avoids log(0) where `exact` wins anyway.
        large = exact + (torch.log(rel.clamp(min=1).float() / exact)
                         / math.log(self.max_dist / exact) * (half - exact)).long()
        large = large.clamp(max=half - 1)
        return bucket + torch.where(rel < exact, rel, large)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        idx = self.buckets(lq, lk, self.embedding.weight.device)
        return self.embedding(idx).permute(2, 0, 1).unsqueeze(0)  # [Lq, Lk, H] -> [1, H, Lq, Lk]


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"umT5: dim_attn {dim_attn} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = operations.Linear(dim, dim_attn, bias=False, device=device, dtype=dtype)
        self.k = operations.Linear(dim, dim_attn, bias=False, device=device, dtype=dtype)
        self.v = operations.Linear(dim, dim_attn, bias=False, device=device, dtype=dtype)
        self.o = operations.Linear(dim_attn, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.num_heads
        q = self.q(x).view(b, -1, n, self.q.out_features // n)  # [B, L, H, D]
        k = self.k(x).view(b, -1, n, self.k.out_features // n)
        v = self.v(x).view(b, -1, n, self.v.out_features // n)
        # T5 folds the 1/sqrt(d) scale into its weights: no scaling here.
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias  # [B, H, Lq, Lk]
        probs = F.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.einsum("bnij,bjnc->binc", probs, v)  # [B, L, H, D]
        return self.o(out.reshape(b, -1, n * out.shape[-1]))


class T5FeedForward(nn.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.gate = nn.Sequential(operations.Linear(dim, dim_ffn, bias=False, device=device, dtype=dtype),
                                  nn.GELU(approximate="tanh"))
        self.fc1 = operations.Linear(dim, dim_ffn, bias=False, device=device, dtype=dtype)
        self.fc2 = operations.Linear(dim_ffn, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # fp16 activations of T5-XXL overflow; the reference clamps them back into range.
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


class T5Block(nn.Module):
    def __init__(self, dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos,
                 operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = T5RMSNorm(dim, **kw)
        self.attn = T5Attention(dim, dim_attn, num_heads, operations=operations, **kw)
        self.norm2 = T5RMSNorm(dim, **kw)
        self.ffn = T5FeedForward(dim, dim_ffn, operations=operations, **kw)
        self.pos_embedding = None if shared_pos else T5RelativeEmbedding(num_buckets, num_heads, **kw)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor, pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pos_embedding is not None:
            pos_bias = self.pos_embedding(x.shape[1], x.shape[1])
        # Padded keys get exactly the dtype minimum (not minimum + position bias), as in the reference.
        bias = torch.where(key_bias, pos_bias.to(x.dtype), torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Encoder-only umT5. ``forward(ids [B, L], mask [B, L]) -> hidden [B, L, dim]``.

    The real umt5-xxl: vocab 256384, dim 4096, dim_attn 4096, dim_ffn 10240, 64 heads, 24 layers,
    32 buckets, ``shared_pos=False`` (a relative-position table per block).
    """

    def __init__(self, vocab: int = 256384, dim: int = 4096, dim_attn: int = 4096, dim_ffn: int = 10240,
                 num_heads: int = 64, num_layers: int = 24, num_buckets: int = 32, shared_pos: bool = False,
                 dropout: float = 0.1, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        del dropout  # inference only; accepted so the official constructor kwargs work
        kw = dict(device=device, dtype=dtype)
        self.config = dict(vocab=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads,
                           num_layers=num_layers, num_buckets=num_buckets, shared_pos=shared_pos)
        self.token_embedding = nn.Embedding(vocab, dim, **kw)
        self.pos_embedding = T5RelativeEmbedding(num_buckets, num_heads, **kw) if shared_pos else None
        self.blocks = nn.ModuleList([
            T5Block(dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos, operations=operations, **kw)
            for _ in range(num_layers)])
        self.norm = T5RMSNorm(dim, **kw)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)  # [B, L, dim]
        if mask is None:
            mask = torch.ones_like(ids)
        key_bias = (mask != 0).to(x.device)[:, None, None, :]  # [B, 1, 1, Lk]
        pos_bias = self.pos_embedding(x.shape[1], x.shape[1]) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, key_bias, pos_bias)
        return self.norm(x)

    def encode_trimmed(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample hidden states cut to the real token count: ``[hidden[b, :mask[b].sum()]]``."""
        hidden = self(ids, mask)
        lengths = (mask != 0).sum(dim=1).tolist()
        return [hidden[b, :n] for b, n in enumerate(lengths)]
