"""wav2vec2 checkpoint on disk -> ``Wav2Vec2At25fps``, recognised by keys.

Layouts (all use transformers' parameter names; what differs is the prefix and the weight-norm
naming of the positional conv, both tables in ``keymaps``):
* the official HF folder ``chinese-wav2vec2-base/``: ``config.json`` + ``model.safetensors``
  (``refs/pr/1``), ``preprocessor_config.json``. Without safetensors its ``pytorch_model.bin`` is read
  like every torch file of this pack: ``torch.load(weights_only=True)`` (tensors only; a pickle that
  needs code execution is refused with a message to convert it).
* Kijai's ``wav2vec2-chinese-base_fp16.safetensors``: saved from a pretraining class, keys prefixed
  ``wav2vec2.``, positional conv as ``weight_g`` / ``weight_v`` (plus pretraining heads, ignored).
* ComfyUI's ``audio_encoders`` files: no prefix, ``parametrizations.weight.original0/1``.
Files are opened by content (``files.open_weights``): truncated, foreign and unsafe files get the same
``LoaderError`` as every other loader. Single files carry no config: dims are derived from tensor
shapes, the rest are wav2vec2-base values.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from ..models.wav2vec import Wav2Vec2At25fps
from . import keymaps as km
from .files import LoaderError, open_weights, read_json

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("feature_projection.projection.weight", "encoder.layers.0.attention.q_proj.weight",
                 km.WAV2VEC_ANCHOR)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
BASE_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
HEAD_DIM = 64  # every released wav2vec2 (base 768/12, large 1024/16)
# chinese-wav2vec2-base's preprocessor_config.json says do_normalize: false (see media/speech_features.py).
DEFAULT_DO_NORMALIZE = False


class Wav2VecLoadError(LoaderError):
    """A wav2vec2 file or folder that cannot be used, with what to do about it (a ``LoaderError``)."""


def _find_weights(path: Path) -> tuple[Path, Path | None]:
    """(weights file, folder with config.json or None). A folder: its safetensors, else its one torch file."""
    if path.is_dir():
        st = sorted(path.glob("*.safetensors"))
        if st:
            chosen = path / "model.safetensors" if (path / "model.safetensors").exists() else st[0]
            return chosen, path if (path / "config.json").exists() else None
        torch_files = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
        if len(torch_files) == 1:
            return torch_files[0], path if (path / "config.json").exists() else None
        raise Wav2VecLoadError(f"wav2vec2: no weights in folder {path} (found {len(torch_files)} torch files, no "
                               ".safetensors); put model.safetensors there (TencentGameMate/chinese-wav2vec2-base, "
                               "revision refs/pr/1) or use ComfyUI's wav2vec2-chinese-base_fp16.safetensors")
    if not path.exists():
        raise Wav2VecLoadError(f"wav2vec2: {path} does not exist")
    return path, path.parent if (path.parent / "config.json").exists() and _is_wav2vec_config(path.parent) else None


def _is_wav2vec_config(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "wav2vec2"
    except (OSError, ValueError):
        return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file, opened by content (safetensors, or torch files weights-only)."""
    with open_weights(path) as f:
        return {k: f.get(k) for k in f.raw_keys()}


def normalize_keys(sd: dict[str, torch.Tensor], target_keys: set[str] | None = None,
                   source: str = "") -> dict[str, torch.Tensor]:
    """Strip the ``wav2vec2.`` prefix, drop pretraining heads, and rename the weight-norm pair to
    whichever naming ``target_keys`` (the model's own) uses."""
    out = {}
    for key, value in sd.items():
        for prefix in km.WAV2VEC_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(km.WAV2VEC_IGNORED_PREFIXES):
            continue
        out[key] = value
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        raise Wav2VecLoadError(f"wav2vec2: {source or 'the file'} is not a wav2vec2 checkpoint "
                               f"(missing {missing}); choose a wav2vec2 audio encoder file")
    if target_keys is not None:
        for old, new in km.WAV2VEC_WEIGHT_NORM_NAMES:
            if old in out and old not in target_keys and new in target_keys:
                out[new] = out.pop(old)
            elif new in out and new not in target_keys and old in target_keys:
                out[old] = out.pop(new)
    return out


def _conv_layers(sd: dict[str, torch.Tensor]) -> list[int]:
    pat = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    return sorted(int(m.group(1)) for k in sd if (m := pat.match(k)))


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """A transformers config dict from tensor shapes (keys already normalised)."""
    hidden, conv_out = sd["feature_projection.projection.weight"].shape
    convs = _conv_layers(sd)
    if len(convs) != len(BASE_CONV_STRIDE):
        raise Wav2VecLoadError(f"wav2vec2: {len(convs)} conv layers found, expected {len(BASE_CONV_STRIDE)}; "
                               "this file needs its config.json next to it (HF folder layout)")
    weights = [sd[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))}
    pos_v = next((sd[name] for name in km.WAV2VEC_WEIGHT_NORM_NAMES[1] if name in sd), None)
    if pos_v is None:
        raise Wav2VecLoadError("wav2vec2: the positional conv weights (weight_v / original1) are missing")
    layer_norm_convs = "feature_extractor.conv_layers.1.layer_norm.weight" in sd
    return {
        "model_type": "wav2vec2",
        "hidden_size": int(hidden),
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, int(hidden) // HEAD_DIM),
        "intermediate_size": int(sd["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0]),
        "conv_dim": [int(w.shape[0]) for w in weights],
        "conv_kernel": [int(w.shape[2]) for w in weights],
        "conv_stride": list(BASE_CONV_STRIDE),
        "conv_bias": "feature_extractor.conv_layers.1.conv.bias" in sd,
        "feat_extract_norm": "layer" if layer_norm_convs else "group",
        # Released checkpoints pair layer-norm convs with the pre-LN ("stable") encoder.
        "do_stable_layer_norm": layer_norm_convs,
        "num_conv_pos_embeddings": int(pos_v.shape[2]),
        "num_conv_pos_embedding_groups": int(hidden) // int(pos_v.shape[1]),
        "feat_extract_activation": "gelu",
        "hidden_act": "gelu",
    }


def _folder_do_normalize(folder: Path | None) -> bool:
    if folder is not None and (folder / "preprocessor_config.json").exists():
        return bool(read_json(folder / "preprocessor_config.json", "wav2vec2 preprocessor config")
                    .get("do_normalize", False))
    return DEFAULT_DO_NORMALIZE


def load_wav2vec(path, device="cpu", dtype: torch.dtype = torch.float32) -> Wav2Vec2At25fps:
    """Load a wav2vec2 checkpoint (HF folder, Kijai's or ComfyUI's single file) for 25 fps features."""
    weights, folder = _find_weights(Path(path))
    raw = read_state_dict(weights)
    sd = normalize_keys(raw, source=str(weights))
    if folder is not None:
        config = read_json(folder / "config.json", "wav2vec2 config")
    else:
        config = config_from_state_dict(sd)
    model = Wav2Vec2At25fps(config, do_normalize=_folder_do_normalize(folder))
    target = set(model.state_dict())
    sd = normalize_keys(raw, target, source=str(weights))
    if "masked_spec_embed" in target and "masked_spec_embed" not in sd:
        sd["masked_spec_embed"] = torch.zeros_like(model.masked_spec_embed)  # training-only vector
    sd = {k: v for k, v in sd.items() if not (k == "masked_spec_embed" and k not in target)}
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise Wav2VecLoadError(f"wav2vec2: {weights} does not match the model built from its "
                               f"{'config.json' if folder else 'shapes'}: missing {result.missing_keys[:8]}, "
                               f"unexpected {result.unexpected_keys[:8]}")
    log.info("wav2vec2: loaded %s (hidden %d, %d layers, do_normalize=%s)", weights,
             model.config.hidden_size, model.config.num_hidden_layers, model.do_normalize)
    return model.to(device=device, dtype=dtype).eval()
