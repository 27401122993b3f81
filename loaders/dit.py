"""``load_dit``: base (+ audio adapter), full, fp8 or optimum-quanto files -> ``WanModel``, streamed.

Per-model part only: recognising which file is in which input, the config (shapes, config.json,
metadata), which Linear layers stay quantized, and the key-mismatch hints. The model is built on
the ``meta`` device and filled by the loading core (``load_core``): every key planned to one file
tensor before any data is read, then read, cast and assigned one tensor at a time, file by file,
so peak host RAM is about one copy of the result (the official loader holds a fp32 dict of
everything plus the model).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.ops import TorchOps
from ..models.quant_ops import QuantoOps
from ..models.wan_dit import WanModel
from . import keymaps as km
from .detect import FileInfo, describe, detect
from .files import LoaderError, WeightFile, blame, open_weights, read_json
from .fp8 import fp8_linear_modules, fp8_quant_map
from .load_core import KeyMap, load_into
from .lora import LoraReport, apply_loras
from .quanto import find_quant_map, prepare_quantized

log = logging.getLogger(__name__)

SHAPE_KEYS = ("dim", "in_dim", "patch_size", "num_layers", "ffn_dim", "text_dim", "freq_dim", "out_dim",
              "intermediate_dim", "output_dim", "context_tokens", "audio_window", "vae_scale")

SLOT_HINTS = {
    "lora": "It is a LoRA: connect it to the lora input (InfiniteTalk LoRA node).",
    "audio_adapter": "It is an audio adapter: put it in the audio_adapter input and pick the Wan2.1-I2V-14B "
                     "base model (or a full model) as model.",
    "umt5": "It is a umT5 text encoder: it belongs in the T5 text encoder input (models/text_encoders).",
    "wav2vec2": "It is a wav2vec2 audio encoder: it belongs in the audio encoder input.",
    "clip_vision": "It is a CLIP vision model: load it with ComfyUI's CLIP Vision loader.",
    "vae": "It is a VAE: load it with ComfyUI's VAE loader.",
    "unknown": "Its keys match no Wan2.1 / InfiniteTalk / MultiTalk layout.",
}


@dataclass
class DitLoadReport:
    """What ``load_dit`` loaded, shown to the user (``model.load_report``)."""

    model_file: str
    model_kind: str
    adapter_file: str | None
    quant: str | None
    quant_map: str | None
    dtype: torch.dtype
    config: dict
    loras: list[LoraReport] = field(default_factory=list)
    quantized_layers: int = 0          # Linear layers held as int8 / fp8 (quanto slots) in memory

    def summary(self) -> str:
        parts = [f"{Path(self.model_file).name}: {self.model_kind}"]
        if self.adapter_file:
            parts.append(f"audio adapter {Path(self.adapter_file).parent.name}/{Path(self.adapter_file).name}")
        if self.quant:
            parts.append(f"quant {self.quant}" + (f" (map {Path(self.quant_map).name})" if self.quant_map else "")
                         + (f", {self.quantized_layers} layers kept quantized" if self.quantized_layers
                            else f", upcast to {str(self.dtype).replace('torch.', '')}"))
        parts += [f"LoRA {r.source} x{r.strength:g}" for r in self.loras]
        return "; ".join(parts)


# -- opening and slot checks -----------------------------------------------------------------------
def _open_model(path: Path) -> WeightFile:
    """Open ``path``; a single shard of an indexed set opens the whole set (found via the index)."""
    src = open_weights(path)
    if path.is_file() and len(src.files) == 1 and src.path.suffix == ".safetensors":
        for index in path.parent.glob("*.safetensors.index.json"):
            try:
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError):
                continue
            if path.name in shards and len(shards) > 1:
                log.info("%s is one shard of %s; loading the whole set", path.name, index.name)
                return open_weights(index)
    return src


def _check_model_slot(info: FileInfo, path: Path, adapter: bool) -> None:
    if info.kind in ("wan_base", "wan_full", "quanto_full"):
        if info.kind == "wan_base" and not adapter:
            raise LoaderError(f"{path}: {describe(info)}. It has no audio weights: choose the InfiniteTalk "
                              "(single or multi) or MultiTalk adapter in the audio_adapter input.")
        if info.kind != "wan_base" and adapter:
            raise LoaderError(f"{path}: {describe(info)}; it already contains audio weights, so a second "
                              "audio adapter cannot be added. Set audio_adapter to none (or pick the base "
                              "model as model).")
        return
    raise LoaderError(f"{path} is {info.words}, not a DiT model. {SLOT_HINTS.get(info.kind, '')}")


def _check_adapter_slot(info: FileInfo, path: Path, base: FileInfo) -> None:
    if info.kind != "audio_adapter":
        hint = ("It is a model: put it in the model input." if info.kind in ("wan_base", "wan_full", "quanto_full")
                else SLOT_HINTS.get(info.kind, ""))
        raise LoaderError(f"{path} is {info.words}, not an audio adapter. {hint}")
    dim, layers = base.dims.get("dim"), base.dims.get("num_layers")
    if (info.dims.get("audio_dim"), info.dims.get("audio_layers")) != (dim, layers):
        raise LoaderError(f"{path}: shapes disagree: this adapter is for a DiT of dim {info.dims.get('audio_dim')} "
                          f"with {info.dims.get('audio_layers')} blocks, but the model has dim {dim} and {layers} "
                          "blocks. InfiniteTalk/MultiTalk adapters fit Wan2.1-I2V-14B.")


# -- config ----------------------------------------------------------------------------------------
def _explicit_configs(src: WeightFile, extra: dict | None) -> list[tuple[str, dict]]:
    found = []
    config_json = src.files[0].parent / "config.json"
    if len(src.files) > 1 or src.path.is_dir() or src.path.name.endswith(".index.json"):
        if config_json.is_file():
            found.append((str(config_json), read_json(config_json, "model config")))
    if km.CONFIG_METADATA_KEY in src.metadata:
        try:
            found.append((f"{src.path} metadata", json.loads(src.metadata[km.CONFIG_METADATA_KEY])))
        except ValueError:
            log.warning("%s: ignoring unreadable 'config' metadata", src.path)
    if extra:
        found.append(("config argument", dict(extra)))
    return found


def resolve_config(src: WeightFile, info: FileInfo, adapter: FileInfo | None, extra: dict | None) -> dict:
    """WanModel kwargs: dims from shapes, then config.json / file metadata / ``extra`` (which must agree
    with the shapes). Heads come from a config if any, else ``dim // 128``."""
    derived = {k: v for k, v in info.dims.items() if k in km.WAN_KWARGS}
    if adapter is not None:
        derived.update({k: v for k, v in adapter.dims.items() if k in km.WAN_KWARGS})
    cfg = dict(derived)
    for where, explicit in _explicit_configs(src, extra):
        for key in km.WAN_KWARGS:
            if key not in explicit:
                continue
            value = explicit[key]
            if key in SHAPE_KEYS and key in derived and list(_as_list(value)) != list(_as_list(derived[key])):
                raise LoaderError(f"{where}: shapes disagree: it says {key}={value} but the weights have "
                                  f"{key}={derived[key]}. Use the config that belongs to these weights.")
            cfg[key] = value
    heads = cfg.get("num_heads")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise LoaderError(f"{src.path}: num_heads must be a positive whole number, the config says "
                          f"{str(heads)[:40]!r}. Fix config.json / the file's 'config' metadata (Wan2.1-14B: 40).")
    if cfg["dim"] % cfg["num_heads"]:
        raise LoaderError(f"{src.path}: num_heads {cfg['num_heads']} does not divide dim {cfg['dim']}.")
    return cfg


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


# -- the key map (identity: our modules keep the official names; detect() strips a file's prefix) -----
def _key_hint(missing: set, unexpected: set, twice: set) -> str:
    hint = ""
    if missing and all(km.is_audio_key(k) for k in missing):
        hint = "The audio weights are missing: choose an InfiniteTalk/MultiTalk adapter in audio_adapter."
    elif missing and not any(km.is_audio_key(k) for k in missing):
        hint = "Base weights are missing: the model file is incomplete (a missing shard?) or not Wan2.1 I2V."
    if any(k.endswith(km.QUANTO_DATA) for k in unexpected):
        hint += " Quantized keys without a matching map entry: use the map shipped with this file."
    if twice:
        hint += (" Two files provide the same weights (two audio adapters, or an adapter given with a full "
                 "model).")
    return hint.strip()


DIT_KEYS = KeyMap("the InfiniteTalk DiT", hint=_key_hint,
                  shape_fix="The file does not fit this model configuration (check config.json / num_heads).")


# -- the entry point -------------------------------------------------------------------------------
def _build(cfg: dict, sources: list[WeightFile], qmap: dict | None, keep_quantized: bool, operations):
    """WanModel on ``meta`` with quanto slots for the quanto map and (``keep_quantized``) for every fp8
    Linear weight (the loading core fills those slots with the file's fp8 bytes and scale)."""
    with torch.device("meta"):
        model = WanModel(**cfg, operations=operations or (QuantoOps if qmap else TorchOps))
    full_map = dict(qmap or {})
    if keep_quantized:
        for src in sources:
            full_map.update(fp8_quant_map([m for m in fp8_linear_modules(src, model) if m not in full_map]))
    if full_map:
        prepare_quantized(model, full_map)   # swaps in QuantoLinear: precedence over ``operations``
    return model, len(full_map)


def load_dit(model_path, adapter_path=None, loras=(), dtype: torch.dtype = torch.bfloat16,
             device="cpu", config: dict | None = None, keep_quantized: bool = True,
             operations=None) -> WanModel:
    """Load the InfiniteTalk / MultiTalk DiT.

    model_path: base shard set (folder, index or any shard), a single-file base or full model
        (official or ComfyUI repack, bf16/fp16/fp8/fp8-scaled, optional ``model.diffusion_model.``
        prefix) or an optimum-quanto full model (its JSON map next to it).
    adapter_path: the audio adapter (InfiniteTalk single / multi, MultiTalk, or ComfyUI's
        model_patches repack) when model_path is a base model. Single and multi adapters have the
        same keys: which one is used is the user's choice of file, reported as given.
    loras: ``(path, strength)`` pairs applied in order after loading.
    config: WanModel kwargs that override config.json / metadata (e.g. num_heads of a file without one).
    keep_quantized: fp8 files (plain ComfyUI fp8_e4m3fn, Kijai scaled fp8) keep their Linear weights as
        fp8 quanto slots (scale 1 or the file's ``scale_weight``); False upcasts them to ``dtype``.
        optimum-quanto files always stay quantized.
    operations: the ``operations`` namespace to build the model with (e.g. the host's casting layers);
        default ``TorchOps`` (or ``QuantoOps`` for quantized files). Quantized modules always become
        ``QuantoLinear`` whatever this is.
    """
    model_path = Path(model_path)
    try:
        src = _open_model(model_path)
        info = detect(src)
        _check_model_slot(info, model_path, adapter_path is not None)
    except LoaderError as err:
        raise blame(err, "model")
    sources, adapter_info = [src], None
    if adapter_path is not None:
        try:
            adapter = open_weights(adapter_path)
            adapter_info = detect(adapter)
            _check_adapter_slot(adapter_info, Path(adapter_path), info)
        except LoaderError as err:
            raise blame(err, "audio_adapter")
        sources.append(adapter)
    try:
        cfg = resolve_config(src, info, adapter_info, config)
        qmap_path, qmap = None, None
        if info.kind == "quanto_full":
            qmap_path, qmap = find_quant_map(src.path, src.keys(), src.dtype)
        model, n_quantized = _build(cfg, sources, qmap, keep_quantized, operations)
        load_into(model, sources, DIT_KEYS, dtype, device)
    except LoaderError as err:
        raise blame(err, "model")
    model.eval()
    report = DitLoadReport(str(model_path), info.kind, None if adapter_path is None else str(adapter_path),
                           info.quant, None if qmap_path is None else str(qmap_path), dtype, cfg,
                           quantized_layers=n_quantized)
    try:
        report.loras = apply_loras(model, loras)
    except LoaderError as err:
        raise blame(err, "lora")
    model.load_report = report
    log.info("loaded DiT: %s", report.summary())
    return model
