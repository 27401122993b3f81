"""loaders/clip_convert.py on a tiny synthetic CLIP file in the official XLM-RoBERTa CLIP naming.

Parity: the official vision tower (re-implemented here from its description: pre-norm ViT, fused
qkv, exact GELU, features = the output of the second-to-last block) against transformers'
CLIP vision model (the layout the host's CLIPVisionLoader reads) loaded from the converted file.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from infinitetalk.loaders.clip_convert import ClipConvertError, convert_official_clip
from tiny.host_files import clip_vision_h_shapes

D, HEADS, LAYERS, PATCH, IMAGE, PROJ = 32, 2, 3, 14, 28, 24
TOKENS = (IMAGE // PATCH) ** 2 + 1


def official_tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(shape, generator=g) * scale

    sd = {"visual.patch_embedding.weight": r(D, 3, PATCH, PATCH, scale=0.05),
          "visual.cls_embedding": r(1, 1, D), "visual.pos_embedding": r(1, TOKENS, D),
          "visual.pre_norm.weight": 1 + r(D), "visual.pre_norm.bias": r(D),
          "visual.post_norm.weight": 1 + r(D), "visual.post_norm.bias": r(D),
          "visual.head": r(D, PROJ)}
    for i in range(LAYERS):
        p = f"visual.transformer.{i}."
        sd.update({p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D),
                   p + "attn.to_qkv.weight": r(3 * D, D), p + "attn.to_qkv.bias": r(3 * D),
                   p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
                   p + "norm2.weight": 1 + r(D), p + "norm2.bias": r(D),
                   p + "mlp.0.weight": r(4 * D, D), p + "mlp.0.bias": r(4 * D),
                   p + "mlp.2.weight": r(D, 4 * D), p + "mlp.2.bias": r(D)})
    # The text tower and the logit scale are in the official file too; the converter drops them.
    sd.update({"textual.token_embedding.weight": r(10, 8), "textual.head.0.weight": r(8, 8),
               "log_scale": torch.tensor(4.6)})
    return sd


def official_features(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The official tower with use_31_block: every block but the last, no post-norm."""
    x = F.conv2d(pixels, sd["visual.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], dim=1)
    x = F.layer_norm(x + sd["visual.pos_embedding"], (D,), sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"])
    b, s, _ = x.shape
    for i in range(LAYERS - 1):
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        q, k, v = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"]).view(
            b, s, 3, HEADS, D // HEADS).unbind(2)                      # each [B, S, H, d]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(a.transpose(1, 2).reshape(b, s, D), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


@pytest.fixture()
def official_pth(tmp_path):
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(official_tiny_state_dict(), path)
    return path


def test_names_and_shapes_are_the_host_layout(official_pth, tmp_path):
    out = convert_official_clip(official_pth, tmp_path / "clip_vision_h.safetensors", dtype=None)
    sd = load_file(str(out))
    expected = clip_vision_h_shapes(hidden=D, layers=LAYERS, mlp=4 * D, patch=PATCH, image=IMAGE, proj=PROJ)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    src = official_tiny_state_dict()
    assert torch.equal(sd["visual_projection.weight"], src["visual.head"].t())
    qkv = src["visual.transformer.1.attn.to_qkv.weight"]
    assert torch.equal(sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"], qkv[D:2 * D])


def test_default_output_is_fp16(official_pth, tmp_path):
    sd = load_file(str(convert_official_clip(official_pth, tmp_path / "c.safetensors")))
    assert {v.dtype for v in sd.values()} == {torch.float16}


def test_features_match_the_official_tower(official_pth, tmp_path):
    transformers = pytest.importorskip("transformers")
    sd = load_file(str(convert_official_clip(official_pth, tmp_path / "c.safetensors", dtype=None)))
    cfg = transformers.CLIPVisionConfig(hidden_size=D, intermediate_size=4 * D, num_attention_heads=HEADS,
                                        num_hidden_layers=LAYERS, patch_size=PATCH, image_size=IMAGE,
                                        projection_dim=PROJ, hidden_act="gelu", layer_norm_eps=1e-5)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    ours = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    ref = official_features(official_tiny_state_dict(), pixels)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)


def test_never_overwrites(official_pth, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"user file")
    with pytest.raises(ClipConvertError, match="already exists"):
        convert_official_clip(official_pth, out)
    assert out.read_bytes() == b"user file"


def test_rejects_a_file_that_is_not_the_official_clip(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ClipConvertError, match="not the official XLM-RoBERTa CLIP"):
        convert_official_clip(other, tmp_path / "o.safetensors")


def test_runs_as_a_script(official_pth, tmp_path):
    """The documented command: ``python <pack>/loaders/clip_convert.py IN OUT`` (no -m, no package)."""
    from infinitetalk.loaders import clip_convert
    out = tmp_path / "script.safetensors"
    res = subprocess.run([sys.executable, clip_convert.__file__, str(official_pth), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out) and out.is_file()
    again = subprocess.run([sys.executable, clip_convert.__file__, str(official_pth), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr
