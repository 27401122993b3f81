"""The DiT in the host's memory manager (comfy-free): load it, hand it over, take it for sampling, let it go.

``host`` is ``loaders/host.py`` (or a stand-in in tests). It needs the devices (``torch_device``,
``offload_device``, ``is_device_cpu``, ``supports_bf16``, ``supports_fp16``), ``host_attention``,
the patchers (``make_patcher``, ``load_patcher``, ``unload_patcher``), ``interrupt_exception`` and
``queue_busy``. A ``HostModel`` keeps the host it was made with, so the sampler passes only the model.

* ``load_model``: attention and compile resolved first (a choice that cannot run fails before minutes of
  reading), then ``load_dit`` onto the offload device, the placement decision (whole or streamed
  blocks, ``loaders/streaming.py``), the patcher. ``gpus`` > 1: ``parallel_model`` (parallel/).
* ``load_for_sampling`` / ``release_after_sampling`` / ``unload``: through the host's own bookkeeping,
  with the idle-unload timer (``loaders/idle_unload.py``) armed after each run.
* Errors blame a node input on the error (``err.input``): ``attention``, ``compile``, ``gpus``; the
  loaders' ``LoaderError`` names its own (``model``, ``audio_adapter``, ``lora``).
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field

from . import run_choices
from .idle_unload import IdleTimers, idle_unload_seconds
from .streaming import plan_placement as _plan_placement
from .streaming import weight_bytes

log = logging.getLogger(__name__)


@dataclass
class HostModel:
    """What INFINITETALK_MODEL carries: the host-managed patcher plus what the sampler must know."""
    patcher: object                  # the host's ModelPatcher (or host.StreamingPatcher)
    family: str                      # "InfiniteTalk" or "MultiTalk"
    config: dict = field(default_factory=dict)
    dtype: object = None
    memory_budget_gb: float = 0.0
    source: str = ""
    streaming: bool = False          # blocks streamed from pinned RAM (StreamingPatcher)
    attention: str = "sdpa"          # models.attention backend, made active before each sampling
    run_info: str = ""               # attention and compile as resolved, in words (the loader's info)
    gpus: int = 1                    # > 1: the DiT runs on a worker pool (parallel/pool.py)
    host: object = field(default=None, repr=False)   # the host calls it was made with

    @property
    def module(self):
        return self.patcher.model


def _blame(err: BaseException, input_name: str) -> BaseException:
    """Name the node input at fault on the error itself (unless a deeper loader already did)."""
    if getattr(err, "input", None) is None:
        err.input = input_name
    return err


def _device_type(device) -> str:
    return getattr(device, "type", str(device))


def pick_dtype(precision: str, device, host, n_params: int = 14_000_000_000):
    """``auto`` asks the host what the device supports (bf16 > fp16 > fp32)."""
    import torch
    fixed = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision in fixed:
        return fixed[precision]
    if host.supports_bf16(device, n_params):
        return torch.bfloat16
    if host.supports_fp16(device, n_params):
        return torch.float16
    return torch.float32


def select_attention(host, choice: str | None = None):
    """run_choices.select_attention on the host's device, with the host's attention for ``comfy``."""
    return run_choices.select_attention(choice, host.torch_device(), host.host_attention)


def select_compile(host, choice: str | None = None) -> tuple[bool, str]:
    """run_choices.select_compile on the host's device."""
    return run_choices.select_compile(choice, host.torch_device())


def plan_placement(host, module, memory_budget_gb: float):
    """Whole or streamed (``loaders.streaming.plan_placement`` on the host's device), logged."""
    return _plan_placement(module, memory_budget_gb, _device_type(host.torch_device()))


def wrap_model(host, module, family: str, dtype, memory_budget_gb: float = 0.0, source: str = "",
               streaming: bool = False, make_streamer=None) -> HostModel:
    """Hand our DiT to the host's memory manager (loaded on the torch device, offloaded to the
    unet offload device, like every other diffusion model); ``streaming``: a StreamingPatcher."""
    module.eval()
    patcher = host.make_patcher(module, dtype, streaming=streaming, make_streamer=make_streamer)
    # One line when the weights are really gone (the host dropped its cache and its model list);
    # tests rely on it to prove nothing of ours keeps the 14B model alive.
    weakref.finalize(module, log.info, "InfiniteTalk: DiT released (%s)",
                     os.path.basename(source) or "model")
    return HostModel(patcher, family, dict(getattr(module, "config", {}) or {}), dtype,
                     float(memory_budget_gb), source, streaming, host=host)


def load_model(host, model_path: str, adapter_path: str | None, family: str, precision: str,
               loras=(), memory_budget_gb: float = 0.0, attention: str | None = None,
               compile: str | None = None, gpus: int = 1) -> HostModel:  # noqa: A002 - the node input's name
    """Read the DiT (+ adapter, + LoRAs) onto the offload device and hand it to the host.
    ``attention`` / ``compile``: the Model Loader's choices (None: the environment variables, else
    auto). ``gpus`` > 1: nothing is read here, see :func:`parallel_model`."""
    from .dit import load_dit
    try:
        resolved = select_attention(host, attention)
    except ValueError as err:
        raise _blame(err, "attention")
    try:
        compiled, compile_label = select_compile(host, compile)
    except ValueError as err:
        raise _blame(err, "compile")
    dtype = pick_dtype(precision, host.torch_device(), host)
    if gpus > 1:
        return parallel_model(host, model_path, adapter_path, family, dtype, loras, gpus, resolved)
    module = load_dit(model_path, adapter_path=adapter_path, loras=tuple(loras or ()), dtype=dtype,
                      device=host.offload_device())
    plan = plan_placement(host, module, memory_budget_gb)
    if compiled:   # 10-20 s of compiling per new shape at the first run, then ~27 % faster per pass
        module.compile_blocks(fallback=True, passthrough=(host.interrupt_exception,))
    log.info("InfiniteTalk: loaded %s as %s (%s, %.2f GiB)%s; attention %s; compile %s",
             os.path.basename(model_path), family, dtype, weight_bytes(module) / 2**30,
             f" with adapter {os.path.basename(adapter_path)}" if adapter_path else "",
             resolved.label, compile_label)
    loaded = wrap_model(host, module, family, dtype, memory_budget_gb, source=model_path, streaming=plan.stream)
    loaded.attention = resolved.backend
    loaded.run_info = f"attention {resolved.label} | compile {compile_label}"
    if plan.stream and loaded.patcher.model_size() > memory_budget_gb * 2**30:
        log.warning("InfiniteTalk: even with streamed blocks the DiT needs %.2f GiB of VRAM (non-block "
                    "weights + two block slots), more than memory_budget_gb = %g",
                    loaded.patcher.model_size() / 2**30, memory_budget_gb)
    return loaded


def parallel_model(host, model_path: str, adapter_path: str | None, family: str, dtype, loras, gpus: int,
                   attention) -> HostModel:
    """The DiT as a pool of ``gpus`` sequence-parallel workers (Ray actors, parallel/pool.py), each loading
    the same files on its own GPU (CPU processes when ComfyUI runs on the CPU) on first use.

    The host's memory manager never loads it (it holds no weights here), so nothing the host does to
    make room for the VAE or the encoders restarts the workers. They stop on an interrupt, after the
    idle time (``INFINITETALK_IDLE_UNLOAD_S``), and when the host drops the model (Free model cache).
    ``attention`` (the host's resolution) is resolved again by each worker on its GPU; ComfyUI's own
    attention function does not exist there, so ``comfy`` becomes ``auto``. No compile yet: the
    Ulysses all-to-all inside the blocks is not measured compiled (issue 16). A RuntimeError here
    (no Ray, more GPUs than the host sees) blames the ``gpus`` input.
    """
    import torch

    from ..parallel.pool import ParallelDiT, WorkerPool, import_ray
    try:
        import_ray()                    # not installed: one clear error now, not at the first prompt
        cuda = _device_type(host.torch_device()) == "cuda"
        if cuda and gpus > torch.cuda.device_count():
            raise RuntimeError(f"gpus = {gpus} but ComfyUI sees {torch.cuda.device_count()} CUDA GPU(s); set gpus "
                               f"to at most that (ComfyUI's --cuda-device option hides the other GPUs)")
        choice = "auto" if attention.backend == "comfy" else attention.choice
        load = {"model_path": model_path, "adapter_path": adapter_path, "loras": tuple(loras or ()),
                "dtype": dtype, "attention": choice}
        pool = WorkerPool(load, gpus, "cuda" if cuda else "cpu", idle_unload_seconds(),
                          threads=max(1, (os.cpu_count() or 1) // gpus))
        module = ParallelDiT(pool, dtype)
        patcher = host.make_patcher(module, dtype)
    except RuntimeError as err:
        raise _blame(err, "gpus")
    log.info("InfiniteTalk: %s as %s on %d workers (%s); they start with the first prompt",
             os.path.basename(model_path), family, gpus, "one per GPU" if cuda else "CPU processes")
    loaded = HostModel(patcher, family, {}, dtype, 0.0, model_path, False, gpus=gpus, host=host)
    loaded.attention = attention.backend
    loaded.run_info = f"attention {choice} on each worker | compile off | {gpus} workers (sequence parallel)"
    return loaded


# ------------------------------------------------------------------ sampling and idle unload
_idle = IdleTimers()


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
    with _idle.lock:
        _idle.cancel(id(model.patcher))
        if model.gpus > 1:           # weights live in the workers: nothing for the host to load
            return model.patcher.model
        model.host.load_patcher(model.patcher)
        return model.patcher.model


def release_after_sampling(model: HostModel, interrupted: bool = False) -> None:
    """Arm the idle-unload timer; on an interrupt, give the VRAM back at once."""
    if interrupted:
        unload(model)
        return
    if model.gpus > 1:               # the worker pool has its own idle timer
        return
    seconds = idle_unload_seconds()
    if seconds <= 0 or model.host.is_device_cpu(model.patcher.load_device):
        return
    _idle.arm(id(model.patcher), seconds, _idle_fire, model)


def _idle_fire(model: HostModel) -> None:
    if model.host.queue_busy():      # never touch the host's model list while a prompt runs
        release_after_sampling(model)
        return
    log.info("InfiniteTalk: model idle for %.0f s, moving it out of VRAM", idle_unload_seconds())
    unload(model)


def unload(model: HostModel) -> None:
    """Unload our patcher through the host's own bookkeeping (other models stay where they are)."""
    with _idle.lock:
        _idle.cancel(id(model.patcher))
        if model.gpus > 1:
            model.module.close("unloaded")
            return
        model.host.unload_patcher(model.patcher)
