"""Recognise a weight file by its keys and shapes: which family, which quant format, which dims.

Nothing here looks at file names. Dims come from tensor shapes; the one thing shapes cannot give is
the head count, which is taken from a config (config.json, file metadata) when there is one and
otherwise derived as ``dim // 128`` (every released Wan model has head_dim 128).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import keymaps as km
from .files import WeightFile

HEAD_DIM = 128
WAV2VEC_LAYERS, WAV2VEC_CHANNELS = 12, 768

KINDS = ("wan_base", "audio_adapter", "wan_full", "quanto_full", "lora", "umt5", "wav2vec2",
         "clip_vision", "vae", "unknown")

KIND_WORDS = {
    "wan_base": "a Wan2.1 I2V base model (no audio weights)",
    "audio_adapter": "an InfiniteTalk/MultiTalk audio adapter (audio weights only)",
    "wan_full": "a full InfiniteTalk/MultiTalk model (base + audio in one file)",
    "quanto_full": "an optimum-quanto quantized full model",
    "lora": "a LoRA",
    "umt5": "a umT5 text encoder",
    "wav2vec2": "a wav2vec2 audio encoder",
    "clip_vision": "a CLIP vision encoder",
    "vae": "a VAE",
    "unknown": "not a file this pack recognises",
}


@dataclass(frozen=True)
class FileInfo:
    """What a weight file is. ``dims`` holds WanModel kwargs derived from shapes."""

    kind: str
    quant: str | None = None          # None, 'qint8', 'qfloat8_e4m3fn', 'fp8_scaled', 'fp8'
    dtype: torch.dtype | None = None  # the most common floating dtype of the stored tensors
    prefix: str = ""
    has_base: bool = False
    has_audio: bool = False
    dims: dict = field(default_factory=dict)

    @property
    def words(self) -> str:
        return KIND_WORDS[self.kind]

    @property
    def num_heads(self) -> int | None:
        return self.dims.get("num_heads")


def _linear_shape(src: WeightFile, module: str) -> tuple[int, ...] | None:
    for suffix in (".weight", km.QUANTO_DATA):
        if module + suffix in src:
            return src.shape(module + suffix)
    return None


def _num_blocks(keys, marker: str) -> int:
    idx = [int(m.group(1)) for k in keys if marker in k and (m := km.BLOCK_KEY.match(k))]
    return max(idx) + 1 if idx else 0


def base_dims(src: WeightFile) -> dict:
    """Trunk dims from shapes: dim, in_dim, patch_size, ffn_dim, num_layers, text_dim, out_dim, heads."""
    pe = src.shape(km.BASE_ANCHOR)            # [dim, in_dim, pt, ph, pw]
    dim, patch = pe[0], tuple(pe[2:])
    dims = {"dim": dim, "in_dim": pe[1], "patch_size": list(patch),
            "num_layers": _num_blocks(src.keys(), ".self_attn."), "num_heads": max(dim // HEAD_DIM, 1)}
    for name, module, axis in (("ffn_dim", "blocks.0.ffn.0", 0), ("text_dim", "text_embedding.0", 1),
                               ("freq_dim", "time_embedding.0", 1)):
        shape = _linear_shape(src, module)
        if shape is not None:
            dims[name] = shape[axis]
    head = _linear_shape(src, "head.head")
    if head is not None:
        dims["out_dim"] = head[0] // math.prod(patch)
    return dims


def audio_dims(src: WeightFile) -> dict:
    """Audio-adapter dims from shapes: intermediate/output dims, tokens, windows, trunk dim, layers."""
    p1, vf = _linear_shape(src, "audio_proj.proj1"), _linear_shape(src, "audio_proj.proj1_vf")
    p3 = _linear_shape(src, "audio_proj.proj3")
    out = src.shape("audio_proj.norm.weight")[0]
    per_frame = WAV2VEC_LAYERS * WAV2VEC_CHANNELS
    window = p1[1] // per_frame
    dims = {"intermediate_dim": p1[0], "output_dim": out, "context_tokens": p3[0] // out,
            "audio_window": window, "vae_scale": vf[1] // per_frame - window + 1,
            "audio_layers": _num_blocks(src.keys(), ".audio_cross_attn.")}
    q = _linear_shape(src, "blocks.0.audio_cross_attn.q_linear")
    if q is not None:
        dims["audio_dim"] = q[0]
    return dims


def _quant(src: WeightFile, keys: list[str]) -> str | None:
    data = [k for k in keys if k.endswith(km.QUANTO_DATA)]
    if data:
        return "qint8" if src.dtype(data[0]) == torch.int8 else "qfloat8_e4m3fn"
    if km.SCALED_FP8_MARKER in keys or any(k.endswith(km.SCALED_FP8_SUFFIX) for k in keys):
        return "fp8_scaled"
    if any(src.dtype(k) in (torch.float8_e4m3fn, torch.float8_e5m2) for k in keys):
        return "fp8"
    return None


def _foreign(keys: set[str]) -> str | None:
    for family, anchors in km.FOREIGN_FAMILIES.items():
        if any(a in keys for a in anchors):
            return family
    return None


def _is_lora(keys: list[str]) -> bool:
    """A LoRA holds (almost) only lora_down/up, lora_A/B, alpha, diff and diff_b keys."""
    n = sum(k.endswith(tuple(km.LORA_SUFFIXES)) for k in keys)
    return n > 0 and 2 * n >= len(keys)


def detect(src: WeightFile) -> FileInfo:
    """Recognise ``src`` and set its key prefix (``src.prefix``) for the DiT families."""
    raw = src.raw_keys()
    if _is_lora(raw):
        return FileInfo(kind="lora", dtype=_main_dtype(src, raw))
    src.prefix = km.find_prefix(raw, anchors=(km.BASE_ANCHOR, km.AUDIO_ANCHOR))
    keys = src.keys()
    has_base = km.BASE_ANCHOR in src
    has_audio = _linear_shape(src, km.AUDIO_ANCHOR) is not None and "audio_proj.norm.weight" in src
    if not has_base and not has_audio:
        src.prefix = ""
        return FileInfo(kind=_foreign(set(raw)) or "unknown", dtype=_main_dtype(src, raw))
    quant = _quant(src, keys)
    dims = base_dims(src) if has_base else {}
    if has_audio:
        dims.update(audio_dims(src))
    if quant in ("qint8", "qfloat8_e4m3fn"):
        kind = "quanto_full"
    elif has_base:
        kind = "wan_full" if has_audio else "wan_base"
    else:
        kind = "audio_adapter"
    return FileInfo(kind=kind, quant=quant, dtype=_main_dtype(src, keys), prefix=src.prefix,
                    has_base=has_base, has_audio=has_audio, dims=dims)


def _main_dtype(src: WeightFile, keys: list[str]) -> torch.dtype | None:
    counts = Counter()
    for k in keys:
        dt = src.dtype(k) if k in src else None
        if dt is not None and dt.is_floating_point:
            counts[dt] += math.prod(src.shape(k)) if k in src else 1
    return counts.most_common(1)[0][0] if counts else None


def describe(info: FileInfo) -> str:
    """One line for logs and errors: kind, quant, dtype, the main dims."""
    bits = [info.words]
    if info.quant:
        bits.append(f"quant {info.quant}")
    if info.dtype is not None:
        bits.append(str(info.dtype).replace("torch.", ""))
    d = info.dims
    if "dim" in d:
        bits.append(f"dim {d['dim']}, {d['num_layers']} blocks")
    elif "audio_dim" in d:
        bits.append(f"audio for dim {d['audio_dim']}, {d['audio_layers']} blocks")
    return ", ".join(bits)
