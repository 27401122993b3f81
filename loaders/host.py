"""The one loaders module that talks to the host: model folders, the ModelPatcher wrapper, idle unload.

* ``register_folders()`` adds ``models/infinitetalk`` and ``models/wav2vec2`` to ``folder_paths``
  (idempotent; called when the extension loads, after ``--base-directory`` was applied).
* ``list_models(kind)`` / ``resolve_model(kind, name)``: what the node combos show and where a
  choice lives.  Unlike ``folder_paths.get_filename_list`` these list a sharded checkpoint once (its
  ``*.safetensors.index.json``, shards hidden) and Hugging Face style model *folders* (a directory
  with ``config.json``) as single entries.
* ``wrap_model(module, ...)`` puts our ``nn.Module`` into ``comfy.model_patcher.ModelPatcher`` so the
  host's memory manager loads and offloads it with everything else; ``load_for_sampling`` loads it
  through ``load_models_gpu`` and (re)arms the idle-unload timer.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import folder_paths
import comfy.model_management as mm
import comfy.model_patcher

log = logging.getLogger(__name__)

WEIGHT_EXTS = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
INDEX_SUFFIX = ".safetensors.index.json"
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.safetensors$")

# combo kind -> host folder names searched, in order
KINDS = {
    "diffusion_models": ("diffusion_models",),
    "audio_adapter": ("infinitetalk", "model_patches"),
    "loras": ("loras",),
    "text_encoders": ("text_encoders",),
    "wav2vec": ("wav2vec2", "audio_encoders"),
}
IDLE_ENV = "INFINITETALK_IDLE_UNLOAD_S"


def register_folders() -> None:
    """Register our model folders with the host (safe to call more than once)."""
    exts = set(folder_paths.supported_pt_extensions) - {".pkl"}
    for name in ("infinitetalk", "wav2vec2"):
        default = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([default], exts)
        elif default not in folder_paths.folder_names_and_paths[name][0]:
            folder_paths.add_model_folder_path(name, default)


def folders(kind: str) -> list[str]:
    paths = []
    for name in KINDS[kind]:
        try:
            paths += folder_paths.get_folder_paths(name)
        except KeyError:
            continue
    return paths


def _scan(base: str) -> list[str]:
    """Entries under ``base`` (relative, '/'-separated): weight files, shard indexes, HF folders."""
    out = []
    if not os.path.isdir(base):
        return out
    for root, dirs, files in os.walk(base, followlinks=True):
        rel_root = os.path.relpath(root, base)
        rel = (lambda f: f if rel_root == "." else f"{rel_root}/{f}".replace(os.sep, "/"))
        indexed = any(f.endswith(INDEX_SUFFIX) for f in files)
        if (not indexed and "config.json" in files and rel_root != "."
                and any(f.endswith(WEIGHT_EXTS) for f in files)):
            out.append(rel_root.replace(os.sep, "/"))   # a Hugging Face model folder: one entry
            dirs[:] = []
            continue
        for f in sorted(files):
            if f.endswith(INDEX_SUFFIX):
                out.append(rel(f))
            elif f.endswith(WEIGHT_EXTS) and not (indexed and _SHARD.match(f)):
                out.append(rel(f))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return out


def list_models(kind: str) -> list[str]:
    seen = []
    for base in folders(kind):
        for entry in _scan(base):
            if entry not in seen:
                seen.append(entry)
    return sorted(seen, key=str.lower)


def resolve_model(kind: str, name: str) -> str | None:
    """Full path of a combo choice, or None when it is in none of the folders (no '..' escapes)."""
    if not name or name == "none":
        return None
    for base in folders(kind):
        full = os.path.realpath(os.path.join(base, name))
        root = os.path.realpath(base)
        if os.path.commonpath([full, root]) == root and os.path.exists(full):
            return full
    return None


def folder_hint(kind: str) -> str:
    return " or ".join(f"ComfyUI/models/{n}/" for n in KINDS[kind])


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

    @property
    def module(self):
        return self.patcher.model


def wrap_model(module, family: str, dtype, memory_budget_gb: float = 0.0, source: str = "") -> HostModel:
    """Hand our DiT to the host's memory manager (loaded on the torch device, offloaded to the
    unet offload device, like every other diffusion model)."""
    module.eval()
    if not hasattr(module, "get_dtype"):
        module.get_dtype = lambda: dtype           # ModelPatcher.model_dtype() asks for it
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=torch_device(),
                                               offload_device=offload_device())
    # One line when the weights are really gone (the host dropped its cache and its model list);
    # tests rely on it to prove nothing of ours keeps the 14B model alive.
    weakref.finalize(module, log.info, "InfiniteTalk: DiT released (%s)",
                     os.path.basename(source) or "model")
    return HostModel(patcher, family, dict(getattr(module, "config", {}) or {}), dtype,
                     float(memory_budget_gb), source)


_lock = threading.RLock()
_timers: dict[int, threading.Timer] = {}


def idle_unload_seconds() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, "300"))
    except ValueError:
        log.warning("%s must be a number of seconds; using 300", IDLE_ENV)
        return 300.0


def load_for_sampling(model: HostModel):
    """Load the whole DiT through the host (``load_models_gpu``) and return the module ready to run.

    Always a full load: our layers are plain torch layers, which the host cannot run partly offloaded
    (a partial load would leave some weights on the CPU). The host first unloads other models (VAE,
    CLIP, text encoders, other diffusion models) to make room; if the DiT still does not fit, the
    device runs out of memory. ``memory_budget_gb`` was checked when the model was loaded.
    """
    with _lock:
        _cancel_timer(model)
        mm.load_models_gpu([model.patcher], force_full_load=True)
        return model.patcher.model


def release_after_sampling(model: HostModel, interrupted: bool = False) -> None:
    """Arm the idle-unload timer; on an interrupt, give the VRAM back at once."""
    if interrupted:
        unload(model)
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
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            loaded = mm.current_loaded_models[i]
            if loaded.model is model.patcher:
                loaded.model_unload()
                mm.current_loaded_models.pop(i)
        mm.soft_empty_cache()


# ------------------------------------------------------------------------- model loading glue
class BudgetError(ValueError):
    """The DiT's weights are larger than the memory_budget_gb the user set."""


def model_bytes(module) -> int:
    """Bytes of the module's parameters and buffers as they are stored (int8/fp8 stay 1 byte)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def check_budget(module, memory_budget_gb: float) -> None:
    """``memory_budget_gb`` > 0: refuse a DiT whose weights do not fit that many GiB of GPU memory."""
    if memory_budget_gb <= 0:
        return
    if mm.is_device_cpu(torch_device()):
        log.info("InfiniteTalk: memory_budget_gb is ignored when ComfyUI runs on the CPU")
        return
    size = model_bytes(module) / 2**30
    if size > memory_budget_gb:
        raise BudgetError(f"the DiT weights need {size:.1f} GiB, more than the {memory_budget_gb:g} GiB "
                          f"budget (the pack loads the DiT whole, it does not stream it)")


def load_model(model_path: str, adapter_path: str | None, family: str, precision: str,
               loras=(), memory_budget_gb: float = 0.0) -> HostModel:
    """Read the DiT (+ adapter, + LoRAs) onto the offload device and hand it to the host."""
    from .dit import load_dit
    dtype = pick_dtype(precision, torch_device())
    module = load_dit(model_path, adapter_path=adapter_path, loras=tuple(loras or ()), dtype=dtype,
                      device=offload_device())
    check_budget(module, memory_budget_gb)
    log.info("InfiniteTalk: loaded %s as %s (%s, %.2f GiB)%s", os.path.basename(model_path), family,
             dtype, model_bytes(module) / 2**30,
             f" with adapter {os.path.basename(adapter_path)}" if adapter_path else "")
    return wrap_model(module, family, dtype, memory_budget_gb, source=model_path)


def file_key(path: str) -> tuple:
    """What identifies a model file's content cheaply: path + mtime + size (for a model folder, of
    every file directly in it). Used to cache between runs and as the nodes' input fingerprints."""
    if path is None or not os.path.exists(path):
        return (path,)
    if os.path.isdir(path):
        entries = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
        return (path,) + tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size)


def fingerprint(kind: str, name: str) -> tuple:
    """The node fingerprint of a combo choice: changes when the file behind it changes."""
    path = resolve_model(kind, name)
    if path is not None and path.endswith(INDEX_SUFFIX):       # a shard set: the shards count too
        folder = os.path.dirname(path)
        return file_key(folder)
    return file_key(path)


_text_cache: dict = {}


def _fits(module, device) -> bool:
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    if mm.is_device_cpu(device):
        return True
    return free_memory_on(device) > size * 1.2


def text_encoder(path: str):
    """The umT5 (model, tokenizer) for ``path``, kept in RAM between runs (one at a time; reloaded
    when the file's mtime or size changes), moved to the text-encoder device when that device has
    1.2x its size free at that moment, else run on the CPU."""
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
    runs (one at a time; reloaded when the file or folder content's mtime/size changes)."""
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
