"""Convert the official Wan/InfiniteTalk CLIP file into one ComfyUI's ``CLIPVisionLoader`` accepts.

The official ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` holds the whole
XLM-RoBERTa CLIP (``visual.*`` image tower, ``textual.*`` text tower, ``log_scale``); the host
rejects it ("clip vision file is invalid"). InfiniteTalk only uses the image tower, so we keep
``visual.*`` and rename it to the transformers CLIP-vision layout (that of Comfy-Org's
``clip_vision_h.safetensors``):

    visual.patch_embedding.weight       -> vision_model.embeddings.patch_embedding.weight
    visual.cls_embedding    [1, 1, D]   -> vision_model.embeddings.class_embedding  [D]
    visual.pos_embedding    [1, N, D]   -> vision_model.embeddings.position_embedding.weight [N, D]
    visual.pre_norm.*                   -> vision_model.pre_layrnorm.*   (sic: the host's spelling)
    visual.transformer.I.norm1/norm2.*  -> vision_model.encoder.layers.I.layer_norm1/layer_norm2.*
    visual.transformer.I.attn.to_qkv.*  -> ...self_attn.q_proj / k_proj / v_proj.*  (split in 3, q k v)
    visual.transformer.I.attn.proj.*    -> ...self_attn.out_proj.*
    visual.transformer.I.mlp.0 / mlp.2  -> ...mlp.fc1 / mlp.fc2
    visual.post_norm.*                  -> vision_model.post_layernorm.*
    visual.head             [D, P]      -> visual_projection.weight [P, D]  (transposed)

The converted features match the official encoder to ~5e-6 (use crop "none" in the host).

This file is self-contained (torch + safetensors only) so it also runs as a script::

    python custom_nodes/comfyui-infinitetalk/loaders/clip_convert.py \\
        models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth \\
        ComfyUI/models/clip_vision/clip_vision_h_infinitetalk.safetensors
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

PREFIX = "visual."
# Official name (after ``visual.``) -> host name, for names that are renamed one to one.
FIXED_NAMES = {
    "patch_embedding.weight": "vision_model.embeddings.patch_embedding.weight",
    "pre_norm.weight": "vision_model.pre_layrnorm.weight",
    "pre_norm.bias": "vision_model.pre_layrnorm.bias",
    "post_norm.weight": "vision_model.post_layernorm.weight",
    "post_norm.bias": "vision_model.post_layernorm.bias",
}
# Per transformer block: official sub-name -> host sub-name (to_qkv is handled apart: it splits).
BLOCK_NAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
BLOCK_RE = re.compile(r"^transformer\.(\d+)\.(.+)\.(weight|bias)$")
# The host tells CLIP-vision models apart by depth only: layer 30 present (and 47 absent) = ViT-H.
HOST_MIN_LAYERS, HOST_MAX_LAYERS = 31, 47


class ClipConvertError(ValueError):
    """The input is not an official CLIP file, or the output cannot be written."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors by header, .pth by ``torch.load(weights_only=True)``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:                 # legacy (non-zip) .pth files cannot be memory-mapped
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ClipConvertError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors")
    return sd


def convert_visual_state_dict(sd: dict[str, torch.Tensor],
                              dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Official ``visual.*`` tensors -> host CLIP-vision tensors (other keys are dropped)."""
    visual = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    if "transformer.0.attn.to_qkv.weight" not in visual:
        sample = ", ".join(sorted(sd)[:5])
        raise ClipConvertError(
            "not the official XLM-RoBERTa CLIP: 'visual.transformer.0.attn.to_qkv.weight' is missing "
            f"(first keys: {sample}). Pass models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth "
            "from the Wan2.1-I2V-14B-480P folder; Comfy-Org's clip_vision_h.safetensors needs no conversion.")
    out: dict[str, torch.Tensor] = {}
    for name, t in visual.items():
        if name in FIXED_NAMES:
            out[FIXED_NAMES[name]] = t
        elif name == "cls_embedding":                      # [1, 1, D] -> [D]
            out["vision_model.embeddings.class_embedding"] = t.reshape(-1)
        elif name == "pos_embedding":                      # [1, N, D] -> [N, D]
            out["vision_model.embeddings.position_embedding.weight"] = t.reshape(t.shape[-2], t.shape[-1])
        elif name == "head":                               # [D, P] -> [P, D]
            out["visual_projection.weight"] = t.t().contiguous()
        elif (m := BLOCK_RE.match(name)) is not None:
            out.update(_convert_block_tensor(int(m.group(1)), m.group(2), m.group(3), t, name))
        else:
            raise ClipConvertError(f"unexpected tensor 'visual.{name}' {tuple(t.shape)}: this converter "
                                   "knows the ViT-H 'token' pooling layout of the official file only")
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


def _convert_block_tensor(i: int, sub: str, kind: str, t: torch.Tensor, name: str):
    prefix = f"vision_model.encoder.layers.{i}."
    if sub == "attn.to_qkv":                 # rows are [q; k; v], each D long
        if t.shape[0] % 3:
            raise ClipConvertError(f"'visual.{name}' has {t.shape[0]} rows, not a multiple of 3")
        q, k, v = t.chunk(3, dim=0)
        return {f"{prefix}self_attn.{p}.{kind}": x for p, x in zip(("q_proj", "k_proj", "v_proj"), (q, k, v))}
    if sub not in BLOCK_NAMES:
        raise ClipConvertError(f"unexpected tensor 'visual.{name}' in transformer block {i}")
    return {f"{prefix}{BLOCK_NAMES[sub]}.{kind}": t}


def convert_official_clip(pth_path: str | os.PathLike, out_path: str | os.PathLike,
                          dtype: torch.dtype | None = torch.float16) -> Path:
    """Read the official CLIP file (weights only) and write the host's CLIP-vision safetensors.

    ``dtype`` (default fp16, as ComfyUI runs it) casts every tensor; ``None`` keeps the file's.
    Never overwrites: an existing ``out_path`` is an error.
    """
    src, dst = Path(pth_path), Path(out_path)
    if not src.is_file():
        raise ClipConvertError(f"{src}: no such file (the official CLIP file is "
                               "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)")
    if dst.exists():
        raise ClipConvertError(f"{dst} already exists; not overwriting it. Delete it or choose another name.")
    if dst.suffix != ".safetensors":
        raise ClipConvertError(f"{dst}: the output must end in .safetensors")
    out = convert_visual_state_dict(_read_state_dict(src), dtype)
    layers = 1 + max(int(k.split(".")[3]) for k in out if k.startswith("vision_model.encoder.layers."))
    if not HOST_MIN_LAYERS <= layers < HOST_MAX_LAYERS:
        log.warning("converted a %d-layer vision tower; ComfyUI's CLIPVisionLoader recognises the "
                    "32-layer ViT-H only, so it may refuse this file", layers)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file(out, str(tmp), metadata={"converted_from": src.name})
    if dst.exists():                          # appeared while we were writing: keep theirs
        tmp.unlink()
        raise ClipConvertError(f"{dst} appeared while converting; not overwriting it")
    os.replace(tmp, dst)
    log.info("wrote %s (%d tensors, %d layers)", dst, len(out), layers)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official_pth", help="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    parser.add_argument("out", help="output .safetensors, e.g. ComfyUI/models/clip_vision/"
                                    "clip_vision_h_infinitetalk.safetensors")
    parser.add_argument("--keep-dtype", action="store_true", help="keep the file's dtype (default: fp16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = convert_official_clip(args.official_pth, args.out, None if args.keep_dtype else torch.float16)
    except ClipConvertError as err:
        logging.error("%s", err)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
