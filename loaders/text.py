"""umT5 checkpoint on disk -> (``UMT5Encoder``, ``UMT5Tokenizer``), recognised by keys.

Layouts:
* official ``models_t5_umt5-xxl-enc-bf16.pth`` (read with ``torch.load(weights_only=True, mmap=True)``)
  or a safetensors file with the same names (e.g. Kijai's ``umt5-xxl-enc-bf16.safetensors``);
* ComfyUI ``umt5_xxl_fp16/bf16.safetensors``: HF T5 names (``shared.weight``, ``encoder.block.N...``),
  renamed by ``keymaps.UMT5_HF_RENAMES``; its embedded ``spiece_model`` is the tokenizer;
* ComfyUI ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``: HF names + ``scaled_fp8`` marker + per-tensor
  ``*.scale_weight``: each fp8 Linear stays fp8 in memory (a ``QuantoLinear`` slot whose per-row
  scale is the file's scale), other tensors are cast to ``dtype``;
* official optimum-quanto ``t5_int8`` / ``t5_fp8``: ``X.weight._data`` + ``X.weight._scale`` [out, 1]
  (+ unused ``input_scale`` / ``output_scale``) with the JSON map ``t5_map_<q>.json`` beside it: the
  Linear layers stay int8 / fp8 (``models/quant_ops.py``; umT5-XXL ≈ 6.7 GB instead of 11.4 GB in bf16).
``keep_quantized=False`` dequantises both quantized layouts to ``dtype`` at load (the old behaviour).
Files are opened by content (``files.open_weights``), dims come from tensor shapes, never from file
names. Per-model part only: the prefix, the rename table (``keymaps.umt5_model_key``), the config
from shapes and which Linear layers stay quantized; the loading core (``load_core``) plans every
key and streams the tensors one at a time into a model built on the meta device.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..models.ops import TorchOps
from ..models.quant_ops import QuantoOps
from ..models.umt5 import UMT5Encoder
from . import keymaps as km
from .files import LoaderError, WeightFile, blame, open_weights
from .fp8 import FP8_QTYPE, fp8_linear_modules
from .load_core import KeyedFiles, KeyMap, load_into
from .quanto import find_quant_map, map_candidates, prepare_quantized
from .tokenizer import UMT5Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FILES_HINT = ("Choose models_t5_umt5-xxl-enc-bf16.pth, a umt5_xxl_*.safetensors file or t5_int8/t5_fp8.safetensors "
              "(with its t5_map_*.json).")


class TextEncoderLoadError(LoaderError):
    """A umT5 file that cannot be used, with what to do about it (a ``LoaderError``, so a ValueError)."""


def _strip_prefix(keys: list[str]) -> str:
    """The prefix in front of the HF or official names (ComfyUI sometimes nests text encoders)."""
    for key in keys:
        for mark in (km.UMT5_HF_ANCHOR, km.UMT5_OFFICIAL_ANCHOR):
            if key.endswith(mark):
                return key[: -len(mark)]
    raise TextEncoderLoadError(
        f"umT5: no umT5 encoder weights recognised (looked for '{km.UMT5_OFFICIAL_ANCHOR}' or "
        f"'{km.UMT5_HF_ANCHOR}'); choose models_t5_umt5-xxl-enc-bf16.pth, a umt5_xxl_*.safetensors file or "
        "t5_int8/t5_fp8.safetensors")


def official_name(key: str) -> str:
    return km.umt5_official_name(key)


def _named(src: WeightFile) -> tuple[KeyedFiles, str, str]:
    """The file's tensors under the official names (its prefix stripped, ``keymaps.umt5_model_key``),
    its format ('quanto', 'scaled_fp8' or 'plain') and the prefix."""
    raw = src.raw_keys()
    prefix = _strip_prefix(raw)
    files = KeyedFiles([src], lambda k: km.umt5_model_key(k[len(prefix):]) if k.startswith(prefix) else None)
    scaled = any(k == km.SCALED_FP8_MARKER or k.endswith("." + km.SCALED_FP8_MARKER) for k in raw)
    quanto = any(f.data for f in files.found.values())
    return files, "quanto" if quanto else "scaled_fp8" if scaled else "plain", prefix


def _config_from_shapes(shapes: dict[str, tuple]) -> dict:
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


def _quanto_map(src: WeightFile, prefix: str) -> dict[str, str]:
    """official module name -> quanto qtype, from the map next to the file (validated against the keys);
    without any map the stored dtypes say it (a warning: the map would only repeat them)."""
    stored = {k[len(prefix):]: k for k in src.raw_keys() if k.startswith(prefix)}
    if not any(p.is_file() for p in map_candidates(src.path)):
        log.warning("umT5: no quanto map (%s) next to %s; using the stored dtypes of every '*.weight._data'",
                    " or ".join(p.name for p in map_candidates(src.path)), src.path)
        qmap = {k[: -len(km.QUANTO_DATA)]: {"weights": "qint8" if src.dtype(v) == torch.int8 else "qfloat8_e4m3fn"}
                for k, v in stored.items() if k.endswith(km.QUANTO_DATA)}
    else:
        try:
            _, qmap = find_quant_map(src.path, list(stored), lambda k: src.dtype(stored[k]))
        except LoaderError as err:
            raise TextEncoderLoadError(f"umT5: the quanto map next to {src.path} does not fit its weights; the "
                                       f"map and weights do not belong together. {err}") from err
    return {official_name(m + ".weight")[: -len(".weight")]: spec["weights"] for m, spec in qmap.items()}


def _open(path) -> WeightFile:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
        if len(files) != 1:
            raise TextEncoderLoadError(f"umT5: folder {path} must hold exactly one .safetensors or .pth file")
        path = files[0]
    if not path.is_file():
        raise TextEncoderLoadError(f"umT5: {path} does not exist")
    return open_weights(path)


UMT5_KEYS = KeyMap("the umT5 encoder built from its shapes", error=TextEncoderLoadError,
                   hint=lambda missing, unexpected, twice: FILES_HINT + " If it is one of these, download it again.",
                   shape_fix="The file is damaged or not umT5-XXL. " + FILES_HINT)


def _load(path, device, dtype: torch.dtype, keep_quantized: bool):
    """(model, {quantized module: qtype}, config, WeightFile, format tag, embedded tokenizer or None)."""
    src = _open(path)
    with src:
        spiece = _embedded_spiece(src)             # read before the core releases the file
        files, fmt, prefix = _named(src)
        config = _config_from_shapes({name: files.shape(name) for name in files.found if name in files})
        keep = keep_quantized and fmt != "plain"
        with torch.device("meta"):
            model = UMT5Encoder(**config, operations=QuantoOps if keep else TorchOps, dtype=dtype)
        qtypes = {}
        if keep and fmt == "quanto":
            qtypes = _quanto_map(src, prefix)
        elif keep:      # scaled fp8: the fp8 Linear weights that come with a scale stay fp8 slots
            qtypes = {m: FP8_QTYPE for m in fp8_linear_modules(files, model) if files.found[m + ".weight"].scale}
        prepare_quantized(model, {m: {"weights": q, "activations": "none"} for m, q in qtypes.items()})
        load_into(model, files, UMT5_KEYS, dtype, device)
    return model.eval(), qtypes, config, src, fmt, spiece


def load_umt5_state(path, dtype: torch.dtype = torch.bfloat16, keep_quantized: bool = True):
    """(official-name state dict, {quantized module: qtype}, config, WeightFile, format tag).

    The state dict is the loaded model's (``_load``: streamed by the loading core, no second copy);
    the WeightFile is closed (its keys, shapes and path remain)."""
    try:
        model, qtypes, config, src, fmt, _ = _load(path, "cpu", dtype, keep_quantized)
    except LoaderError as err:
        raise blame(err, "t5_model")
    return model.state_dict(), qtypes, config, src, fmt


def _embedded_spiece(src: WeightFile) -> torch.Tensor | None:
    key = next((k for k in src.raw_keys() if k == "spiece_model" or k.endswith(".spiece_model")), None)
    return src.get(key) if key is not None else None


def load_umt5(path, device="cpu", dtype: torch.dtype = torch.bfloat16, tokenizer_path=None,
              keep_quantized: bool = True) -> tuple[UMT5Encoder, UMT5Tokenizer]:
    """Load the umT5 encoder (official/ComfyUI/quanto layouts) and its tokenizer from user files.

    ``keep_quantized``: int8 / fp8 layouts keep their Linear weights quantized (default); False
    dequantises them to ``dtype``. Errors are ``LoaderError``s blaming the ``t5_model`` input.
    """
    try:
        model, qtypes, config, src, fmt, spiece = _load(path, device, dtype, keep_quantized)
        tokenizer = load_tokenizer(src.path, spiece, tokenizer_path)
    except LoaderError as err:
        raise blame(err, "t5_model")
    log.info("umT5: loaded %s (%s; dim %d, %d layers, %d heads) as %s, %d Linear layers kept quantized",
             src.path, fmt, config["dim"], config["num_layers"], config["num_heads"], dtype, len(qtypes))
    return model, tokenizer
