"""Every official / ComfyUI file layout loads from tiny files and gives the plain model's outputs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from golden import assert_close, golden_cases
from infinitetalk.loaders.detect import detect
from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.files import open_weights
from infinitetalk.loaders.lora import apply_loras
from infinitetalk.models.quant_ops import QuantoLinear
from infinitetalk.models.wan_dit import WanModel
from tiny import dit_files as tf

ATOL = 1e-5
CASE = golden_cases("dit_single")[0].values[0]


@pytest.fixture(scope="module")
def weights():
    return tf.random_weights(tf.base_shapes(tf.TINY), 0), tf.random_weights(tf.audio_shapes(tf.TINY), 1)


def run(model) -> torch.Tensor:
    inp = CASE.inputs()
    audio = inp["audio_full"][:, inp["audio_indices"]]
    return model(inp["x"][None], inp["t0"], inp["context"][None], inp["clip_fea"], inp["y"], audio,
                 ref_target_masks=inp["ref_target_masks"])


def plain_out(sd: dict) -> torch.Tensor:
    """Output of the plain fp32 model holding ``sd`` (cast to fp32)."""
    model = WanModel(**tf.TINY).eval()
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return run(model)


@pytest.fixture(scope="module")
def reference(weights):
    base, audio = weights
    return plain_out({**base, **audio})


def _roundtrip(sd: dict, dtype) -> dict:
    return {k: v.to(dtype).float() for k, v in sd.items()}


def test_base_shards_with_adapter_by_folder_index_and_shard(tmp_path, weights, reference):
    base, audio = weights
    index = tf.write_base_shards(tmp_path / "wan", base, tf.TINY)
    adapter = tf.write_single(tmp_path / "single" / "infinitetalk.safetensors", audio)  # no metadata
    for model_path in (tmp_path / "wan", index, tmp_path / "wan" / tf.BASE_SHARD.format(3, 7)):
        model = load_dit(model_path, adapter, dtype=torch.float32)
        assert model.config["num_heads"] == 4  # from config.json, not dim // 128
        assert_close(run(model), reference, ATOL, f"shards via {model_path.name}")


def test_bf16_load_casts_every_tensor(tmp_path, weights):
    base, audio = weights
    index = tf.write_base_shards(tmp_path / "wan", base, tf.TINY, n_shards=3)
    adapter = tf.write_single(tmp_path / "a.safetensors", audio)
    model = load_dit(index, adapter)  # default bf16
    sd = model.state_dict()
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert torch.equal(sd["blocks.1.ffn.0.weight"], base["blocks.1.ffn.0.weight"].bfloat16())


@pytest.mark.parametrize("dtype,fp8", [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)])
def test_comfy_single_file_full_model_with_prefix(tmp_path, weights, dtype, fp8):
    base, audio = weights
    path = tf.write_single(tmp_path / "full.safetensors", {**base, **audio}, tf.TINY, dtype,
                           prefix="model.diffusion_model.", fp8_matrices=fp8)
    info = detect(open_weights(path))
    assert (info.kind, info.prefix) == ("wan_full", "model.diffusion_model.")
    assert info.quant == ("fp8" if fp8 else None)
    stored = {k: v.to(torch.float8_e4m3fn if fp8 and v.ndim >= 2 and "modulation" not in k else dtype)
              for k, v in {**base, **audio}.items()}
    model = load_dit(path, dtype=torch.float32)
    assert_close(run(model), plain_out(stored), ATOL, "comfy single file")


def test_comfy_base_with_model_patches_adapter(tmp_path, weights):
    base, audio = weights
    path = tf.write_single(tmp_path / "diffusion_models" / "wan_bf16.safetensors", base, tf.TINY,
                           torch.bfloat16, prefix="model.diffusion_model.")
    patch = tf.write_single(tmp_path / "model_patches" / "wan2.1_infiniteTalk_single_fp16.safetensors",
                            audio, dtype=torch.float16)
    assert detect(open_weights(patch)).kind == "audio_adapter"
    model = load_dit(path, patch, dtype=torch.float32)
    expected = plain_out({**_roundtrip(base, torch.bfloat16), **_roundtrip(audio, torch.float16)})
    assert_close(run(model), expected, ATOL, "comfy base + model patch")


def test_kijai_scaled_fp8(tmp_path, weights):
    base, audio = weights
    path = tf.write_scaled_fp8(tmp_path / "scaled.safetensors", {**base, **audio}, tf.TINY)
    assert detect(open_weights(path)).quant == "fp8_scaled"
    with open_weights(path) as f:
        deq = {k: (f.get(k).float() * f.get(k[:-7] + ".scale_weight") if k[:-7] + ".scale_weight" in f
                   else f.get(k).float()) for k in f.keys() if k != "scaled_fp8" and "scale_weight" not in k}
    assert_close(run(load_dit(path, dtype=torch.float32)), plain_out(deq), ATOL, "fp8 scaled")


QUANTO_NAMES = [  # (weights file, map file) exactly as released
    ("infinitetalk_single_int8.safetensors", "infinitetalk_single_int8.json", "qint8"),
    ("infinitetalk_multi_fp8_lora.safetensors", "infinitetalk_multi_fp8_lora.json", "qfloat8_e4m3fn"),
    ("dit_model_int8.safetensors", "dit_model_map_int8.json", "qint8"),
    ("quant_model_fp8_FusionX.safetensors", "quantization_map_fp8_FusionX.json", "qfloat8_e4m3fn"),
]


@pytest.mark.parametrize("name,map_name,qtype", QUANTO_NAMES)
def test_quanto_full_models_find_their_map(tmp_path, weights, name, map_name, qtype):
    base, audio = weights
    full = {**base, **audio}
    modules = tf.linear_modules({k: tuple(v.shape) for k, v in full.items()})
    path, _ = tf.write_quanto(tmp_path / "quant_models" / name, full, qtype, modules, map_name, tf.TINY)
    model = load_dit(path, dtype=torch.float32)
    assert model.load_report.quant_map.endswith(map_name)
    sd, _ = tf.quantize_weights(full, qtype, modules)
    deq = {k: v for k, v in sd.items() if not k.endswith(("._data", "._scale", "_scale"))}
    for m in modules:
        deq[f"{m}.weight"] = sd[f"{m}.weight._data"].float() * sd[f"{m}.weight._scale"]
    assert_close(run(model), plain_out(deq), ATOL, name)


def test_quanto_follows_a_partial_map(tmp_path, weights, reference):
    base, audio = weights
    full = {**base, **audio}
    modules = [m for m in tf.linear_modules({k: tuple(v.shape) for k, v in full.items()}) if ".ffn." in m]
    path, _ = tf.write_quanto(tmp_path / "partial.safetensors", full, "qint8", modules, "partial.json", tf.TINY)
    model = load_dit(path, dtype=torch.float32)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantoLinear) and m.quantized}
    assert quantized == set(modules)
    assert_close(run(model), reference, 0.05, "partial int8 ~ float")


def test_multitalk_index_with_audio_shard_and_pth(tmp_path, weights, reference):
    base, audio = weights
    folder = tmp_path / "wan"
    index = tf.write_base_shards(folder, base, tf.TINY, n_shards=2)
    save_file(audio, str(folder / "multitalk.safetensors"))
    data = json.loads(index.read_text())
    data["weight_map"].update({k: "multitalk.safetensors" for k in audio})
    index.write_text(json.dumps(data))
    assert detect(open_weights(index)).kind == "wan_full"
    assert_close(run(load_dit(index, dtype=torch.float32)), reference, ATOL, "MultiTalk index")
    pth = tmp_path / "full.pth"
    torch.save({"state_dict": {**base, **audio}}, pth)
    assert_close(run(load_dit(pth, dtype=torch.float32, config={"num_heads": 4})), reference, ATOL, ".pth")


def _lora_model(tmp_path, weights):
    base, audio = weights
    path = tf.write_single(tmp_path / "full.safetensors", {**base, **audio}, tf.TINY)
    return load_dit(path, dtype=torch.float32), base


def test_lora_formats_alpha_strength_and_several(tmp_path, weights):
    shapes = tf.base_shapes(tf.TINY)
    kohya = tf.lora_weights(shapes, rank=4, alpha=2.0, seed=3)                       # alpha/rank = 0.5
    peft = tf.lora_weights(shapes, rank=2, fmt="peft", prefix="", seed=4, with_diffs=False)
    model, base = _lora_model(tmp_path, weights)
    reports = apply_loras(model, [(kohya, 0.8), (peft, 1.5)])
    assert [r.unmatched for r in reports] == [[], []]
    m = "blocks.1.self_attn.q"
    k = f"diffusion_model.{m}"
    want = (base[f"{m}.weight"] + 0.8 * 0.5 * kohya[f"{k}.lora_up.weight"] @ kohya[f"{k}.lora_down.weight"]
            + 1.5 * peft[f"{m}.lora_B.weight"] @ peft[f"{m}.lora_A.weight"])
    assert_close(model.state_dict()[f"{m}.weight"], want, 1e-6, "two LoRAs")
    assert_close(model.state_dict()[f"{m}.bias"], base[f"{m}.bias"] + 0.8 * kohya[f"{k}.diff_b"], 1e-6, "diff_b")
    norm = "blocks.0.norm3.weight"
    assert_close(model.state_dict()[norm], base[norm] + 0.8 * kohya["diffusion_model.blocks.0.norm3.diff"],
                 1e-6, "diff")


def test_lora_into_quantized_weights_requantizes(tmp_path, weights):
    base, audio = weights
    full = {**base, **audio}
    modules = tf.linear_modules({k: tuple(v.shape) for k, v in full.items()})
    path, _ = tf.write_quanto(tmp_path / "q_int8.safetensors", full, "qint8", modules, "q_int8.json", tf.TINY)
    model = load_dit(path, dtype=torch.float32)
    layer = model.get_submodule("blocks.0.ffn.0")
    before = layer.dequantized()
    lora = tf.lora_weights(tf.base_shapes(tf.TINY), rank=4, alpha=4.0, seed=5)
    apply_loras(model, [(lora, 1.0)])
    k = "diffusion_model.blocks.0.ffn.0"
    want = before + lora[f"{k}.lora_up.weight"] @ lora[f"{k}.lora_down.weight"]
    assert layer.weight_data.dtype == torch.int8
    step = layer.weight_scale.max().item()
    assert_close(layer.dequantized(), want, step, "requantized LoRA merge")


def test_demo_models_load(tmp_path):
    names = tf.write_demo_models(tmp_path)
    assert names["model"] == "diffusion_models/Wan2.1-I2V-14B-480P/" + tf.BASE_INDEX
    model = load_dit(tmp_path / names["model"], tmp_path / names["audio_adapter_single"],
                     loras=[(tmp_path / names["lora"], 1.0)], dtype=torch.float32)
    assert model.load_report.loras[0].applied and not model.load_report.loras[0].unmatched
    assert torch.isfinite(run(model)).all()
