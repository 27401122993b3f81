"""Pieces of the sequence-parallel path that need no second process: the uneven splits, the audio
cross-attention of a shard that starts inside a latent frame, and the missing-Ray error."""
from __future__ import annotations

import sys

import pytest
import torch

from infinitetalk.models.audio_adapter import AudioCrossAttention
from infinitetalk.models.sequence_parallel import LOCAL, split_sizes
from infinitetalk.parallel.pool import import_ray


def test_split_sizes_are_uneven_but_complete():
    assert split_sizes(72, 2) == [36, 36]
    assert split_sizes(4, 3) == [2, 1, 1]          # the tiny DiT's heads on 3 workers
    assert split_sizes(48, 5) == [10, 10, 10, 9, 9]
    assert split_sizes(2, 3) == [1, 1, 0]


def test_local_view_is_the_whole_sequence():
    view = LOCAL.view(10)
    x = torch.randn(1, 10, 4)
    assert (view.start, view.stop, view.total) == (0, 10, 10)
    assert view.scatter(x) is not None and torch.equal(view.scatter(x), x) and view.gather(x) is x


@pytest.mark.parametrize("positions", [False, True], ids=["one_speaker", "two_speakers"])
def test_audio_attention_of_shards_equals_the_whole(positions):
    torch.manual_seed(0)
    frames, frame_tokens, dim, heads = 3, 5, 16, 2
    layer = AudioCrossAttention(dim, 8, heads).eval()
    x = torch.randn(1, frames * frame_tokens, dim)
    audio = torch.randn(1, frames, 4, 8)
    pos = torch.rand(1, frames * frame_tokens) * 24 if positions else None
    whole = layer(x, audio, frame_tokens, pos)
    for start, stop in [(0, 7), (7, 15), (3, 4), (4, 11), (10, 15)]:    # inside frames and across them
        part = layer(x[:, start:stop], audio, frame_tokens, None if pos is None else pos[:, start:stop], start)
        torch.testing.assert_close(part, whole[:, start:stop], atol=1e-6, rtol=0)


def test_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)    # import ray -> ImportError
    with pytest.raises(RuntimeError, match=r"gpus > 1 needs Ray.*pip install ray.*set gpus to 1"):
        import_ray()


def test_teacache_with_workers_is_one_clear_error():
    from infinitetalk.parallel.pool import ParallelDiT, WorkerPool
    dit = ParallelDiT(WorkerPool({}, 2, device="cpu", idle_s=0), torch.float32)   # never started
    x = torch.zeros(1, 16, 1, 2, 2)
    with pytest.raises(ValueError, match=r"teacache_thresh > 0 does not work with gpus > 1.*set teacache_thresh to 0"):
        dit(x, torch.zeros(1), x, x, x, x, block_cache=object())
    assert dit.pool.actors == []
