"""fp8 DiT files stay fp8 in memory: dtype and byte count, equal outputs, LoRA, host operations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from golden import assert_close
from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.lora import apply_loras
from infinitetalk.models.quant_ops import QuantoLinear
from test_loaders_layouts import run
from tiny import dit_files as tf


@pytest.fixture(scope="module")
def full():
    return {**tf.random_weights(tf.base_shapes(tf.TINY), 0), **tf.random_weights(tf.audio_shapes(tf.TINY), 1)}


@pytest.fixture(scope="module")
def fp8_files(tmp_path_factory, full):
    root = tmp_path_factory.mktemp("fp8")
    return {
        "fp8": tf.write_single(root / "wan_fp8_e4m3fn.safetensors", full, tf.TINY, torch.bfloat16,
                               prefix="model.diffusion_model.", fp8_matrices=True),
        "fp8_scaled": tf.write_scaled_fp8(root / "wan_fp8_scaled.safetensors", full, tf.TINY),
    }


def _bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.mark.parametrize("layout", ["fp8", "fp8_scaled"])
def test_fp8_file_loads_into_fp8_layers(fp8_files, full, layout):
    model = load_dit(fp8_files[layout], dtype=torch.bfloat16)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantoLinear)}
    expected = set(tf.linear_modules({k: tuple(v.shape) for k, v in full.items()}))
    assert set(linears) == expected and model.load_report.quantized_layers == len(expected)
    assert all(m.quantized and m.weight_data.dtype == torch.float8_e4m3fn for m in linears.values())
    if layout == "fp8":
        assert all(torch.equal(m.weight_scale, torch.ones_like(m.weight_scale)) for m in linears.values())
    # fp8 data (1 B) + fp32 row scale + two fp32 scalars per Linear, bf16 for every other tensor.
    lin_keys = {f"{m}.weight" for m in expected}
    want = sum(full[k].numel() + 4 * full[k].shape[0] + 8 for k in lin_keys)
    want += sum(2 * v.numel() for k, v in full.items() if k not in lin_keys)
    assert _bytes(model) == want
    upcast = load_dit(fp8_files[layout], dtype=torch.bfloat16, keep_quantized=False)
    assert _bytes(upcast) == 2 * sum(v.numel() for v in full.values()) > want
    assert not any(isinstance(m, QuantoLinear) for m in upcast.modules())


@pytest.mark.parametrize("layout", ["fp8", "fp8_scaled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_kept_equals_upcast(fp8_files, layout, dtype):
    kept = load_dit(fp8_files[layout], dtype=dtype)
    upcast = load_dit(fp8_files[layout], dtype=dtype, keep_quantized=False)
    with torch.no_grad():
        assert torch.equal(run(kept), run(upcast))  # dequantize-then-matmul is the upcast math


def test_lora_into_scale_one_fp8(fp8_files, full):
    model = load_dit(fp8_files["fp8"], dtype=torch.float32)
    layer = model.get_submodule("blocks.0.ffn.0")
    before = layer.dequantized()
    assert torch.equal(before, full["blocks.0.ffn.0.weight"].to(torch.float8_e4m3fn).float())
    lora = tf.lora_weights(tf.base_shapes(tf.TINY), rank=4, alpha=4.0, seed=5)
    apply_loras(model, [(lora, 1.0)])
    k = "diffusion_model.blocks.0.ffn.0"
    want = before + lora[f"{k}.lora_up.weight"] @ lora[f"{k}.lora_down.weight"]
    assert layer.weight_data.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (want.shape[0], 1)
    # Requantized per row to fp8 e4m3 (3 mantissa bits): relative step 2^-3, so rounding <= 2^-4 |w|,
    # plus half the smallest subnormal step (scale · 2^-9) near zero.
    bound = want.abs() * 2**-4 + layer.weight_scale * 2**-9 + 1e-7
    assert ((layer.dequantized() - want).abs() <= bound).all()
    with torch.no_grad():
        assert torch.isfinite(run(model)).all()


class _HostLinear(nn.Linear):
    """Stands in for the host's casting Linear (a subclass of nn.Linear)."""


class HostOps:
    Linear = _HostLinear
    Conv3d = nn.Conv3d
    LayerNorm = nn.LayerNorm


def test_operations_argument(fp8_files, full, tmp_path):
    plain = tf.write_single(tmp_path / "full.safetensors", full, tf.TINY)
    model = load_dit(plain, dtype=torch.float32, operations=HostOps)
    assert isinstance(model.get_submodule("blocks.0.ffn.0"), _HostLinear)
    assert_close(run(model), run(load_dit(plain, dtype=torch.float32)), 0.0, "host operations")
    quant = load_dit(fp8_files["fp8"], dtype=torch.float32, operations=HostOps)
    layer = quant.get_submodule("blocks.0.ffn.0")
    assert isinstance(layer, QuantoLinear) and layer.quantized  # quantized layers take precedence
