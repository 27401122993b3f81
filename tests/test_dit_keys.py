"""The full 14B WanModel's state-dict contract (official key names and shapes), built on meta."""
from __future__ import annotations

import pytest
import torch

from infinitetalk.models.wan_dit import DEFAULT_CONFIG, WanModel

BASE_KEYS, AUDIO_KEYS = 1303, 330
BASE_PARAMS, AUDIO_PARAMS = 16_394_878_784, 2_487_168_000

# A representative set of exact official shapes (official-implementation.md §1.5).
SHAPES = {
    "patch_embedding.weight": (5120, 36, 1, 2, 2), "patch_embedding.bias": (5120,),
    "text_embedding.0.weight": (5120, 4096), "text_embedding.2.weight": (5120, 5120),
    "time_embedding.0.weight": (5120, 256), "time_embedding.2.bias": (5120,),
    "time_projection.1.weight": (30720, 5120), "time_projection.1.bias": (30720,),
    "blocks.0.modulation": (1, 6, 5120),
    "blocks.0.self_attn.q.weight": (5120, 5120), "blocks.39.self_attn.o.bias": (5120,),
    "blocks.0.self_attn.norm_q.weight": (5120,), "blocks.0.self_attn.norm_k.weight": (5120,),
    "blocks.0.norm3.weight": (5120,), "blocks.0.norm3.bias": (5120,),
    "blocks.7.cross_attn.k_img.weight": (5120, 5120), "blocks.7.cross_attn.v_img.bias": (5120,),
    "blocks.7.cross_attn.norm_k_img.weight": (5120,), "blocks.7.cross_attn.norm_q.weight": (5120,),
    "blocks.3.ffn.0.weight": (13824, 5120), "blocks.3.ffn.0.bias": (13824,), "blocks.3.ffn.2.weight": (5120, 13824),
    "head.modulation": (1, 2, 5120), "head.head.weight": (64, 5120), "head.head.bias": (64,),
    "img_emb.proj.0.weight": (1280,), "img_emb.proj.1.weight": (1280, 1280),
    "img_emb.proj.3.weight": (5120, 1280), "img_emb.proj.4.bias": (5120,),
    "audio_proj.proj1.weight": (512, 46080), "audio_proj.proj1_vf.weight": (512, 73728),
    "audio_proj.proj2.weight": (512, 512), "audio_proj.proj3.weight": (24576, 512),
    "audio_proj.proj3.bias": (24576,), "audio_proj.norm.weight": (768,), "audio_proj.norm.bias": (768,),
    "blocks.0.audio_cross_attn.q_linear.weight": (5120, 5120), "blocks.0.audio_cross_attn.q_linear.bias": (5120,),
    "blocks.39.audio_cross_attn.kv_linear.weight": (10240, 768),
    "blocks.39.audio_cross_attn.kv_linear.bias": (10240,),
    "blocks.12.audio_cross_attn.proj.weight": (5120, 5120), "blocks.12.norm_x.weight": (5120,),
    "blocks.12.norm_x.bias": (5120,),
}


def _is_audio(key: str) -> bool:
    return key.startswith("audio_proj.") or ".audio_cross_attn." in key or ".norm_x." in key


@pytest.fixture(scope="module")
def state_dict():
    with torch.device("meta"):
        model = WanModel()
    return model.state_dict()


def test_key_counts(state_dict):
    audio = [k for k in state_dict if _is_audio(k)]
    assert len(state_dict) == BASE_KEYS + AUDIO_KEYS
    assert len(audio) == AUDIO_KEYS
    assert not [k for k in state_dict if "routing" in k or "freqs" in k], "no buffers/extra keys expected"


def test_param_counts(state_dict):
    audio = sum(v.numel() for k, v in state_dict.items() if _is_audio(k))
    base = sum(v.numel() for k, v in state_dict.items() if not _is_audio(k))
    assert (base, audio) == (BASE_PARAMS, AUDIO_PARAMS)


def test_representative_shapes(state_dict):
    for key, shape in SHAPES.items():
        assert key in state_dict, f"missing official key {key}"
        assert tuple(state_dict[key].shape) == shape, f"{key}: {tuple(state_dict[key].shape)} != {shape}"


def test_no_norm1_norm2_or_qk_norm_keys(state_dict):
    for bad in ("blocks.0.norm1.weight", "blocks.0.norm2.weight", "head.norm.weight",
                "blocks.0.audio_cross_attn.q_norm.weight", "blocks.0.audio_cross_attn.add_k_norm.weight"):
        assert bad not in state_dict


def test_config_and_from_config():
    with torch.device("meta"):
        model = WanModel.from_config({"_class_name": "WanModel", "dim": 5120, "in_dim": 36, "num_layers": 1})
    assert model.config["num_layers"] == 1 and model.config["dim"] == 5120
    assert set(model.config) == set(DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="unknown keys"):
        WanModel.from_config({"dimension": 8})
    with pytest.raises(ValueError, match="model_type"):
        WanModel(model_type="t2v", num_layers=0, device="meta")


def test_every_layer_comes_from_operations():
    """Layers arrive through ``operations`` (quant / host casting layers plug in without model edits)."""
    class Linear(torch.nn.Linear):
        pass

    class Conv3d(torch.nn.Conv3d):
        pass

    class LayerNorm(torch.nn.LayerNorm):
        pass

    class Ops:
        pass

    Ops.Linear, Ops.Conv3d, Ops.LayerNorm = Linear, Conv3d, LayerNorm
    with torch.device("meta"):
        model = WanModel(num_layers=2, operations=Ops)
    kinds = {torch.nn.Linear: Linear, torch.nn.Conv3d: Conv3d, torch.nn.LayerNorm: LayerNorm}
    for name, module in model.named_modules():
        for base, injected in kinds.items():
            if isinstance(module, base):
                assert isinstance(module, injected), f"{name} is a plain {base.__name__}, not from operations"
    assert sum(isinstance(m, Linear) for m in model.modules()) == 2 * 15 + 12
    assert sum(isinstance(m, LayerNorm) for m in model.modules()) == 2 * 2 + 3
