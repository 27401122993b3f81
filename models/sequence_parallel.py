"""Sequence parallelism for the DiT: the video tokens split over the ranks of a torch.distributed group.

The DiT asks an injected *sequence* object for a :class:`TokenView` of each forward and routes the only
operations that need other ranks' tokens through it; every other layer works on its own rows:

* ``attention`` of the video self-attention: Ulysses (DeepSpeed-Ulysses, arXiv 2309.14509) with torch's
  ``all_to_all_single``: each rank trades its token rows of every head for all token rows of its heads,
  runs ordinary attention on those heads, and trades back. Token counts and head counts need not divide
  by the world size: splits are uneven (``split_sizes``), so there is no padding and no mask and each
  head's attention is the exact single-device one. A rank may own no head (4 heads on 3 ranks: 2, 1, 1).
* ``frame0_keys``: the two-speaker routing map scores every token against the first latent frame's keys,
  which live on the first rank(s): gathered once per block.
* ``extrema``: the routing positions are min-max normalised over all tokens: min/max all-reduced.
* ``gather``: the head output back to full length on every rank (each rank returns the same velocity).

:data:`LOCAL` (one device) is the identity of all of this, so the single-device path is unchanged.
No comfy, no Ray here: the worker pool (parallel/) builds the group and injects :class:`Ulysses`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .attention import attention


def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` ranks as evenly as possible, the first ``n % parts`` one larger."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


@dataclass(frozen=True)
class TokenView:
    """This rank's contiguous token rows ``[start, stop)`` of ``total``, and how to reach the others."""
    start: int
    stop: int
    total: int
    sequence: "Local"

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Full-length x -> this rank's rows along ``dim``."""
        return x.narrow(dim, self.start, self.stop - self.start)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Self-attention over ALL tokens: q/k/v [B, H, rows, D] of this rank -> [B, H, rows, D]."""
        return self.sequence.attention(self, q, k, v)

    def frame0_keys(self, k: torch.Tensor, frame_tokens: int) -> torch.Tensor:
        """k [B, rows, H, D] -> the first ``frame_tokens`` keys of the whole sequence [B, S, H, D]."""
        return self.sequence.frame0_keys(self, k, frame_tokens)

    def extrema(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-rank min / max -> the global ones (same shapes)."""
        return self.sequence.extrema(lo, hi)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, rows, C] of every rank -> [B, total, C] on every rank."""
        return self.sequence.gather(self, x)


class Local:
    """One device: the view is the whole sequence and every operation is the plain one."""

    world, rank = 1, 0

    def view(self, tokens: int) -> TokenView:
        return TokenView(0, tokens, tokens, self)

    def attention(self, view: TokenView, q, k, v) -> torch.Tensor:
        return attention(q, k, v)

    def frame0_keys(self, view: TokenView, k: torch.Tensor, frame_tokens: int) -> torch.Tensor:
        return k[:, :frame_tokens]

    def extrema(self, lo, hi):
        return lo, hi

    def gather(self, view: TokenView, x: torch.Tensor) -> torch.Tensor:
        return x


LOCAL = Local()


class Ulysses(Local):
    """Sequence parallel over ``group`` (default: the world group), one rank per device."""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def view(self, tokens: int) -> TokenView:
        if tokens < self.world:
            raise ValueError(f"{tokens} video tokens cannot be split over {self.world} workers; "
                             f"use fewer GPUs (gpus input) or a larger video")
        sizes = split_sizes(tokens, self.world)
        start = sum(sizes[: self.rank])
        return TokenView(start, start + sizes[self.rank], tokens, self)

    # -- Ulysses all-to-all ---------------------------------------------------------------------------
    def _exchange(self, send: list[torch.Tensor], recv_numel: list[int], like: torch.Tensor) -> list[torch.Tensor]:
        """Send ``send[j]`` (any shape) to rank j; receive ``recv_numel[i]`` elements from rank i (flat)."""
        flat = torch.cat([s.reshape(-1) for s in send])
        out = like.new_empty(sum(recv_numel))
        dist.all_to_all_single(out, flat, recv_numel, [s.numel() for s in send], group=self.group)
        return list(out.split(recv_numel))

    def attention(self, view: TokenView, q, k, v) -> torch.Tensor:
        b, heads, rows, d = q.shape
        tokens = split_sizes(view.total, self.world)
        head_sizes = split_sizes(heads, self.world)
        mine = head_sizes[self.rank]
        qkv = torch.stack([q, k, v])                               # [3, B, H, rows, D]
        send = list(qkv.split(head_sizes, dim=2))                  # rank j gets its heads, my rows
        parts = self._exchange(send, [3 * b * mine * n * d for n in tokens], q)
        full = torch.cat([p.view(3, b, mine, n, d) for p, n in zip(parts, tokens)], dim=3)  # [3,B,h,L,D]
        if mine:
            out = attention(full[0], full[1], full[2])            # [B, h, L, D]: exact per head
        else:
            out = full[0]                                          # no head here: nothing to compute
        back = list(out.split(tokens, dim=2))                     # rank i gets its rows of my heads
        parts = self._exchange(back, [b * h * rows * d for h in head_sizes], q)
        return torch.cat([p.view(b, h, rows, d) for p, h in zip(parts, head_sizes)], dim=1)

    # -- routing map support --------------------------------------------------------------------------
    def frame0_keys(self, view: TokenView, k: torch.Tensor, frame_tokens: int) -> torch.Tensor:
        tokens = split_sizes(view.total, self.world)
        starts = [sum(tokens[:i]) for i in range(self.world)]
        owned = [max(0, min(s + n, frame_tokens) - s) for s, n in zip(starts, tokens)]
        cap = max(owned)
        mine = k[:, : owned[self.rank]]
        send = torch.cat([mine, k.new_zeros(k.shape[0], cap - mine.shape[1], *k.shape[2:])], 1).contiguous()
        gathered = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(gathered, send, group=self.group)
        return torch.cat([g[:, :n] for g, n in zip(gathered, owned)], dim=1)

    def extrema(self, lo, hi):
        lo, hi = lo.contiguous().clone(), hi.contiguous().clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=self.group)
        return lo, hi

    def gather(self, view: TokenView, x: torch.Tensor) -> torch.Tensor:
        tokens = split_sizes(view.total, self.world)
        cap = tokens[0]                                            # the largest shard
        padded = torch.cat([x, x.new_zeros(x.shape[0], cap - x.shape[1], *x.shape[2:])], 1).contiguous()
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded, group=self.group)
        return torch.cat([g[:, :n] for g, n in zip(gathered, tokens)], dim=1)
