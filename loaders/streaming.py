"""Where the DiT's weights live while it samples: whole on the GPU, or its blocks streamed from RAM.

``memory_budget_gb`` (Model Loader) > 0 and the DiT's weights larger than that -> streaming: the
non-block modules (patch/text/time embeddings, head, img_emb, audio_proj) sit on the GPU, the
transformer blocks stay in pinned host memory and ``models.block_streaming.BlockStreamer`` copies
them in one at a time (two GPU slots, block i+1 prefetched on a side stream while block i runs).

No comfy imports: ``loaders/host.py`` plugs ``StreamedDiT`` into the host's ModelPatcher, so the
decision and the byte counting are testable without the host (and without a GPU: the streamer is
injected).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GIB = 2**30
_ALIGN = 256  # BlockStreamer packs every tensor at a 256-byte boundary


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors as they are stored (int8/fp8 count 1 byte an element)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def weight_bytes(module: nn.Module) -> int:
    """Parameters AND buffers: quantized weights (quanto int8/fp8 ``weight_data``) are buffers."""
    return tensor_bytes(list(module.parameters()) + list(module.buffers()))


def packed_bytes(block: nn.Module) -> int:
    """One block as BlockStreamer packs it (each tensor rounded up to 256 bytes): a slot's size."""
    tensors = list(block.parameters()) + list(block.buffers())
    return sum((t.numel() * t.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN for t in tensors)


def streamed_gpu_bytes(module: nn.Module) -> int:
    """GPU bytes of the weights when the blocks are streamed: everything but the blocks, plus two
    slots as large as the largest packed block."""
    blocks = list(module.blocks)
    if not blocks:
        return weight_bytes(module)
    in_blocks = sum(weight_bytes(b) for b in blocks)
    return weight_bytes(module) - in_blocks + 2 * max(packed_bytes(b) for b in blocks)


@dataclass(frozen=True)
class Placement:
    stream: bool
    reason: str            # one line for the log


def choose_placement(total_bytes: int, budget_gb: float, device_type: str) -> Placement:
    """Whole on the GPU or streamed. ``device_type``: the host's torch device (``cuda``, ``cpu``…)."""
    need = total_bytes / GIB
    if budget_gb <= 0:
        return Placement(False, "memory_budget_gb = 0: the whole DiT goes onto the GPU")
    if device_type == "cpu":
        return Placement(False, "memory_budget_gb is ignored when ComfyUI runs on the CPU")
    if total_bytes <= budget_gb * GIB:
        return Placement(False, f"the DiT weights ({need:.2f} GiB) fit memory_budget_gb "
                                f"({budget_gb:g} GiB): the whole DiT goes onto the GPU")
    if device_type != "cuda":
        return Placement(False, f"the DiT weights ({need:.2f} GiB) exceed memory_budget_gb "
                                f"({budget_gb:g} GiB), but block streaming needs a CUDA GPU "
                                f"({device_type} loads the DiT whole)")
    return Placement(True, f"the DiT weights ({need:.2f} GiB) exceed memory_budget_gb ({budget_gb:g} "
                           f"GiB): the transformer blocks are streamed from pinned RAM")


def _move_non_blocks(module: nn.Module, device) -> None:
    """Every parameter/buffer outside ``module.blocks`` onto ``device`` (names and dtypes kept)."""
    in_blocks = {id(m) for m in module.blocks.modules()}
    with torch.inference_mode(False), torch.no_grad():
        for m in module.modules():
            if id(m) in in_blocks:
                continue
            for name, p in m._parameters.items():
                if p is not None:
                    p.data = p.data.to(device)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = b.to(device)


def _block_streamer(blocks, device):
    from ..models.block_streaming import BlockStreamer
    return BlockStreamer(blocks, device)


class StreamedDiT:
    """The streaming state of one DiT.

    ``load(device)``: the non-block modules onto ``device``; the blocks packed into pinned host memory
    once (first load) and bound to two GPU slots. ``offload()``: the slots are freed, every block
    tensor points at its pinned host copy and the rest goes back to ``host_device`` — a working CPU
    model, and nothing of it left on the GPU. A later ``load`` re-creates the slots and hooks.
    ``make_streamer(blocks, device)`` must return an object with ``offload()`` and ``reload()``.
    """

    def __init__(self, module: nn.Module, host_device, make_streamer=None):
        self.module = module
        self.host_device = host_device
        self.make_streamer = make_streamer or _block_streamer
        self.streamer = None
        self.device = None                 # where the non-block part is; None = offloaded
        self._gpu_bytes = None

    @property
    def loaded(self) -> bool:
        return self.device is not None

    def gpu_bytes(self) -> int:
        if self._gpu_bytes is None:
            self._gpu_bytes = streamed_gpu_bytes(self.module)
        return self._gpu_bytes

    def load(self, device) -> None:
        if self.loaded:
            return
        try:
            _move_non_blocks(self.module, device)
            if self.streamer is None:
                self.streamer = self.make_streamer(self.module.blocks, device)
            else:
                self.streamer.reload()
        except BaseException:
            self.device = device           # give back whatever got onto the GPU
            self.offload()
            raise
        self.device = device

    def offload(self) -> None:
        if not self.loaded:
            return
        if self.streamer is not None:
            self.streamer.offload()
        _move_non_blocks(self.module, self.host_device)
        self.device = None
