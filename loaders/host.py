"""The host adapter: the ModelPatcher wrapper, idle unload, cached text/speech encoders.

* Model folders (``register_folders``, ``list_models``, ``resolve_model``, ``fingerprint``) live in
  ``loaders/model_folders.py`` and are re-exported here, so nodes talk to one host module.
* ``wrap_model(module, ...)`` puts our ``nn.Module`` into ``comfy.model_patcher.ModelPatcher`` so the
  host's memory manager loads and offloads it with everything else; ``load_for_sampling`` loads it
  through ``load_models_gpu`` and (re)arms the idle-unload timer.
* ``memory_budget_gb`` > 0 and a DiT larger than that (on CUDA): ``StreamingPatcher`` — the host
  sees a model the size of its GPU part + two block slots; loading streams the blocks
  (``loaders/streaming.py``), unloading gives every GPU byte back and keeps the model in RAM.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.model_patcher

# re-exported: the nodes reach the model folders through this one host module
from .model_folders import (file_key, fingerprint, folder_hint, list_models, public_text,  # noqa: F401
                            missing_file, register_folders, resolve_model)
from . import run_choices
# re-exported: the Model Loader's attention / compile choices (comfy-free: loaders/run_choices.py)
from .run_choices import (ATTENTION_CHOICES, ATTENTION_ENV, AUTO_ATTENTION, COMPILE_CHOICES,  # noqa: F401
                          COMPILE_ENV)
from .streaming import StreamedDiT, weight_bytes
from .streaming import plan_placement as _plan_placement

log = logging.getLogger(__name__)

IDLE_ENV = "INFINITETALK_IDLE_UNLOAD_S"


def _host_attention():
    """The host's attention function as it is now (--use-sage-attention etc. set it at startup)."""
    import comfy.ldm.modules.attention as host_attention
    return host_attention.optimized_attention


def select_attention(choice: str | None = None):
    """run_choices.select_attention on the host's device, with the host's attention for ``comfy``."""
    return run_choices.select_attention(choice, torch_device(), _host_attention)


def select_compile(choice: str | None = None) -> tuple[bool, str]:
    """run_choices.select_compile on the host's device."""
    return run_choices.select_compile(choice, torch_device())


# --------------------------------------------------------------------- memory management
def torch_device():
    return mm.get_torch_device()


def offload_device():
    return mm.unet_offload_device()


def text_encoder_devices():
    return mm.text_encoder_device(), mm.text_encoder_offload_device()


def free_memory_on(device) -> int:
    return mm.get_free_memory(device)


def throw_if_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, mm.InterruptProcessingException)


def soft_empty_cache() -> None:
    mm.soft_empty_cache()


def pick_dtype(precision: str, device, n_params: int = 14_000_000_000):
    """``auto`` asks the host what the device supports (bf16 > fp16 > fp32)."""
    import torch
    fixed = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision in fixed:
        return fixed[precision]
    if mm.should_use_bf16(device, model_params=n_params):
        return torch.bfloat16
    if mm.should_use_fp16(device, model_params=n_params):
        return torch.float16
    return torch.float32


@dataclass
class HostModel:
    """What INFINITETALK_MODEL carries: the host-managed patcher plus what the sampler must know."""
    patcher: comfy.model_patcher.ModelPatcher
    family: str                      # "InfiniteTalk" or "MultiTalk"
    config: dict = field(default_factory=dict)
    dtype: object = None
    memory_budget_gb: float = 0.0
    source: str = ""
    streaming: bool = False          # blocks streamed from pinned RAM (StreamingPatcher)
    attention: str = "sdpa"          # models.attention backend, made active before each sampling
    run_info: str = ""               # attention and compile as resolved, in words (the loader's info)
    gpus: int = 1                    # > 1: the DiT runs on a worker pool (parallel/pool.py)

    @property
    def module(self):
        return self.patcher.model


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


def wrap_model(module, family: str, dtype, memory_budget_gb: float = 0.0, source: str = "",
               streaming: bool = False, make_streamer=None) -> HostModel:
    """Hand our DiT to the host's memory manager (loaded on the torch device, offloaded to the
    unet offload device, like every other diffusion model); ``streaming``: a StreamingPatcher."""
    module.eval()
    if not hasattr(module, "get_dtype"):
        module.get_dtype = lambda: dtype           # ModelPatcher.model_dtype() asks for it
    if streaming:
        patcher = StreamingPatcher(module, torch_device(), offload_device(), make_streamer=make_streamer)
    else:
        patcher = comfy.model_patcher.ModelPatcher(module, load_device=torch_device(),
                                                   offload_device=offload_device())
    # One line when the weights are really gone (the host dropped its cache and its model list);
    # tests rely on it to prove nothing of ours keeps the 14B model alive.
    weakref.finalize(module, log.info, "InfiniteTalk: DiT released (%s)",
                     os.path.basename(source) or "model")
    return HostModel(patcher, family, dict(getattr(module, "config", {}) or {}), dtype,
                     float(memory_budget_gb), source, streaming)


_lock = threading.RLock()
_timers: dict[int, threading.Timer] = {}


def idle_unload_seconds() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, "300"))
    except ValueError:
        log.warning("%s must be a number of seconds; using 300", IDLE_ENV)
        return 300.0


def load_for_sampling(model: HostModel):
    """Load the DiT through the host (``load_models_gpu``) and return the module ready to run.

    Whole (memory_budget_gb 0 or not exceeded): a full load, because our layers are plain torch
    layers, which the host cannot run partly offloaded. Streamed: the host frees the GPU part + two
    block slots (``StreamingPatcher.model_size``) and our ``partially_load`` arms the streamer.
    Either way the host first unloads other models (VAE, CLIP, text encoders, other diffusion
    models) to make room.
    """
    from ..models import attention
    if attention.get_backend() != model.attention:   # another loader may have chosen another one
        attention.set_backend(model.attention)
    with _lock:
        _cancel_timer(model)
        if model.gpus > 1:           # weights live in the workers: nothing for the host to load
            return model.patcher.model
        mm.load_models_gpu([model.patcher], force_full_load=True)
        return model.patcher.model


def release_after_sampling(model: HostModel, interrupted: bool = False) -> None:
    """Arm the idle-unload timer; on an interrupt, give the VRAM back at once."""
    if interrupted:
        unload(model)
        return
    if model.gpus > 1:               # the worker pool has its own idle timer
        return
    seconds = idle_unload_seconds()
    if seconds <= 0 or mm.is_device_cpu(model.patcher.load_device):
        return
    with _lock:
        _cancel_timer(model)
        timer = threading.Timer(seconds, _idle_fire, args=(model,))
        timer.daemon = True
        _timers[id(model.patcher)] = timer
        timer.start()


def _cancel_timer(model: HostModel) -> None:
    timer = _timers.pop(id(model.patcher), None)
    if timer is not None:
        timer.cancel()


def _queue_busy() -> bool:
    try:
        import server
        return server.PromptServer.instance.prompt_queue.get_tasks_remaining() > 0
    except (ImportError, AttributeError):
        return False


def _idle_fire(model: HostModel) -> None:
    if _queue_busy():            # never touch the host's model list while a prompt runs
        release_after_sampling(model)
        return
    log.info("InfiniteTalk: model idle for %.0f s, moving it out of VRAM", idle_unload_seconds())
    unload(model)


def unload(model: HostModel) -> None:
    """Unload our patcher through the host's own bookkeeping (other models stay where they are)."""
    with _lock:
        _cancel_timer(model)
        if model.gpus > 1:
            model.module.close("unloaded")
            return
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            loaded = mm.current_loaded_models[i]
            if loaded.model is model.patcher:
                loaded.model_unload()
                mm.current_loaded_models.pop(i)
        mm.soft_empty_cache()


# ------------------------------------------------------------------------- model loading glue
def plan_placement(module, memory_budget_gb: float):
    """Whole or streamed (``loaders.streaming.plan_placement`` on the host's device), logged."""
    device = torch_device()
    return _plan_placement(module, memory_budget_gb, getattr(device, "type", str(device)))


def load_model(model_path: str, adapter_path: str | None, family: str, precision: str,
               loras=(), memory_budget_gb: float = 0.0, attention: str | None = None,
               compile: str | None = None, gpus: int = 1) -> HostModel:  # noqa: A002 - the node input's name
    """Read the DiT (+ adapter, + LoRAs) onto the offload device and hand it to the host.
    ``attention`` / ``compile``: the Model Loader's choices (None: the environment variables, else
    auto), resolved before the weights are read so a choice that cannot run fails at once.
    ``gpus`` > 1: nothing is read here, see :func:`parallel_model`."""
    from .dit import load_dit
    resolved = select_attention(attention)
    compiled, compile_label = select_compile(compile)
    dtype = pick_dtype(precision, torch_device())
    if gpus > 1:
        return parallel_model(model_path, adapter_path, family, dtype, loras, gpus, resolved)
    module = load_dit(model_path, adapter_path=adapter_path, loras=tuple(loras or ()), dtype=dtype,
                      device=offload_device())
    plan = plan_placement(module, memory_budget_gb)
    if compiled:   # 10-20 s of compiling per new shape at the first run, then ~27 % faster per pass
        module.compile_blocks(fallback=True, passthrough=(mm.InterruptProcessingException,))
    log.info("InfiniteTalk: loaded %s as %s (%s, %.2f GiB)%s; attention %s; compile %s",
             os.path.basename(model_path), family, dtype, weight_bytes(module) / 2**30,
             f" with adapter {os.path.basename(adapter_path)}" if adapter_path else "",
             resolved.label, compile_label)
    loaded = wrap_model(module, family, dtype, memory_budget_gb, source=model_path, streaming=plan.stream)
    loaded.attention = resolved.backend
    loaded.run_info = f"attention {resolved.label} | compile {compile_label}"
    if plan.stream and loaded.patcher.model_size() > memory_budget_gb * 2**30:
        log.warning("InfiniteTalk: even with streamed blocks the DiT needs %.2f GiB of VRAM (non-block "
                    "weights + two block slots), more than memory_budget_gb = %g",
                    loaded.patcher.model_size() / 2**30, memory_budget_gb)
    return loaded


def parallel_model(model_path: str, adapter_path: str | None, family: str, dtype, loras, gpus: int,
                   attention) -> HostModel:
    """The DiT as a pool of ``gpus`` sequence-parallel workers (Ray actors, parallel/pool.py), each loading
    the same files on its own GPU (CPU processes when ComfyUI runs on the CPU) on first use.

    The host's memory manager never loads it (it holds no weights here), so nothing the host does to
    make room for the VAE or the encoders restarts the workers. They stop on an interrupt, after the
    idle time (``INFINITETALK_IDLE_UNLOAD_S``), and when the host drops the model (Free model cache).
    ``attention`` (the host's resolution) is resolved again by each worker on its GPU; ComfyUI's own
    attention function does not exist there, so ``comfy`` becomes ``auto``. No compile yet: the
    Ulysses all-to-all inside the blocks is not measured compiled (issue 16).
    """
    import torch

    from ..parallel.pool import ParallelDiT, WorkerPool, import_ray
    import_ray()                        # not installed: one clear error now, not at the first prompt
    device = torch_device()
    cuda = getattr(device, "type", str(device)) == "cuda"
    if cuda and gpus > torch.cuda.device_count():
        raise RuntimeError(f"gpus = {gpus} but ComfyUI sees {torch.cuda.device_count()} CUDA GPU(s); set gpus to at "
                           f"most that (ComfyUI's --cuda-device option hides the other GPUs)")
    choice = "auto" if attention.backend == "comfy" else attention.choice
    load = {"model_path": model_path, "adapter_path": adapter_path, "loras": tuple(loras or ()), "dtype": dtype,
            "attention": choice}
    pool = WorkerPool(load, gpus, "cuda" if cuda else "cpu", idle_unload_seconds(),
                      threads=max(1, (os.cpu_count() or 1) // gpus))
    module = ParallelDiT(pool, dtype)
    module.get_dtype = lambda: dtype
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=device, offload_device=offload_device())
    log.info("InfiniteTalk: %s as %s on %d workers (%s); they start with the first prompt",
             os.path.basename(model_path), family, gpus, "one per GPU" if cuda else "CPU processes")
    loaded = HostModel(patcher, family, {}, dtype, 0.0, model_path, False, gpus=gpus)
    loaded.attention = attention.backend
    loaded.run_info = f"attention {choice} on each worker | compile off | {gpus} workers (sequence parallel)"
    return loaded


_text_cache: dict = {}


def _fits(module, device) -> bool:
    size = weight_bytes(module)          # buffers too: quantized umT5 weights are buffers
    if mm.is_device_cpu(device):
        return True
    return free_memory_on(device) > size * 1.2


def text_encoder(path: str):
    """The umT5 (model, tokenizer) for ``path``, kept in RAM between runs (one at a time; reloaded
    when the file's ``file_key`` changes: size, times, sampled bytes), moved to the text-encoder
    device when that device has 1.2x its size free at that moment, else run on the CPU."""
    key = file_key(path)
    if _text_cache.get("key") != key:
        from .text import load_umt5
        _text_cache.clear()
        _text_cache["model"], _text_cache["tokenizer"] = load_umt5(path)
        _text_cache["key"] = key
    model = _text_cache["model"]
    device, _ = text_encoder_devices()
    target = device if _fits(model, device) else offload_device()
    if target != device:
        log.info("InfiniteTalk: umT5 does not fit in %s now; encoding on the CPU", device)
    return model.to(target), _text_cache["tokenizer"]


def encode_texts(path: str, texts: list[str]) -> list:
    """Texts -> trimmed umT5 states [1, L_i, 4096] (float32, CPU), then the encoder goes back off."""
    import torch
    model, tokenizer = text_encoder(path)
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids, mask = tokenizer(text)                     # [1, 512] each, padded
        ids, mask = ids.to(device), mask.to(device)
        out.append(model.encode_trimmed(ids, mask)[0][None].float().cpu())
    model.to(offload_device() if not mm.is_device_cpu(device) else device)
    soft_empty_cache()
    return out


_speech_cache: dict = {}


def load_speech_model(path: str):
    """wav2vec2 (file or Hugging Face folder) on the text-encoder device (it is small), kept between
    runs (one at a time; reloaded when the file or folder content's key changes)."""
    from .speech import load_wav2vec
    device, _ = text_encoder_devices()
    key = file_key(path)
    if _speech_cache.get("key", (None,))[0] != key:
        _speech_cache.clear()
        _speech_cache["model"] = load_wav2vec(path, device=device)
    _speech_cache["key"] = (key, str(device))
    return _speech_cache["model"].to(device)


def release_speech_model() -> None:
    """After encoding: the cached wav2vec2 goes back to RAM so it holds no GPU memory between runs."""
    model = _speech_cache.get("model")
    if model is None:
        return
    target = text_encoder_devices()[1]
    if next(model.parameters()).device != target:
        model.to(target)
        _speech_cache["key"] = (_speech_cache["key"][0], str(target))
        soft_empty_cache()
