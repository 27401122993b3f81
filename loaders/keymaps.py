"""Key names as data: prefixes of foreign layouts, quant and LoRA suffixes, the audio key pattern.

Our modules keep the official checkpoint names (``blocks.3.audio_cross_attn.kv_linear.weight``), so
a foreign layout is only a prefix to strip or a suffix to recognise; nothing is renamed by code.
"""
from __future__ import annotations

import re

from ..models import quant_ops

# Prefixes that single-file repacks put in front of the official DiT keys (longest first).
DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")

# Keys that identify the Wan DiT trunk and the audio adapter (after prefix stripping).
BASE_ANCHOR = "patch_embedding.weight"
AUDIO_ANCHOR = "audio_proj.proj1"          # + ".weight" or ".weight._data"
AUDIO_KEY = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")
BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")

# optimum-quanto weight-only Linear: official state-dict suffixes -> our buffer names (the layer's own table).
QUANTO_SUFFIXES = quant_ops.QUANTO_SUFFIXES
QUANTO_DATA = ".weight._data"

# Kijai's "fp8 scaled" single files: fp8 weight + one fp32 scale per tensor, and a marker key.
SCALED_FP8_SUFFIX = ".scale_weight"
SCALED_FP8_MARKER = "scaled_fp8"
SCALED_FP8_IGNORED_SUFFIXES = (".scale_input",)

# LoRA key suffixes -> (role, which parameter of the target module it changes).
LORA_SUFFIXES = {
    ".lora_down.weight": ("down", "weight"),
    ".lora_up.weight": ("up", "weight"),
    ".lora_A.weight": ("down", "weight"),
    ".lora_B.weight": ("up", "weight"),
    ".alpha": ("alpha", "weight"),
    ".diff_b": ("diff", "bias"),
    ".diff": ("diff", "weight"),
}
LORA_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "transformer.", "lora_unet_", "")

# -- umT5 text encoder -----------------------------------------------------------------------------
UMT5_OFFICIAL_ANCHOR = "token_embedding.weight"                       # models_t5_umt5-xxl-enc-bf16.pth
UMT5_HF_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"     # HF / ComfyUI umt5_xxl_*.safetensors
# HF / ComfyUI T5 names -> official names (regex, replacement); the one table for every umT5 file.
UMT5_HF_RENAMES = (
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.final_layer_norm\.weight$", "norm.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"blocks.\1.norm1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"blocks.\1.pos_embedding.embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"blocks.\1.norm2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight$", r"blocks.\1.ffn.gate.0.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight$", r"blocks.\1.ffn.fc1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight$", r"blocks.\1.ffn.fc2.weight"),
)
_UMT5_HF_RENAMES = tuple((re.compile(p), r) for p, r in UMT5_HF_RENAMES)
# umT5 file entries that are not encoder weights: the embedded tokenizer and ComfyUI's tied copy of
# the embedding. (Quant markers and scales are the loading core's business, never passed here.)
UMT5_IGNORED = (r"(^|\.)spiece_model$", r"(^|\.)encoder\.embed_tokens\.weight$")
_UMT5_IGNORED = tuple(re.compile(p) for p in UMT5_IGNORED)

# -- wav2vec2 audio encoder ------------------------------------------------------------------------
WAV2VEC_ANCHOR = "feature_extractor.conv_layers.0.conv.weight"
WAV2VEC_PREFIXES = ("wav2vec2.",)                                     # Kijai's pretraining-class save
# Positional-conv weight norm: (old torch.nn.utils.weight_norm name, parametrizations name).
WAV2VEC_WEIGHT_NORM_NAMES = (
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
)
# What released wav2vec2 files carry that the encoder does not use (skipped by name, nothing else is):
# the heads of Wav2Vec2ForPreTraining, the class TencentGameMate/chinese-wav2vec2-base was saved from
# (and so Kijai's fp16 repack of it): quantizer.codevectors, quantizer.weight_proj.{weight,bias},
# project_q.{weight,bias}, project_hid.{weight,bias}; and Wav2Vec2ForCTC's lm_head.{weight,bias}.
WAV2VEC_UNUSED_PREFIXES = ("quantizer.", "project_q.", "project_hid.", "lm_head.")
# The training-time mask vector: loaded when the model has the slot (zeros if a file lacks it), else skipped.
WAV2VEC_MASK_VECTOR = "masked_spec_embed"

# Keys by which other model families are recognised (for "wrong input" messages).
FOREIGN_FAMILIES = {
    "umt5": (UMT5_OFFICIAL_ANCHOR, "shared.weight", UMT5_HF_ANCHOR),
    "wav2vec2": (WAV2VEC_ANCHOR, *(p + WAV2VEC_ANCHOR for p in WAV2VEC_PREFIXES),
                 "encoder.pos_conv_embed.conv.bias"),
    "clip_vision": ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    "vae": ("decoder.conv1.weight", "encoder.conv1.weight", "decoder.head.2.weight"),
}

# config.json / metadata keys that are WanModel constructor kwargs (others, e.g. _class_name, dropped).
WAN_KWARGS = (
    "model_type", "patch_size", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim",
    "out_dim", "num_heads", "num_layers", "window_size", "qk_norm", "cross_attn_norm", "eps",
    "audio_window", "intermediate_dim", "output_dim", "context_tokens", "vae_scale",
    "norm_input_visual", "norm_output_audio",
)
# Safetensors metadata key under which files we write carry their constructor kwargs as JSON.
CONFIG_METADATA_KEY = "config"

# Official shard-set names and the quantization-map names shipped next to quantized files.
QUANT_MAP_SIBLINGS = (
    (re.compile(r"^dit_model_(int8|fp8)$"), "dit_model_map_{0}.json"),
    (re.compile(r"^quant_model_(int8|fp8)_FusionX$"), "quantization_map_{0}_FusionX.json"),
    (re.compile(r"^t5_(int8|fp8)$"), "t5_map_{0}.json"),
)


def find_prefix(keys, anchors=(BASE_ANCHOR,), prefixes=DIT_PREFIXES) -> str:
    """The prefix (possibly '') under which any anchor key appears; '' if none does."""
    keyset = set(keys)
    for prefix in prefixes:
        if any(prefix + a in keyset or prefix + a + ".weight" in keyset
               or prefix + a + ".weight._data" in keyset for a in anchors):
            return prefix
    return ""


def is_audio_key(key: str) -> bool:
    return AUDIO_KEY.match(key) is not None


def module_of(key: str) -> str:
    """'blocks.0.self_attn.q.weight._data' -> 'blocks.0.self_attn.q'."""
    for suffix in QUANTO_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1]
    return key.rsplit(".", 1)[0]


def umt5_model_key(key: str) -> str | None:
    """A umT5 file key (prefix stripped) -> the official name, or None for a non-weight entry."""
    return None if any(p.search(key) for p in _UMT5_IGNORED) else umt5_official_name(key)


def umt5_official_name(key: str) -> str:
    """'encoder.block.3.layer.1.DenseReluDense.wo.weight' -> 'blocks.3.ffn.fc2.weight' (else unchanged)."""
    for pattern, repl in _UMT5_HF_RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def wav2vec_model_key(key: str, model_keys: set[str] | None = None) -> str | None:
    """A wav2vec2 file key -> the encoder's key (None: not used). Strips ``wav2vec2.``, skips the
    unused heads, and with ``model_keys`` (the built model's) gives the weight-norm pair and the mask
    vector the names that model uses."""
    for prefix in WAV2VEC_PREFIXES:
        key = key[len(prefix):] if key.startswith(prefix) else key
    if key.startswith(WAV2VEC_UNUSED_PREFIXES):
        return None
    if model_keys is None:
        return key
    if key == WAV2VEC_MASK_VECTOR and key not in model_keys:
        return None
    for pair in WAV2VEC_WEIGHT_NORM_NAMES:
        if key in pair and key not in model_keys:
            other = pair[1] if key == pair[0] else pair[0]
            return other if other in model_keys else key
    return key
