"""Random stand-ins for the two models the *host* loads for us: the Wan 2.1 VAE and CLIP vision ViT-H.

Both are written in exactly the layouts the host's own loaders recognise, so tests and the try-it
script exercise the real `VAELoader` / `CLIPVisionLoader`:

* ``write_tiny_vae(path, dim=...)``: the 194 tensor names of the official ``Wan2.1_VAE.pth`` (same
  names and ranks; every width scales with ``dim``; the official file has ``dim=96``).  ComfyUI
  0.3.75 reads the width from ``decoder.head.0.gamma``, so a narrow VAE is accepted; ``dim=1`` is
  the narrowest (every width is a positive multiple of ``dim``), and the host encodes/decodes it.
* ``clip_vision_h_path()``: the Comfy-Org ``clip_vision_h.safetensors`` layout (transformers CLIP
  vision names, 632M parameters, fp16).  The host recognises CLIP vision only by layer count, so
  there is no smaller variant; the file (1.2 GiB) is generated once per machine into a cache
  directory and reused.

Weights are random but scaled (fan-in normal, unit norms) so activations stay finite.

Measured through the host's own VAE / CLIP-vision objects (ComfyUI 0.3.75, 2 CPU cores, inference
mode): VAE dim=1 encode/decode of 17 frames at 64x64 2.1 s / 1.4 s, at 128x128 2.3 s / 3.6 s, 5 frames
at 256x256 2.6 s / 3.3 s (dim=4: 1.4/3.0, 6.5/10.7, 5.4/4.9 s). CLIP-H: generated in ~10 s, first
encode of one image ~12 s (weights paged in and cast), then ~4.5 s. One bundled workflow at 32x32,
one 81-frame window, 2 steps: ~25 s on the host.
Standard library + torch + safetensors only; no ComfyUI import.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".host" / "cache"          # .host/ is gitignored

log = logging.getLogger(__name__)

VAE_Z_DIM = 16
VAE_DIM_MULT = (1, 2, 4, 4)
CLIP_H = {"hidden": 1280, "layers": 32, "mlp": 5120, "patch": 14, "image": 224, "proj": 1024}


# ------------------------------------------------------------------------------------------ VAE
def _res_block(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    """Residual block: RMS norm, conv3d, RMS norm, conv3d (+1x1x1 shortcut when widths differ)."""
    shapes = {
        f"{prefix}.residual.0.gamma": (cin, 1, 1, 1),
        f"{prefix}.residual.2.weight": (cout, cin, 3, 3, 3),
        f"{prefix}.residual.2.bias": (cout,),
        f"{prefix}.residual.3.gamma": (cout, 1, 1, 1),
        f"{prefix}.residual.6.weight": (cout, cout, 3, 3, 3),
        f"{prefix}.residual.6.bias": (cout,),
    }
    if cin != cout:
        shapes[f"{prefix}.shortcut.weight"] = (cout, cin, 1, 1, 1)
        shapes[f"{prefix}.shortcut.bias"] = (cout,)
    return shapes


def _middle(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    """Residual block, single-head spatial attention, residual block."""
    shapes = _res_block(f"{prefix}.0", c, c)
    shapes.update({
        f"{prefix}.1.norm.gamma": (c, 1, 1),
        f"{prefix}.1.to_qkv.weight": (3 * c, c, 1, 1),
        f"{prefix}.1.to_qkv.bias": (3 * c,),
        f"{prefix}.1.proj.weight": (c, c, 1, 1),
        f"{prefix}.1.proj.bias": (c,),
    })
    shapes.update(_res_block(f"{prefix}.2", c, c))
    return shapes


def wan21_vae_shapes(dim: int = 96) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a Wan 2.1 VAE of base width ``dim`` (``dim=96`` is the official file)."""
    if dim < 1:
        raise ValueError(f"Wan 2.1 VAE width must be >= 1, got {dim}")
    z = VAE_Z_DIM
    top = dim * VAE_DIM_MULT[-1]
    shapes: dict[str, tuple[int, ...]] = {"encoder.conv1.weight": (dim, 3, 3, 3, 3),
                                          "encoder.conv1.bias": (dim,)}
    # Encoder: 4 stages of 2 residual blocks; stages 0-2 end in a downsample (1-2 also in time).
    widths = [dim * m for m in (1,) + VAE_DIM_MULT]
    idx = 0
    for stage in range(4):
        cin, cout = widths[stage], widths[stage + 1]
        for _ in range(2):
            shapes.update(_res_block(f"encoder.downsamples.{idx}", cin, cout))
            cin, idx = cout, idx + 1
        if stage < 3:
            shapes[f"encoder.downsamples.{idx}.resample.1.weight"] = (cout, cout, 3, 3)
            shapes[f"encoder.downsamples.{idx}.resample.1.bias"] = (cout,)
            if stage > 0:
                shapes[f"encoder.downsamples.{idx}.time_conv.weight"] = (cout, cout, 3, 1, 1)
                shapes[f"encoder.downsamples.{idx}.time_conv.bias"] = (cout,)
            idx += 1
    shapes.update(_middle("encoder.middle", top))
    shapes.update({"encoder.head.0.gamma": (top, 1, 1, 1),
                   "encoder.head.2.weight": (2 * z, top, 3, 3, 3), "encoder.head.2.bias": (2 * z,),
                   "conv1.weight": (2 * z, 2 * z, 1, 1, 1), "conv1.bias": (2 * z,),
                   "conv2.weight": (z, z, 1, 1, 1), "conv2.bias": (z,),
                   "decoder.conv1.weight": (top, z, 3, 3, 3), "decoder.conv1.bias": (top,)})
    shapes.update(_middle("decoder.middle", top))
    # Decoder: 4 stages of 3 residual blocks; stages 0-2 end in an upsample that halves the width
    # (0-1 also upsample time, through a conv that doubles channels before the shuffle).
    widths = [dim * m for m in (VAE_DIM_MULT[-1],) + tuple(reversed(VAE_DIM_MULT))]
    idx = 0
    for stage in range(4):
        cin = widths[stage] // 2 if stage > 0 else widths[stage]
        cout = widths[stage + 1]
        for _ in range(3):
            shapes.update(_res_block(f"decoder.upsamples.{idx}", cin, cout))
            cin, idx = cout, idx + 1
        if stage < 3:
            shapes[f"decoder.upsamples.{idx}.resample.1.weight"] = (cout // 2, cout, 3, 3)
            shapes[f"decoder.upsamples.{idx}.resample.1.bias"] = (cout // 2,)
            if stage < 2:
                shapes[f"decoder.upsamples.{idx}.time_conv.weight"] = (2 * cout, cout, 3, 1, 1)
                shapes[f"decoder.upsamples.{idx}.time_conv.bias"] = (2 * cout,)
            idx += 1
    shapes.update({"decoder.head.0.gamma": (dim, 1, 1, 1),
                   "decoder.head.2.weight": (3, dim, 3, 3, 3), "decoder.head.2.bias": (3,)})
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator,
                   dtype: torch.dtype) -> torch.Tensor:
    """Norm scales 1, biases 0, weights normal with std 1/sqrt(fan_in)."""
    if name.endswith(("gamma", "norm.weight", "layernorm.weight", "layrnorm.weight",
                      "layer_norm1.weight", "layer_norm2.weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    std = 1.0 / max(fan_in, 1) ** 0.5 if len(shape) > 1 else 0.02
    return (torch.randn(shape, generator=gen) * std).to(dtype)


def write_tiny_vae(path: str | os.PathLike, dim: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write a random Wan 2.1 VAE of width ``dim`` (safetensors, or ``.pth`` by weights-only save)."""
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    sd = {name: _random_tensor(name, shape, gen, dtype)
          for name, shape in wan21_vae_shapes(dim).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


# ------------------------------------------------------------------------------------ CLIP vision
def clip_vision_h_shapes(hidden: int = CLIP_H["hidden"], layers: int = CLIP_H["layers"],
                         mlp: int = CLIP_H["mlp"], patch: int = CLIP_H["patch"],
                         image: int = CLIP_H["image"], proj: int = CLIP_H["proj"],
                         ) -> dict[str, tuple[int, ...]]:
    """transformers CLIPVisionModelWithProjection names (the layout of ``clip_vision_h.safetensors``)."""
    tokens = (image // patch) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (hidden,),
        "vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (tokens, hidden),
        "vision_model.pre_layrnorm.weight": (hidden,),
        "vision_model.pre_layrnorm.bias": (hidden,),
    }
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{ln}.weight"] = (hidden,)
            shapes[f"{p}.{ln}.bias"] = (hidden,)
        for lin in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{lin}.weight"] = (hidden, hidden)
            shapes[f"{p}.self_attn.{lin}.bias"] = (hidden,)
        shapes[f"{p}.mlp.fc1.weight"] = (mlp, hidden)
        shapes[f"{p}.mlp.fc1.bias"] = (mlp,)
        shapes[f"{p}.mlp.fc2.weight"] = (hidden, mlp)
        shapes[f"{p}.mlp.fc2.bias"] = (hidden,)
    shapes["vision_model.post_layernorm.weight"] = (hidden,)
    shapes["vision_model.post_layernorm.bias"] = (hidden,)
    shapes["visual_projection.weight"] = (proj, hidden)
    return shapes


def write_clip_vision_h(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random full-size CLIP vision ViT-H (632M parameters, fp16, ~1.2 GiB)."""
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    sd = {name: _random_tensor(name, shape, gen, torch.float16)
          for name, shape in clip_vision_h_shapes().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp))
    os.replace(tmp, path)                  # concurrent writers never see a half-written file
    return path


def clip_vision_h_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached random CLIP vision ViT-H file, generated on first use (~6-10 s)."""
    cache = Path(cache_dir or os.environ.get("INFINITETALK_TEST_CACHE", DEFAULT_CACHE))
    path = cache / "tiny_clip_vision_h_fp16_seed0.safetensors"
    if not path.exists():
        log.info("generating a random CLIP vision ViT-H (632M params) at %s", path)
        write_clip_vision_h(path)
    return path


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Place ``src`` at ``dst`` by hard link (same filesystem) or symlink; never copies 1.2 GiB."""
    src, dst = Path(src).resolve(), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        return dst
    try:
        os.link(src, dst)
    except OSError:
        dst.symlink_to(src)
    return dst


def write_host_models(models_dir: str | os.PathLike, vae_name: str = "wan_2.1_vae.safetensors",
                      clip_name: str = "clip_vision_h.safetensors", vae_dim: int = 1,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Put a tiny VAE in ``models/vae/`` and the cached CLIP-H in ``models/clip_vision/``.

    Returns the file names as the host's loader nodes list them: ``{"vae": ..., "clip_vision": ...}``.
    """
    models = Path(models_dir)
    vae = models / "vae" / vae_name
    if not vae.exists():
        write_tiny_vae(vae, dim=vae_dim)
    link_or_copy(clip_vision_h_path(cache_dir), models / "clip_vision" / clip_name)
    return {"vae": vae_name, "clip_vision": clip_name}


# ------------------------------------------------------------------ a whole user model folder
# The file names users have after following the official download instructions, placed in the
# ComfyUI folders the pack reads (see loaders/model_folders.py KINDS). Keys: the roles the workflows use.
USER_FILES = {
    "base": "Wan2.1-I2V-14B-480P/diffusion_pytorch_model.safetensors.index.json",
    "adapter_single": "single/infinitetalk.safetensors",
    "adapter_multi": "multi/infinitetalk.safetensors",
    "int8": "quant_models/infinitetalk_single_int8.safetensors",
    "fp8": "quant_models/infinitetalk_single_fp8.safetensors",
    "fusionx": "quant_models/quant_model_int8_FusionX.safetensors",
    "fusionx_lora": "Wan2.1_I2V_14B_FusionX_LoRA.safetensors",
    "t5": "models_t5_umt5-xxl-enc-bf16.pth",
    "wav2vec": "chinese-wav2vec2-base",
    "vae": "Wan2.1_VAE.pth",
    "clip_vision": "clip_vision_h.safetensors",
}


def write_user_models(models_dir: str | os.PathLike, vae_dim: int = 1,
                      cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, str]:
    """Every model the bundled workflows name, tiny and random, under the official file names.

    DiT/adapters/LoRA come from ``tiny/dit_files.py`` (its TINY config), umT5 and wav2vec2 from
    ``tiny/text_audio_files.py`` widened to what that DiT expects (text_dim, 768-wide speech
    features), the VAE and CLIP vision from this module. Returns ``USER_FILES``.
    """
    import shutil

    from tiny import dit_files as D
    from tiny import text_audio_files as TA

    models = Path(models_dir)
    written = D.write_demo_models(models, D.TINY, seed)
    if written["model"] != f"diffusion_models/{USER_FILES['base']}":
        raise RuntimeError(f"tiny/dit_files.py wrote the base model at {written['model']}; "
                           f"expected diffusion_models/{USER_FILES['base']}")
    shutil.copyfile(models / written["lora"], models / "loras" / USER_FILES["fusionx_lora"])
    write_quant_models(models, seed)
    # umT5 (official .pth + the google/umt5-xxl tokenizer folder beside it) at the DiT's text width.
    t5_cfg = {**TA.TINY_T5, "dim": D.TINY["text_dim"]}
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    TA.write_umt5_pth(models / "text_encoders" / USER_FILES["t5"], t5_cfg, seed)
    TA.write_tokenizer_folder(models / "text_encoders" / "google" / "umt5-xxl")
    # wav2vec2: 12 layers x 768 features per frame, as the audio adapter expects.
    w2v_cfg = {**TA.TINY_WAV2VEC, "hidden_size": D.WAV_DIM, "num_attention_heads": 12}
    TA.write_wav2vec_folder(models / "wav2vec2" / USER_FILES["wav2vec"], w2v_cfg, seed)
    write_host_models(models, vae_name=USER_FILES["vae"], clip_name=USER_FILES["clip_vision"],
                      vae_dim=vae_dim, cache_dir=cache_dir)
    return dict(USER_FILES)


def write_quant_models(models_dir: str | os.PathLike, seed: int = 0) -> None:
    """The "int8", "fp8" and "FusionX" full models (base + adapter in one file), quantized the
    optimum-quanto way (every block Linear as ``.weight._data`` + ``._scale``), with their maps."""
    from tiny import dit_files as D

    models = Path(models_dir)
    base_w = D.random_weights(D.base_shapes(D.TINY), seed)
    for role, adapter_seed, qtype, map_name in (
            ("int8", seed + 1, "qint8", "infinitetalk_single_int8.json"),
            ("fp8", seed + 1, "qfloat8_e4m3fn", "infinitetalk_single_fp8.json"),
            ("fusionx", seed + 2, "qint8", "quantization_map_int8_FusionX.json")):
        full = {**base_w, **D.random_weights(D.audio_shapes(D.TINY), adapter_seed)}
        shapes = {k: tuple(v.shape) for k, v in full.items()}      # linear_modules reads shapes
        modules = [m for m in D.linear_modules(shapes) if m.startswith("blocks.")]
        D.write_quanto(models / "diffusion_models" / USER_FILES[role], full, qtype, modules, map_name, D.TINY)


DEMO_DIR = REPO / "demo"


def copy_demo_inputs(input_dir: str | os.PathLike) -> list[str]:
    """Copy the bundled demo images/audio/video (demo/) into a host's input/ folder."""
    import shutil

    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for src in sorted(DEMO_DIR.iterdir()):
        if src.suffix.lower() in (".png", ".wav", ".flac", ".mp4"):
            shutil.copyfile(src, input_dir / src.name)
            names.append(src.name)
    return names


def write_wav_int16(path: str | os.PathLike, samples, rate: int = 16000) -> None:
    """Write mono int16 ``samples`` (a numpy array) as a WAV file for a host's input/ folder."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


# ---------------------------------------------------------------- bundled workflows on tiny models
WORKFLOWS_API = REPO / "workflows_api"
# Sampler settings that make a tiny run cheap on 2 CPU cores (one 81-frame window ~20 s at 32x32).
TINY_SAMPLER = {"steps": 2, "resolution": "custom", "width": 32, "height": 32, "max_frames": 81}
FAST_MIN_STEPS = 4
TWO_SPEAKER_MIN_WIDTH = 64


def load_api_workflow(name: str) -> dict:
    """A bundled API-format graph (``workflows_api/<name>.json``)."""
    path = WORKFLOWS_API / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled workflow {path}; have: "
                                f"{sorted(p.stem for p in WORKFLOWS_API.glob('*.json'))}")
    return json.loads(path.read_text())


def tiny_graph(graph: dict, sampler: dict | None = None, inputs: dict | None = None,
               models: dict | None = None) -> dict:
    """A copy of ``graph`` for tiny models: sampler settings, input files and model names replaced.

    ``sampler`` updates every InfiniteTalkSampler (default ``TINY_SAMPLER``); ``inputs`` maps file
    names of LoadImage/LoadAudio/LoadVideo to others; ``models`` maps model file names to others
    (identity for ``write_user_models``, which writes the official names).
    """
    graph = json.loads(json.dumps(graph))
    sampler = TINY_SAMPLER if sampler is None else sampler
    inputs, models = inputs or {}, models or {}
    for node in graph.values():
        values = node["inputs"]
        if node["class_type"] == "InfiniteTalkSampler":
            values.update(sampler)
            if values.get("mode") == "fast" and values["steps"] > 0:   # fast takes 4..8 steps
                values["steps"] = max(values["steps"], FAST_MIN_STEPS)
            if "masks" in values and values.get("resolution") == "custom":
                # two speakers need each half of the frame to cover whole 16-pixel tokens
                values["width"] = max(values["width"], TWO_SPEAKER_MIN_WIDTH)
        for key, value in list(values.items()):
            if isinstance(value, str):
                if key in ("image", "audio", "file") and value in inputs:
                    values[key] = inputs[value]
                elif value in models:
                    values[key] = models[value]
    return graph
