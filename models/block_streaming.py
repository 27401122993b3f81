"""Block streaming: run a stack of blocks on a GPU that can't hold all of them.

Each block's parameters and buffers are packed into one pinned CPU buffer. On the GPU there are two
slots, each as large as the largest block; block i runs from slot i % 2 while block i+1 is copied
into the other slot on a side stream (one host-to-device copy per block). The copy of a slot waits
for the block that last used it; a block waits for its own copy. With compute per block longer than
its copy, the transfers hide behind the compute. Forward pre/post hooks do the work, so the blocks'
own ``forward`` (compiled or not) is unchanged; the parameters are re-pointed at slot views
(``param.data``), which keeps their names, dtypes and shapes.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

_ALIGN = 256  # bytes; keeps every tensor view aligned for vectorised kernels


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


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
