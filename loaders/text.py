"""umT5 checkpoint on disk -> (``UMT5Encoder``, ``UMT5Tokenizer``), recognised by keys.

Layouts:
* official ``models_t5_umt5-xxl-enc-bf16.pth`` (read with ``torch.load(weights_only=True, mmap=True)``)
  or a safetensors file with the same names (e.g. Kijai's ``umt5-xxl-enc-bf16.safetensors``);
* ComfyUI ``umt5_xxl_fp16/bf16.safetensors``: HF T5 names (``shared.weight``, ``encoder.block.N...``),
  renamed by ``HF_RENAMES``; its embedded ``spiece_model`` is the tokenizer;
* ComfyUI ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``: HF names + ``scaled_fp8`` marker + per-tensor
  ``*.scale_weight``: weights are dequantised as ``weight * scale_weight``;
* official optimum-quanto ``t5_int8`` / ``t5_fp8``: ``X.weight._data`` + ``X.weight._scale`` [out, 1]
  (+ unused ``input_scale`` / ``output_scale``) with the JSON map ``t5_map_<q>.json`` beside it.
  Dequantised at load (``_data * _scale``) for now; the quantized layers of ``loaders/quanto.py``
  can replace that later without changing the file handling.
Dims come from tensor shapes, never from file names. Tensors are converted one at a time into a
model built on the meta device, so peak memory is about one model in the target dtype.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ..models.umt5 import UMT5Encoder
from .tokenizer import UMT5Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

# HF / ComfyUI T5 names -> official names (regex, replacement).
HF_RENAMES = (
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
_HF_RENAMES = tuple((re.compile(p), r) for p, r in HF_RENAMES)
# Entries that are not weights of the encoder (tokenizer, markers, duplicates, activation scales).
IGNORED = (re.compile(r"(^|\.)spiece_model$"), re.compile(r"(^|\.)scaled_fp8$"),
           re.compile(r"(^|\.)encoder\.embed_tokens\.weight$"), re.compile(r"\.scale_input$"),
           re.compile(r"\.(input|output)_scale$"))
OFFICIAL_MARK = "token_embedding.weight"
HF_MARK = "encoder.block.0.layer.0.SelfAttention.q.weight"


class TextEncoderLoadError(ValueError):
    """A umT5 file that cannot be used, with what to do about it."""


class _Reader:
    """Uniform tensor access for .safetensors (lazy) and weights-only .pth (memory-mapped)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            self._st = safe_open(str(path), framework="pt")
            self.keys = list(self._st.keys())
            self._sd = None
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise TextEncoderLoadError(f"umT5: {path} does not hold a flat state dict of tensors")
            self._st, self._sd, self.keys = None, sd, list(sd)
        else:
            raise TextEncoderLoadError(f"umT5: {path} is neither .safetensors nor .pth")

    def get(self, key: str) -> torch.Tensor:
        return self._st.get_tensor(key) if self._st is not None else self._sd[key]


def _strip_prefix(keys: list[str]) -> str:
    """The prefix in front of the HF or official names (ComfyUI sometimes nests text encoders)."""
    for key in keys:
        for mark in (HF_MARK, OFFICIAL_MARK):
            if key.endswith(mark):
                return key[: -len(mark)]
    raise TextEncoderLoadError(
        f"umT5: no umT5 encoder weights recognised (looked for '{OFFICIAL_MARK}' or '{HF_MARK}'); "
        "choose models_t5_umt5-xxl-enc-bf16.pth, a umt5_xxl_*.safetensors file or t5_int8/t5_fp8.safetensors")


def official_name(key: str) -> str:
    for pattern, repl in _HF_RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def _quanto_map(path: Path) -> dict | None:
    """The optimum-quanto map: ``t5_map_<q>.json`` beside ``t5_<q>.safetensors``, or the path with
    'safetensors' replaced by 'json' (the reference's rule for the DiT)."""
    m = re.match(r"^t5_(int8|fp8)$", path.stem)
    candidates = ([path.with_name(f"t5_map_{m.group(1)}.json")] if m else []) + \
        [path.with_name(path.name.replace("safetensors", "json"))]
    for c in candidates:
        if c.is_file() and c != path:
            return json.loads(c.read_text())
    log.warning("umT5: no quanto map (%s) next to %s; dequantising every '*.weight._data' entry",
                " or ".join(c.name for c in candidates), path)
    return None


def _tensor_plan(reader: _Reader) -> tuple[dict[str, tuple[str, ...]], str]:
    """official name -> source key(s): (weight,) or (weight, scale) for quantized entries; and a format tag."""
    prefix = _strip_prefix(reader.keys)
    keys = [k[len(prefix):] for k in reader.keys if k.startswith(prefix)]
    quanto = any(k.endswith(".weight._data") for k in keys)
    scaled = any(k == "scaled_fp8" or k.endswith(".scaled_fp8") for k in reader.keys)
    plan: dict[str, tuple[str, ...]] = {}
    for key in keys:
        if any(p.search(key) for p in IGNORED) or key.endswith((".weight._scale", ".scale_weight")):
            continue
        if key.endswith(".weight._data"):
            base = key[: -len("._data")]
            plan[official_name(base)] = (prefix + key, prefix + base + "._scale")
        elif scaled and key.endswith(".weight") and (key[: -len("weight")] + "scale_weight") in keys:
            plan[official_name(key)] = (prefix + key, prefix + key[: -len("weight")] + "scale_weight")
        else:
            plan[official_name(key)] = (prefix + key,)
    fmt = "quanto" if quanto else "scaled_fp8" if scaled else "plain"
    return plan, fmt


def _config_from_shapes(shapes: dict[str, torch.Size]) -> dict:
    def shape(key):
        if key not in shapes:
            raise TextEncoderLoadError(f"umT5: weight '{key}' is missing; the file is incomplete or not umT5")
        return shapes[key]

    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not blocks:
        raise TextEncoderLoadError("umT5: the file has no encoder blocks")
    if len(blocks) > 1 and "blocks.1.pos_embedding.embedding.weight" not in shapes:
        raise TextEncoderLoadError("umT5: only the first block has a relative-position table: this is a T5 v1.1 "
                                   "encoder (e.g. t5xxl for Flux), not umT5-XXL; choose a umt5_xxl file")
    vocab, dim = shape("token_embedding.weight")
    buckets, heads = shape("blocks.0.pos_embedding.embedding.weight")
    return dict(vocab=int(vocab), dim=int(dim), dim_attn=int(shape("blocks.0.attn.q.weight")[0]),
                dim_ffn=int(shape("blocks.0.ffn.fc1.weight")[0]), num_heads=int(heads),
                num_layers=len(blocks), num_buckets=int(buckets), shared_pos=False)


def _materialise(reader: _Reader, keys: tuple[str, ...], dtype: torch.dtype) -> torch.Tensor:
    w = reader.get(keys[0])
    if len(keys) == 2:  # quanto (_data * _scale [out, 1]) or ComfyUI scaled fp8 (weight * scalar)
        w = w.to(torch.float32) * reader.get(keys[1]).to(torch.float32)
    return w.to(dtype)


def load_umt5_state(path, dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, torch.Tensor], dict, _Reader, str]:
    """(official-name state dict in ``dtype``, config, reader, format tag)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
        if len(files) != 1:
            raise TextEncoderLoadError(f"umT5: folder {path} must hold exactly one .safetensors or .pth file")
        path = files[0]
    if not path.is_file():
        raise TextEncoderLoadError(f"umT5: {path} does not exist")
    reader = _Reader(path)
    plan, fmt = _tensor_plan(reader)
    if fmt == "quanto":
        _check_quanto_map(_quanto_map(path), plan, path)
    sd = {name: _materialise(reader, keys, dtype) for name, keys in plan.items()}
    return sd, _config_from_shapes({k: v.shape for k, v in sd.items()}), reader, fmt


def _check_quanto_map(qmap: dict | None, plan: dict, path: Path) -> None:
    if not qmap:
        return
    quantized = {name[: -len(".weight")] for name, keys in plan.items() if keys[0].endswith("._data")}
    absent = sorted(m for m in qmap if official_name(m + ".weight")[: -len(".weight")] not in quantized)
    if absent:
        raise TextEncoderLoadError(f"umT5: the quanto map next to {path} lists modules without quantized "
                                   f"weights in the file, e.g. {absent[:4]}; the map and weights do not belong together")


def _embedded_spiece(reader: _Reader) -> torch.Tensor | None:
    key = next((k for k in reader.keys if k == "spiece_model" or k.endswith(".spiece_model")), None)
    return reader.get(key) if key is not None else None


def load_umt5(path, device="cpu", dtype: torch.dtype = torch.bfloat16,
              tokenizer_path=None) -> tuple[UMT5Encoder, UMT5Tokenizer]:
    """Load the umT5 encoder (official/ComfyUI/quanto layouts) and its tokenizer from user files."""
    sd, config, reader, fmt = load_umt5_state(path, dtype)
    tokenizer = load_tokenizer(reader.path, _embedded_spiece(reader), tokenizer_path)
    with torch.device("meta"):
        model = UMT5Encoder(**config, dtype=dtype)
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderLoadError(f"umT5: {reader.path} does not match a umT5 encoder: missing "
                                   f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    log.info("umT5: loaded %s (%s; dim %d, %d layers, %d heads) as %s", reader.path, fmt, config["dim"],
             config["num_layers"], config["num_heads"], dtype)
    return model.to(device).eval(), tokenizer
