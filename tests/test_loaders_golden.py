"""Golden parity of the loaders: optimum-quanto int8 / fp8 full models and LoRA merging."""
from __future__ import annotations

import shutil

import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.lora import apply_lora
from infinitetalk.models.quant_ops import QuantoLinear
from infinitetalk.models.wan_dit import WanModel

QUANT_ATOL = 1e-4
LORA_ATOL = 1e-4


def call_model(model, case) -> torch.Tensor:
    """The fixture's DiT call (``case.case['call']``) on the golden inputs, batched."""
    inp, call = case.inputs(), case.case["call"]
    audio = inp["audio"] if "audio" in inp else inp["audio_full"][:, inp["audio_indices"]]
    context = inp[call["context"].strip("[]")][None]
    return model(inp["x"][None], inp[call["t"]], context, inp["clip_fea"], inp["y"], audio,
                 ref_target_masks=inp["ref_target_masks"])


@pytest.mark.parametrize("case", golden_cases("quant_int8") + golden_cases("quant_fp8"))
def test_quanto_full_model_matches_reference(case, tmp_path):
    # The fixture names its map "weights.json" (the official 'safetensors'->'json' replacement).
    weights = tmp_path / "weights.safetensors"
    shutil.copy(case.dir / case.case["weights_file"], weights)
    shutil.copy(case.dir / case.case["quant_map_file"], tmp_path / "weights.json")
    model = load_dit(weights, dtype=torch.float32, config=case.config)
    quantized = [m for m in model.modules() if isinstance(m, QuantoLinear) and m.quantized]
    assert len(quantized) == case.case["n_quantized_modules"]
    out = call_model(model, case)
    assert_close(out, case.outputs()[case.case["call"]["output"]], QUANT_ATOL, f"{case.id} out_t0")


@pytest.mark.parametrize("case", golden_cases("lora"))
def test_lora_merge_matches_reference(case):
    model = WanModel(**case.config).eval()
    model.load_state_dict(case.weights(), strict=True)
    report = apply_lora(model, case.dir / case.case["lora_file"], case.case["lora_scale"])
    assert sorted(report.applied) == sorted(case.case["merged_param_names"])
    assert report.unmatched == []
    expected = case.outputs()
    params = model.state_dict()
    for key, value in expected.items():
        if key.startswith("merged."):
            assert_close(params[key[len("merged."):]], value, 1e-6, f"{case.id} {key}")
    assert_close(call_model(model, case), expected["out_t0"], LORA_ATOL, f"{case.id} out_t0")
