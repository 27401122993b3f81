"""Tiny-model parity of the DiT against the official implementation (golden dit_single / dit_multi)."""
from __future__ import annotations

import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.models.wan_dit import WanModel

ATOL = 1e-4
CASES = golden_cases("dit_single") + golden_cases("dit_multi")

# Fixture intermediate name -> (module path, how to read the hooked output).
_MODULE_TAPS = {
    "patch_embedding_out": "patch_embedding",
    "time_embedding_out_e": "time_embedding",
    "time_projection_out_e0": "time_projection",
    "text_embedding_out": "text_embedding",
    "img_emb_out": "img_emb",
    "audio_proj_out": "audio_proj",
    "head_out": "head",
}


def _build(case) -> WanModel:
    model = WanModel(**case.config).eval()
    model.load_state_dict(case.weights(), strict=True)
    return model


def _inputs(case) -> dict[str, torch.Tensor]:
    """Case inputs plus ``audio`` (windowed) and ``audio_null`` (the drop-audio input, one zero speaker)."""
    inp = case.inputs()
    if "audio" not in inp:
        inp["audio"] = inp["audio_full"][:, inp["audio_indices"]]  # [N, F, 5, 12, 768]
    inp["audio_null"] = torch.zeros_like(inp["audio"][:1])
    return inp


def _call(model, inp, call):
    context = inp[call["context"].strip("[]")][None]  # "[context]" -> [1, Lt, text_dim]
    x = inp[call.get("x", "x")][None]
    return model(x, inp[call["t"]], context, inp["clip_fea"], inp["y"], inp[call["audio"]],
                 ref_target_masks=inp["ref_target_masks"])


def _capture(model, records: dict):
    """Forward hooks that store every intermediate the fixtures record; returns the handles."""
    def tap(name, pick=lambda o: o):
        def hook(_module, _args, output):
            records[name] = pick(output)
        return hook

    handles = [model.get_submodule(path).register_forward_hook(tap(name))
               for name, path in _MODULE_TAPS.items()]
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(tap(f"block{i}.out")))
        handles.append(block.audio_cross_attn.register_forward_hook(tap(f"block{i}.audio_cross_attn_out")))
        handles.append(block.routing.register_forward_hook(tap(f"block{i}.x_ref_attn_map", lambda o: o[0])))
    return handles


@pytest.mark.parametrize("case", CASES)
def test_dit_outputs(case):
    model = _build(case)
    inp, expected = _inputs(case), case.outputs()
    for call in case.case["calls"]:
        out = _call(model, inp, call)
        assert_close(out, expected[call["output"]], ATOL, f"{case.id} {call['output']}")


@pytest.mark.parametrize("case", CASES)
def test_dit_intermediates(case):
    model = _build(case)
    model.capture_routing_map = True  # one speaker: the map is skipped in normal runs
    inp, expected = _inputs(case), case.outputs()
    compared = 0
    for k, call in enumerate(case.case["calls"]):
        prefix = f"inter_t{k}."
        wanted = {key[len(prefix):]: v for key, v in expected.items() if key.startswith(prefix)}
        if not wanted:
            continue
        records: dict[str, torch.Tensor] = {}
        handles = _capture(model, records)
        try:
            _call(model, inp, call)
        finally:
            for h in handles:
                h.remove()
        for name, value in wanted.items():
            assert name in records, f"{case.id}: intermediate {name} was not captured"
            assert_close(records[name], value, ATOL, f"{case.id} {prefix}{name}")
            compared += 1
    assert compared > 0, f"{case.id}: no inter_t* intermediates found in outputs.safetensors"


def test_routing_map_skipped_for_one_speaker():
    case = golden_cases("dit_single")[0].values[0]
    if case is None:
        pytest.skip("no dit_single fixture")
    model = _build(case)
    inp = _inputs(case)
    seen = []
    model.blocks[0].routing.register_forward_hook(lambda *_: seen.append(1))
    _call(model, inp, case.case["calls"][0])
    assert not seen, "the speaker-routing map must not be computed for one speaker"


def _multi():
    case = golden_cases("dit_multi")[0].values[0]
    if case is None:
        pytest.skip("no dit_multi fixture")
    return case, _build(case), _inputs(case)


@pytest.mark.parametrize("empty", [0, 1, 2])
def test_empty_speaker_mask_class_raises(empty):
    case, model, inp = _multi()
    masks = inp["ref_target_masks"].clone()
    masks[empty] = 0
    inp["ref_target_masks"] = masks
    name = ("speaker 1", "speaker 2", "background")[empty]
    with pytest.raises(ValueError, match=f"speaker mask '{name}' covers no token"):
        _call(model, inp, case.case["calls"][0])


def test_two_speakers_need_masks():
    _case, model, inp = _multi()
    with pytest.raises(ValueError, match="two speakers need ref_target_masks"):
        model(inp["x"][None], inp["t0"], inp["context"][None], inp["clip_fea"], inp["y"], inp["audio"])


def test_audio_length_mismatch_raises():
    case, model, inp = _multi()
    inp["audio"] = inp["audio"][:, :-1]
    with pytest.raises(ValueError, match="audio must be"):
        _call(model, inp, case.case["calls"][0])


def test_batch_of_two_matches_single():
    case, model, inp = _multi()
    call = case.case["calls"][0]
    single = _call(model, inp, call)
    context = inp["context"][None].expand(2, -1, -1)
    batched = model(inp["x"][None].expand(2, -1, -1, -1, -1), inp["t0"].expand(2), context,
                    inp["clip_fea"].expand(2, -1, -1), inp["y"].expand(2, -1, -1, -1, -1), inp["audio"],
                    ref_target_masks=inp["ref_target_masks"])
    assert_close(batched[0:1], single, 1e-5, "batch element 0")
    assert_close(batched[1:2], single, 1e-5, "batch element 1")


def test_bf16_weights_run():
    """bf16 weights: activations follow the weight dtype; output is fp32, finite and near the fp32 result."""
    case, model, inp = _multi()
    expected = case.outputs()["out_t0"]
    out = _call(model.to(torch.bfloat16), inp, case.case["calls"][0])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - expected).abs().mean() < 0.05


def test_rope_table_cached_per_grid_and_device():
    from infinitetalk.models.rope import rope_table_3d

    a = rope_table_3d((2, 4, 6), 32, "cpu")
    assert rope_table_3d((2, 4, 6), 32, torch.device("cpu")) is a, "table must be reused, not rebuilt"
    assert a[0].shape == (48, 1, 16) and a[0].dtype == torch.float64
    assert rope_table_3d((3, 4, 6), 32, "cpu") is not a


@pytest.mark.parametrize("case", golden_cases("dit_single"))
def test_meta_build_then_assign_matches(case):
    """Loader path: build on meta (no allocation), materialise with load_state_dict(assign=True)."""
    with torch.device("meta"):
        model = WanModel(**case.config)
    model.load_state_dict(case.weights(), strict=True, assign=True)
    assert not any(p.is_meta for p in model.parameters())
    call = case.case["calls"][0]
    assert_close(_call(model.eval(), _inputs(case), call), case.outputs()[call["output"]], ATOL, "meta+assign")


@pytest.mark.no_inference_mode
def test_rope_table_cached_in_inference_mode_works_with_grad():
    """A table first built under inference_mode must not break a later grad-enabled forward."""
    from infinitetalk.models.rope import apply_rope_3d, rope_table_3d

    with torch.inference_mode():
        table = rope_table_3d((1, 2, 3), 32, "cpu")
    x = torch.randn(1, 6, 2, 32, requires_grad=True)
    apply_rope_3d(x, table).sum().backward()
    assert x.grad is not None
