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
shapes, the rest are wav2vec2-base values. The key map (``keymaps.wav2vec_model_key``) is the only
per-model data of the load; the documented unused heads (``keymaps.WAV2VEC_UNUSED_PREFIXES``) are
skipped, every other tensor must fit exactly (``load_core``).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from ..models.wav2vec import Wav2Vec2At25fps
from . import keymaps as km
from .files import LoaderError, blame, open_weights, read_json
from .load_core import KeyedFiles, KeyMap, load_into

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("feature_projection.projection.weight", "encoder.layers.0.attention.q_proj.weight",
                 km.WAV2VEC_ANCHOR)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
BASE_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
HEAD_DIM = 64  # every released wav2vec2 (base 768/12, large 1024/16)
# chinese-wav2vec2-base's preprocessor_config.json says do_normalize: false (see media/speech_features.py).
DEFAULT_DO_NORMALIZE = False
MISSING_FIX = ("Download it again (TencentGameMate/chinese-wav2vec2-base, revision refs/pr/1, or "
               "wav2vec2-chinese-base_fp16.safetensors): the file is incomplete or another model.")


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


def _conv_layers(names) -> list[int]:
    pat = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    return sorted(int(m.group(1)) for k in names if (m := pat.match(k)))


def config_from_shapes(shapes: dict[str, tuple]) -> dict:
    """A transformers config dict from tensor shapes (under the encoder's names)."""
    hidden, conv_out = shapes["feature_projection.projection.weight"]
    convs = _conv_layers(shapes)
    if len(convs) != len(BASE_CONV_STRIDE):
        raise Wav2VecLoadError(f"wav2vec2: {len(convs)} conv layers found, expected {len(BASE_CONV_STRIDE)}; "
                               "this file needs its config.json next to it (HF folder layout)")
    weights = [shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))}
    pos_v = next((shapes[name] for name in km.WAV2VEC_WEIGHT_NORM_NAMES[1] if name in shapes), None)
    if pos_v is None:
        raise Wav2VecLoadError("wav2vec2: the positional conv weights (weight_v / original1) are missing")
    layer_norm_convs = "feature_extractor.conv_layers.1.layer_norm.weight" in shapes
    return {
        "model_type": "wav2vec2",
        "hidden_size": int(hidden),
        # the highest index, not the count: a layer missing in the middle is then a missing-key error
        "num_hidden_layers": max(layers) + 1,
        "num_attention_heads": max(1, int(hidden) // HEAD_DIM),
        "intermediate_size": int(shapes["encoder.layers.0.feed_forward.intermediate_dense.weight"][0]),
        "conv_dim": [int(w[0]) for w in weights],
        "conv_kernel": [int(w[2]) for w in weights],
        "conv_stride": list(BASE_CONV_STRIDE),
        "conv_bias": "feature_extractor.conv_layers.1.conv.bias" in shapes,
        "feat_extract_norm": "layer" if layer_norm_convs else "group",
        # Released checkpoints pair layer-norm convs with the pre-LN ("stable") encoder.
        "do_stable_layer_norm": layer_norm_convs,
        "num_conv_pos_embeddings": int(pos_v[2]),
        "num_conv_pos_embedding_groups": int(hidden) // int(pos_v[1]),
        "feat_extract_activation": "gelu",
        "hidden_act": "gelu",
    }


def _folder_do_normalize(folder: Path | None) -> bool:
    if folder is not None and (folder / "preprocessor_config.json").exists():
        return bool(read_json(folder / "preprocessor_config.json", "wav2vec2 preprocessor config")
                    .get("do_normalize", False))
    return DEFAULT_DO_NORMALIZE


def _key_hint(missing: set, unexpected: set, twice: set) -> str:
    if missing:
        return MISSING_FIX
    return ("It holds tensors a wav2vec2 encoder does not have (only the pretraining / CTC heads listed in "
            "keymaps.WAV2VEC_UNUSED_PREFIXES are skipped): choose a wav2vec2 encoder file.")


def _keymap(model_keys: set[str], built_from: str) -> KeyMap:
    return KeyMap(f"the wav2vec2 encoder built from its {built_from}",
                  rename=lambda key: km.wav2vec_model_key(key, model_keys),
                  fill={km.WAV2VEC_MASK_VECTOR: 0.0} if km.WAV2VEC_MASK_VECTOR in model_keys else {},
                  hint=_key_hint, shape_fix=f"Its {built_from} does not fit its weights. " + MISSING_FIX,
                  error=Wav2VecLoadError)


def load_wav2vec(path, device="cpu", dtype: torch.dtype = torch.float32) -> Wav2Vec2At25fps:
    """Load a wav2vec2 checkpoint (HF folder, Kijai's or ComfyUI's single file) for 25 fps features.

    The model is built on the meta device and filled tensor by tensor (``load_core``); a missing,
    unexpected or misshapen tensor is one ``Wav2VecLoadError`` blaming the ``wav2vec_model`` input.
    """
    try:
        return _load(Path(path), device, dtype)
    except LoaderError as err:
        raise blame(err, "wav2vec_model")


def _load(path: Path, device, dtype: torch.dtype) -> Wav2Vec2At25fps:
    weights, folder = _find_weights(path)
    with open_weights(weights) as src:
        named = KeyedFiles([src], km.wav2vec_model_key)        # the encoder's names, before it exists
        missing = [k for k in REQUIRED_KEYS if k not in named]
        if missing:
            raise Wav2VecLoadError(f"wav2vec2: {weights} is not a wav2vec2 checkpoint (missing {missing}); "
                                   "choose a wav2vec2 audio encoder file")
        if folder is not None:
            config = read_json(folder / "config.json", "wav2vec2 config")
        else:
            config = config_from_shapes({name: named.shape(name) for name in named.found if name in named})
        with torch.device("meta"):
            model = Wav2Vec2At25fps(config, do_normalize=_folder_do_normalize(folder))
        keymap = _keymap(set(model.state_dict()), "config.json" if folder else "shapes")
        load_into(model, [src], keymap, dtype, device)
    log.info("wav2vec2: loaded %s (hidden %d, %d layers, do_normalize=%s)", weights,
             model.config.hidden_size, model.config.num_hidden_layers, model.do_normalize)
    return model.eval()
