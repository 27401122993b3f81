"""One sequence-parallel rank of the DiT, inside a worker process (see actor.py).

It joins the torch.distributed group (NCCL on GPUs, gloo on the CPU), loads the DiT from the same
files as a single-GPU run (``load_dit``: memory-mapped reads, quantized files stay quantized, LoRAs
merged; no block streaming), injects :class:`~..models.sequence_parallel.Ulysses` and runs forwards.
Rank 0 returns the velocity; the others return None (every rank holds the same gathered result).
"""
from __future__ import annotations

import datetime
import logging

import torch
import torch.distributed as dist

from ..loaders.dit import load_dit
from ..models import attention, attention_backends
from ..models.sequence_parallel import Ulysses

log = logging.getLogger(__name__)
JOIN_TIMEOUT = datetime.timedelta(minutes=10)   # the slowest rank's weight loading comes first


class DitRank:
    def __init__(self, rank: int, world: int, address: str, load: dict, device: str, threads: int):
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        else:
            torch.cuda.set_device(self.device)
        load = dict(load)
        resolved = attention_backends.resolve(load.pop("attention", "auto"), self.device, "attention (DiT worker)")
        if resolved.backend != attention.get_backend():
            attention.set_backend(resolved.backend)
        self.attention = resolved.label
        self.model = load_dit(**load, device=self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method=f"tcp://{address}",
                                rank=rank, world_size=world, timeout=JOIN_TIMEOUT)
        self.model.sequence = Ulysses()

    def describe(self) -> dict:
        return {"rank": self.rank, "device": str(self.device), "config": dict(self.model.config),
                "attention": self.attention}

    def forward(self, args, kwargs):
        def move(v):
            return v.to(self.device) if isinstance(v, torch.Tensor) else v
        with torch.inference_mode():
            out = self.model(*[move(a) for a in args], **{k: move(v) for k, v in kwargs.items()})
        return out.cpu() if self.rank == 0 else None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
