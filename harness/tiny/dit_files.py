"""Writers of tiny random DiT files in every official layout (tests and the try-it demo).

Key names and shapes follow the official checkpoints (reference notes §1.5); only the sizes are
tiny. Every file we write carries its head count: shard sets in ``config.json`` (as the official
base does), single files in the safetensors metadata key ``config`` (JSON).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# The golden set-A tiny DiT (head_dim 32, so num_heads must be carried explicitly).
TINY = {
    "model_type": "i2v", "patch_size": [1, 2, 2], "text_len": 512, "in_dim": 36, "dim": 128,
    "ffn_dim": 256, "freq_dim": 256, "text_dim": 64, "out_dim": 16, "num_heads": 4, "num_layers": 2,
    "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "audio_window": 5,
    "intermediate_dim": 4, "output_dim": 64, "context_tokens": 32, "vae_scale": 4,
    "norm_input_visual": True, "norm_output_audio": True,
}
# ~43 M params (≈170 MB fp32): big enough for a meaningful peak-RSS measurement, fast to write.
BIG = {**TINY, "dim": 512, "ffn_dim": 2048, "num_heads": 4, "num_layers": 8, "intermediate_dim": 32}

CLIP_DIM, WAV_LAYERS, WAV_DIM = 1280, 12, 768
BASE_SHARD = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"
BASE_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _linear(shapes: dict, name: str, n_in: int, n_out: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)


def base_shapes(cfg: dict) -> dict[str, tuple]:
    """Official base Wan2.1 I2V keys -> shapes."""
    d, f, s = cfg["dim"], cfg["ffn_dim"], {}
    s["patch_embedding.weight"], s["patch_embedding.bias"] = (d, cfg["in_dim"], *cfg["patch_size"]), (d,)
    _linear(s, "text_embedding.0", cfg["text_dim"], d), _linear(s, "text_embedding.2", d, d)
    _linear(s, "time_embedding.0", cfg["freq_dim"], d), _linear(s, "time_embedding.2", d, d)
    _linear(s, "time_projection.1", d, 6 * d)
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}"
        s[f"{b}.modulation"] = (1, 6, d)
        for m in ("q", "k", "v", "o"):
            _linear(s, f"{b}.self_attn.{m}", d, d)
        for m in ("q", "k", "v", "o", "k_img", "v_img"):
            _linear(s, f"{b}.cross_attn.{m}", d, d)
        for n in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k",
                  "cross_attn.norm_k_img"):
            s[f"{b}.{n}.weight"] = (d,)
        s[f"{b}.norm3.weight"], s[f"{b}.norm3.bias"] = (d,), (d,)
        _linear(s, f"{b}.ffn.0", d, f), _linear(s, f"{b}.ffn.2", f, d)
    s["head.modulation"] = (1, 2, d)
    _linear(s, "head.head", d, cfg["out_dim"] * math.prod(cfg["patch_size"]))
    s["img_emb.proj.0.weight"], s["img_emb.proj.0.bias"] = (CLIP_DIM,), (CLIP_DIM,)
    _linear(s, "img_emb.proj.1", CLIP_DIM, CLIP_DIM), _linear(s, "img_emb.proj.3", CLIP_DIM, d)
    s["img_emb.proj.4.weight"], s["img_emb.proj.4.bias"] = (d,), (d,)
    return s


def audio_shapes(cfg: dict) -> dict[str, tuple]:
    """Official audio-adapter keys (the 330-key set at full size) -> shapes."""
    d, mid, out, s = cfg["dim"], cfg["intermediate_dim"], cfg["output_dim"], {}
    frame = WAV_LAYERS * WAV_DIM
    _linear(s, "audio_proj.proj1", cfg["audio_window"] * frame, mid)
    _linear(s, "audio_proj.proj1_vf", (cfg["audio_window"] + cfg["vae_scale"] - 1) * frame, mid)
    _linear(s, "audio_proj.proj2", mid, mid)
    _linear(s, "audio_proj.proj3", mid, cfg["context_tokens"] * out)
    s["audio_proj.norm.weight"], s["audio_proj.norm.bias"] = (out,), (out,)
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}"
        _linear(s, f"{b}.audio_cross_attn.q_linear", d, d)
        _linear(s, f"{b}.audio_cross_attn.kv_linear", out, 2 * d)
        _linear(s, f"{b}.audio_cross_attn.proj", d, d)
        s[f"{b}.norm_x.weight"], s[f"{b}.norm_x.bias"] = (d,), (d,)
    return s


def random_weights(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Well-scaled random fp32 weights: matrices ~1/sqrt(fan_in), norm weights near 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        t = torch.randn(shape, generator=g)
        if len(shape) >= 2 and not key.endswith("modulation"):
            t /= math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight") and len(shape) == 1:
            t = 1.0 + 0.1 * t
        else:
            t *= 0.1
        out[key] = t
    return out


def linear_modules(shapes: dict) -> list[str]:
    """The nn.Linear modules of a key set (2-D ``.weight`` keys)."""
    return sorted(k[:-7] for k, v in shapes.items() if k.endswith(".weight") and len(v) == 2)


def _meta(cfg: dict) -> dict[str, str]:
    return {"config": json.dumps(cfg)}


def write_base_shards(folder: Path, weights: dict, cfg: dict, n_shards: int = 7) -> Path:
    """Wan-AI layout: N shards + ``diffusion_pytorch_model.safetensors.index.json`` + ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(weights)
    per = math.ceil(len(keys) / n_shards)
    weight_map = {}
    for i in range(n_shards):
        name = BASE_SHARD.format(i + 1, n_shards)
        part = {k: weights[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / BASE_INDEX).write_text(json.dumps(index, indent=2))
    config = {"_class_name": "WanModel", "_diffusers_version": "0.30.0",
              **{k: cfg[k] for k in ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type",
                                     "num_heads", "num_layers", "out_dim", "text_len")}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder / BASE_INDEX


def write_single(path: Path, weights: dict, cfg: dict | None = None, dtype=torch.float32,
                 prefix: str = "", fp8_matrices: bool = False) -> Path:
    """One safetensors file: official adapter (fp32), ComfyUI repacks (bf16/fp16, ``model.diffusion_model.``
    prefix), ComfyUI fp8_e4m3fn (matrices in fp8, the rest in ``dtype``)."""
    out = {}
    for k, v in weights.items():
        to = torch.float8_e4m3fn if fp8_matrices and v.ndim >= 2 and not k.endswith("modulation") else dtype
        out[prefix + k] = v.to(to).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=_meta(cfg) if cfg else None)
    return path


def write_scaled_fp8(path: Path, weights: dict, cfg: dict | None = None) -> Path:
    """Kijai-style fp8 "scaled": fp8 matrices + a per-tensor ``scale_weight`` + a ``scaled_fp8`` marker."""
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for k, v in weights.items():
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().amax().clamp(min=1e-12) / 448.0
            out[k] = (v / scale).to(torch.float8_e4m3fn)
            out[k[:-7] + ".scale_weight"] = scale.reshape(())
        else:
            out[k] = v.to(torch.bfloat16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=_meta(cfg) if cfg else None)
    return path


def _quantize_rows(w: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """quanto's symmetric per-row scheme: scale = absmax / qmax (127 for int8, 448 for fp8 e4m3)."""
    qmax = 127.0 if qtype == "qint8" else 448.0
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    if qtype == "qint8":
        return (w / scale).round().clamp(-128, 127).to(torch.int8), scale
    return (w / scale).to(torch.float8_e4m3fn), scale


def quantize_weights(weights: dict, qtype: str, modules: list[str]) -> tuple[dict, dict]:
    """optimum-quanto layout for ``modules``: ``X.weight._data/_scale``, ``X.input_scale/output_scale``."""
    out, qmap = dict(weights), {}
    for m in modules:
        data, scale = _quantize_rows(out.pop(f"{m}.weight"), qtype)
        out[f"{m}.weight._data"], out[f"{m}.weight._scale"] = data, scale
        out[f"{m}.input_scale"], out[f"{m}.output_scale"] = torch.ones(()), torch.ones(())
        qmap[m] = {"weights": qtype, "activations": "none"}
    return out, qmap


def write_quanto(path: Path, weights: dict, qtype: str, modules: list[str], map_name: str | None = None,
                 cfg: dict | None = None) -> tuple[Path, Path | None]:
    """A quanto full model and its map (``map_name`` relative to the folder; None: no map)."""
    sd, qmap = quantize_weights(weights, qtype, modules)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=_meta(cfg) if cfg else None)
    map_path = None
    if map_name:
        map_path = path.parent / map_name
        map_path.write_text(json.dumps(qmap, indent=1))
    return path, map_path


def lora_weights(shapes: dict, rank: int = 4, fmt: str = "kohya", prefix: str = "diffusion_model.",
                 alpha: float | None = None, seed: int = 1, with_diffs: bool = True) -> dict[str, torch.Tensor]:
    """A LoRA over every block Linear: kohya (``lora_down/lora_up`` [+ ``alpha``], with ``diff``/``diff_b``
    as lightx2v/FusionX ship) or PEFT (``lora_A/lora_B``)."""
    g = torch.Generator().manual_seed(seed)
    down_name, up_name = ("lora_down", "lora_up") if fmt == "kohya" else ("lora_A", "lora_B")
    out = {}
    for m in linear_modules(shapes):
        if not m.startswith("blocks."):
            continue
        n_out, n_in = shapes[f"{m}.weight"]
        out[f"{prefix}{m}.{down_name}.weight"] = torch.randn(rank, n_in, generator=g) / math.sqrt(n_in)
        out[f"{prefix}{m}.{up_name}.weight"] = 0.05 * torch.randn(n_out, rank, generator=g)
        if alpha is not None:
            out[f"{prefix}{m}.alpha"] = torch.tensor(float(alpha))
        if with_diffs:
            out[f"{prefix}{m}.diff_b"] = 0.01 * torch.randn(n_out, generator=g)
    if with_diffs:
        for k, v in shapes.items():
            if ".norm" in k and k.endswith(".weight") and k.startswith("blocks."):
                out[f"{prefix}{k[:-7]}.diff"] = 0.01 * torch.randn(v, generator=g)
    return out


def write_demo_models(model_root: Path, cfg: dict = TINY, seed: int = 0) -> dict[str, str]:
    """A complete tiny set in ComfyUI model folders; returns {role: path relative to model_root}."""
    model_root = Path(model_root)
    base_w, audio_w = random_weights(base_shapes(cfg), seed), random_weights(audio_shapes(cfg), seed + 1)
    index = write_base_shards(model_root / "diffusion_models" / "Wan2.1-I2V-14B-480P", base_w, cfg)
    single = write_single(model_root / "infinitetalk" / "single" / "infinitetalk.safetensors", audio_w, cfg)
    multi = write_single(model_root / "infinitetalk" / "multi" / "infinitetalk.safetensors",
                         random_weights(audio_shapes(cfg), seed + 2), cfg)
    lora = model_root / "loras" / "tiny_lightx2v_lora_rank4.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_weights(base_shapes(cfg), rank=4, alpha=4.0), str(lora))
    paths = {"model": index, "audio_adapter_single": single, "audio_adapter_multi": multi, "lora": lora}
    return {role: p.relative_to(model_root).as_posix() for role, p in paths.items()}
