"""The host adapter: every call into ComfyUI's model management, and nothing else (imports comfy).

The comfy-free rooms take this module as their ``host`` argument: ``loaders/managed_dit.py`` (the
DiT's life in the host's memory manager, idle unload), ``loaders/kept_encoders.py`` (umT5 / wav2vec2
kept between runs); tests pass a stand-in namespace. Model folders (``folder_paths``) are
``loaders/model_folders.py``.

* Devices and memory: ``torch_device``, ``offload_device``, ``text_encoder_devices``,
  ``free_memory_on``, ``is_device_cpu``, ``supports_bf16`` / ``supports_fp16``, ``soft_empty_cache``.
* Interruption: ``throw_if_interrupted``, ``is_interrupt``, ``interrupt_exception``; the queue probe
  ``queue_busy``; the host's attention function ``host_attention``.
* Patchers: ``make_patcher`` puts our ``nn.Module`` into ``comfy.model_patcher.ModelPatcher`` (or
  ``StreamingPatcher``: the host sees a model the size of its GPU part + two block slots; loading
  streams the blocks, ``loaders/streaming.py``); ``load_patcher`` / ``unload_patcher`` go through
  ``load_models_gpu`` and the host's list of loaded models.
"""
from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher

from .streaming import StreamedDiT

log = logging.getLogger(__name__)

interrupt_exception = mm.InterruptProcessingException


# --------------------------------------------------------------------- devices and memory
def torch_device():
    return mm.get_torch_device()


def offload_device():
    return mm.unet_offload_device()


def text_encoder_devices():
    return mm.text_encoder_device(), mm.text_encoder_offload_device()


def free_memory_on(device) -> int:
    return mm.get_free_memory(device)


def is_device_cpu(device) -> bool:
    return mm.is_device_cpu(device)


def supports_bf16(device, n_params: int) -> bool:
    return mm.should_use_bf16(device, model_params=n_params)


def supports_fp16(device, n_params: int) -> bool:
    return mm.should_use_fp16(device, model_params=n_params)


def soft_empty_cache() -> None:
    mm.soft_empty_cache()


def throw_if_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, mm.InterruptProcessingException)


def host_attention():
    """The host's attention function as it is now (--use-sage-attention etc. set it at startup)."""
    import comfy.ldm.modules.attention as host_attention_module
    return host_attention_module.optimized_attention


def queue_busy() -> bool:
    """A prompt is running or waiting (the idle timer never touches the host's models then)."""
    try:
        import server
        return server.PromptServer.instance.prompt_queue.get_tasks_remaining() > 0
    except (ImportError, AttributeError):
        return False


# --------------------------------------------------------------------- patchers
class StreamingPatcher(comfy.model_patcher.ModelPatcher):
    """The DiT with its blocks streamed from pinned RAM, as the host's memory manager sees it.

    ``model_size()`` is the GPU footprint of streaming (non-block weights + two block slots), so
    ``load_models_gpu`` frees that much (plus its inference reserve) by unloading other models.
    ``partially_load`` (what ``load_models_gpu`` calls) puts the non-block part on the GPU and arms
    the streamer; there is no partial unload (all or nothing: the host then detaches us), and
    ``unpatch_model`` (detach: idle timer, /free, interrupt, another model needing VRAM) frees the
    slots and leaves a working model in RAM. LoRAs are merged at load time: no weight patches.
    """

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False,
                 make_streamer=None):
        super().__init__(model, load_device, offload_device, size, weight_inplace_update)
        self.streamed = StreamedDiT(model, offload_device, make_streamer)

    def clone(self):
        n = super().clone()
        n.streamed = self.streamed       # one streaming state per module
        return n

    def model_size(self):
        return self.streamed.gpu_bytes()

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        if self.streamed.loaded:
            return 0
        self.streamed.load(device_to)
        self.model.device = device_to
        self.model.model_lowvram = False
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.current_weight_patches_uuid = self.patches_uuid
        log.info("InfiniteTalk: DiT loaded with streamed blocks (%.2f GiB on %s)",
                 self.model_size() / 2**30, device_to)
        return self.model_size()

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0                         # nothing partial: the host detaches the whole model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights and self.streamed.loaded:
            self.streamed.offload()
            log.info("InfiniteTalk: streamed DiT moved out of VRAM (blocks stay in pinned RAM)")
        super().unpatch_model(device_to, unpatch_weights)


def make_patcher(module, dtype, streaming: bool = False, make_streamer=None):
    """``module`` as the host's model: loaded on the torch device, offloaded to the unet offload
    device, like every other diffusion model; ``streaming``: a StreamingPatcher."""
    if not hasattr(module, "get_dtype"):
        module.get_dtype = lambda: dtype           # ModelPatcher.model_dtype() asks for it
    if streaming:
        return StreamingPatcher(module, torch_device(), offload_device(), make_streamer=make_streamer)
    return comfy.model_patcher.ModelPatcher(module, load_device=torch_device(), offload_device=offload_device())


def load_patcher(patcher) -> None:
    """Load through the host (it first unloads other models to make room). Full load: our layers
    are plain torch layers, which the host cannot run partly offloaded."""
    mm.load_models_gpu([patcher], force_full_load=True)


def unload_patcher(patcher) -> None:
    """Unload one patcher through the host's own bookkeeping (other models stay where they are)."""
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
    mm.soft_empty_cache()
