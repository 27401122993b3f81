"""Block streaming, the one room: where the DiT's weights live while it samples.

``memory_budget_gb`` (Model Loader) > 0 and the DiT's weights larger than that -> streaming: the
non-block modules (patch/text/time embeddings, head, img_emb, audio_proj) sit on the GPU, the
transformer blocks stay in pinned host memory and ``BlockStreamer`` copies them in one at a time.

* Byte counting and the decision: ``weight_bytes``, ``packed_bytes``, ``streamed_gpu_bytes``,
  ``choose_placement`` / ``plan_placement``.
* ``BlockStreamer``: each block's parameters and buffers are packed into one pinned CPU buffer. On the
  GPU there are two slots, each as large as the largest block; block i runs from slot i % 2 while
  block i+1 is copied into the other slot on a side stream (one host-to-device copy per block). The
  copy of a slot waits for the block that last used it; a block waits for its own copy. With compute
  per block longer than its copy, the transfers hide behind the compute. Forward pre/post hooks do
  the work, so the blocks' own ``forward`` (compiled or not) is unchanged; the parameters are
  re-pointed at slot views (``param.data``), which keeps their names, dtypes and shapes.
* ``StreamedDiT``: the streaming state of one DiT (non-block part on the GPU + the streamer).

No comfy imports: ``loaders/host.py``'s ``StreamingPatcher`` plugs ``StreamedDiT`` into the host's
ModelPatcher, so the decision and the byte counting are testable without the host (and without a
GPU: the streamer is injected).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

log = logging.getLogger(__name__)

GIB = 2**30
_ALIGN = 256  # bytes: BlockStreamer packs every tensor at this boundary (aligned vectorised loads)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


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
    return sum(_align(t.numel() * t.element_size()) for t in tensors)


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


_cpu_budget_logged = False


def plan_placement(module: nn.Module, memory_budget_gb: float, device_type: str) -> Placement:
    """``choose_placement`` for ``module`` on a device of ``device_type``, logged; the 'ignored on the
    CPU' line only once per process."""
    global _cpu_budget_logged
    plan = choose_placement(weight_bytes(module), memory_budget_gb, device_type)
    if memory_budget_gb > 0 and device_type == "cpu":
        if not _cpu_budget_logged:
            log.info("InfiniteTalk: %s", plan.reason)
            _cpu_budget_logged = True
    elif memory_budget_gb > 0:
        log.info("InfiniteTalk: %s", plan.reason)
    return plan


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


# ------------------------------------------------------------------ the streamer (CUDA)
def _tensors(block: nn.Module):
    """(module, kind, name, tensor) for every parameter and buffer of ``block``."""
    for module in block.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(module, kind).items():
                if t is not None:
                    yield module, kind, name, t


class BlockStreamer:
    """Keep ``blocks`` (an nn.ModuleList on ``device``) in pinned CPU memory and stream them in.

    ``BlockStreamer(model.blocks, "cuda")`` moves the weights out (GPU memory: two block slots);
    ``close()`` moves them back and removes the hooks.
    """

    def __init__(self, blocks: nn.ModuleList, device: torch.device | str):
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device(self.device.type, torch.cuda.current_device())
        self.blocks = list(blocks)
        self.stream = torch.cuda.Stream(self.device)
        self.entries, self.host = [], []
        with torch.inference_mode(False), torch.no_grad():
            for block in self.blocks:
                entries, offset = [], 0
                for module, kind, name, t in _tensors(block):
                    nbytes = t.numel() * t.element_size()
                    entries.append((module, kind, name, offset, nbytes, t.dtype, tuple(t.shape)))
                    offset += _align(nbytes)
                host = torch.empty(offset, dtype=torch.uint8, pin_memory=True)
                for module, kind, name, off, nbytes, dtype, shape in entries:
                    src = getattr(module, kind)[name].detach().reshape(-1).view(torch.uint8)
                    host[off:off + nbytes].copy_(src)
                self.entries.append(entries)
                self.host.append(host)
                # Re-point this block at its pinned copy now, so its original tensors are freed before
                # the next block is packed: peak RAM stays one copy of the blocks (+ one block).
                self._bind_host(len(self.host) - 1)
            size = max(h.numel() for h in self.host)
            self.slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(2)]
            # Per block: the views of its own slot, made once (normal tensors, usable under inference_mode).
            self.views = [self._views(i) for i in range(len(self.blocks))]
            for i in range(len(self.blocks)):
                self._bind(i)  # the GPU copies are dropped here: only the slots stay
        torch.cuda.empty_cache()
        self.copied: dict[int, torch.cuda.Event] = {}
        self.released = [None, None]  # per slot: event after the last block that used it
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(partial(self._before, i)))
            self.handles.append(block.register_forward_hook(partial(self._after, i)))

    @property
    def slot_bytes(self) -> int:
        return self.slots[0].numel()

    def _views(self, i: int) -> list[torch.Tensor]:
        slot = self.slots[i % 2]
        return [slot[off:off + nbytes].view(dtype).view(shape)
                for _m, _k, _n, off, nbytes, dtype, shape in self.entries[i]]

    def _bind(self, i: int) -> None:
        for (module, kind, name, *_), view in zip(self.entries[i], self.views[i]):
            if kind == "_parameters":
                module._parameters[name].data = view
            else:
                module._buffers[name] = view

    def _bind_host(self, i: int) -> None:
        """Point block i's parameters and buffers at their pinned host copies (CPU tensors)."""
        for module, kind, name, off, nbytes, dtype, shape in self.entries[i]:
            t = self.host[i][off:off + nbytes].view(dtype).view(shape)
            if kind == "_parameters":
                module._parameters[name].data = t
            else:
                module._buffers[name] = t

    def _prefetch(self, i: int) -> None:
        """Start copying block i into its slot on the side stream (after the slot's last user)."""
        slot = i % 2
        with torch.cuda.stream(self.stream):
            if self.released[slot] is not None:
                self.stream.wait_event(self.released[slot])
            host = self.host[i]
            self.slots[slot][:host.numel()].copy_(host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.copied[i] = event

    def _before(self, i: int, _module, _args) -> None:
        if i not in self.copied:
            self._prefetch(i)
        torch.cuda.current_stream(self.device).wait_event(self.copied.pop(i))
        self._bind(i)
        nxt = (i + 1) % len(self.blocks)
        if nxt != i and nxt % 2 != i % 2 and nxt not in self.copied:
            self._prefetch(nxt)  # overlaps with block i (the wrap-around warms the next forward)

    def _after(self, i: int, _module, _args, _output) -> None:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.released[i % 2] = event

    def close(self) -> None:
        """Remove the hooks and give every block its own GPU tensors again."""
        for h in self.handles:
            h.remove()
        torch.cuda.synchronize(self.device)
        with torch.inference_mode(False), torch.no_grad():
            for i in range(len(self.blocks)):
                for module, kind, name, off, nbytes, dtype, shape in self.entries[i]:
                    t = self.host[i][off:off + nbytes].view(dtype).view(shape).to(self.device)
                    if kind == "_parameters":
                        module._parameters[name].data = t
                    else:
                        module._buffers[name] = t
        self.slots, self.views, self.host = [], [], []

    # ------------------------------------------------------------------ offload / reload (host adapter)
    def offload(self) -> None:
        """Give the GPU slots back but keep the model usable: every parameter and buffer is re-pointed
        at its pinned host copy (a CPU tensor), the hooks are removed; ``reload()`` undoes it.
        The pinned copies stay, so a later reload costs no packing."""
        for h in self.handles:
            h.remove()
        self.handles = []
        if not self.slots:
            return
        torch.cuda.synchronize(self.device)  # no copy or block may still use a slot
        with torch.inference_mode(False), torch.no_grad():
            for i in range(len(self.blocks)):
                self._bind_host(i)
        self.slots, self.views = [], []
        self.copied, self.released = {}, [None, None]
        torch.cuda.empty_cache()

    def reload(self) -> None:
        """After ``offload()``: allocate the two GPU slots again, bind the blocks to them and re-arm
        the prefetch hooks (no-op while loaded)."""
        if self.slots:
            return
        size = max(h.numel() for h in self.host)
        with torch.inference_mode(False), torch.no_grad():
            self.slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(2)]
            self.views = [self._views(i) for i in range(len(self.blocks))]
            for i in range(len(self.blocks)):
                self._bind(i)
        self.copied, self.released = {}, [None, None]
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(partial(self._before, i)))
            self.handles.append(block.register_forward_hook(partial(self._after, i)))


# ------------------------------------------------------------------ one DiT's streaming state
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
        self.make_streamer = make_streamer or BlockStreamer
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
