"""The loading core on a toy model: one plan, one error for every key that does not fit, the quant
formats, fills, and files released after their last tensor."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from infinitetalk.loaders.files import LoaderError, open_weights
from infinitetalk.loaders.load_core import KeyMap, KeyedFiles, load_into, plan_keys
from infinitetalk.loaders.quanto import prepare_quantized

PLAIN = KeyMap("the toy model")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2, bias=False)


def _meta_toy(quantized: dict | None = None) -> Toy:
    with torch.device("meta"):
        model = Toy()
    if quantized:
        prepare_quantized(model, {m: {"weights": q, "activations": "none"} for m, q in quantized.items()})
    return model


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g),
            "b.weight": torch.randn(2, 3, generator=g)}


def _file(tmp_path, tensors: dict, name: str = "w.safetensors"):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name))
    return open_weights(tmp_path / name)


def test_plain_file_is_cast_and_assigned(tmp_path):
    w = _weights()
    model = _meta_toy()
    load_into(model, [_file(tmp_path, {k: v.half() for k, v in w.items()})], PLAIN, torch.float32, "cpu")
    assert model.a.weight.dtype == torch.float32 and not model.a.weight.requires_grad
    assert torch.equal(model.b.weight, w["b.weight"].half().float())


def test_missing_unexpected_and_twice_are_one_error(tmp_path):
    w = _weights()
    first = _file(tmp_path, {"a.weight": w["a.weight"], "c.weight": w["b.weight"]}, "1.safetensors")
    second = _file(tmp_path, {"a.weight": w["a.weight"]}, "2.safetensors")
    keymap = KeyMap("the toy model", hint=lambda m, u, t: f"hint {sorted(m)} {sorted(u)} {sorted(t)}")
    with pytest.raises(LoaderError) as err:
        plan_keys(_meta_toy(), [first, second], keymap)
    msg = str(err.value)
    assert "1.safetensors + " in msg and "the keys do not match the toy model" in msg
    assert "2 missing (e.g. ['a.bias', 'b.weight']), 1 unexpected (e.g. ['c.weight'])" in msg
    assert "1 provided twice (e.g. ['a.weight (1.safetensors) and a.weight (2.safetensors)'])" in msg
    assert msg.endswith("hint ['a.bias', 'b.weight'] ['c.weight'] ['a.weight']")


def test_rename_and_fill(tmp_path):
    w = _weights()
    src = _file(tmp_path, {"net." + k: v for k, v in w.items() if k != "a.bias"} | {"head.w": torch.ones(1)})
    keymap = KeyMap("toy", rename=lambda k: None if k.startswith("head.") else k.removeprefix("net."),
                    fill={"a.bias": 0.5})
    model = _meta_toy()
    load_into(model, [src], keymap, torch.bfloat16, "cpu")
    assert torch.equal(model.a.bias, torch.full((3,), 0.5, dtype=torch.bfloat16))
    assert torch.equal(model.a.weight, w["a.weight"].bfloat16())


def _scaled_fp8(w: dict) -> tuple[dict, dict]:
    """A Kijai / ComfyUI scaled-fp8 file of ``w``'s Linear weights; returns (file, dequantised)."""
    out, deq = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, dict(w)
    for k in ("a.weight", "b.weight"):
        scale = w[k].abs().max() / 448
        q = (w[k] / scale).to(torch.float8_e4m3fn)
        out[k], out[k[: -len("weight")] + "scale_weight"] = q, scale.reshape(())
        out[k[: -len("weight")] + "scale_input"] = torch.ones(())
        deq[k] = q.float() * scale
    out["a.bias"] = w["a.bias"]
    return out, deq


def test_scaled_fp8_kept_or_upcast_gives_the_same_weights(tmp_path):
    tensors, deq = _scaled_fp8(_weights())
    kept = _meta_toy({"a": "qfloat8_e4m3fn", "b": "qfloat8_e4m3fn"})
    load_into(kept, [_file(tmp_path, tensors)], PLAIN, torch.float32, "cpu")
    assert kept.a.weight_data.dtype == torch.float8_e4m3fn and kept.a.weight_scale.shape == (3, 1)
    upcast = _meta_toy()
    load_into(upcast, [_file(tmp_path, tensors, "u.safetensors")], PLAIN, torch.float32, "cpu")
    for name in ("a", "b"):
        assert torch.equal(getattr(kept, name).dequantized(), deq[name + ".weight"])
        assert torch.equal(getattr(upcast, name).weight, deq[name + ".weight"])


def test_quanto_file_kept_or_dequantised(tmp_path):
    w = _weights()
    data = (w["b.weight"] * 20).round().to(torch.int8)
    scale = torch.full((2, 1), 0.05)
    tensors = {"a.weight": w["a.weight"], "a.bias": w["a.bias"], "b.weight._data": data, "b.weight._scale": scale,
               "b.input_scale": torch.ones(()), "b.output_scale": torch.ones(())}
    kept = _meta_toy({"b": "qint8"})
    load_into(kept, [_file(tmp_path, tensors)], PLAIN, torch.float32, "cpu")
    assert torch.equal(kept.b.weight_data, data) and torch.equal(kept.b.weight_scale, scale)
    deq = _meta_toy()
    load_into(deq, [_file(tmp_path, tensors, "d.safetensors")], PLAIN, torch.float32, "cpu")
    assert torch.equal(deq.b.weight, data.float() * scale)       # activation scalars ignored


def test_quantized_slot_refuses_other_stored_dtype(tmp_path):
    tensors = {**_weights(), "b.weight._data": torch.zeros(2, 3, dtype=torch.int8), "b.weight._scale": torch.ones(2, 1)}
    del tensors["b.weight"]
    with pytest.raises(LoaderError, match="stored as torch.int8"):
        load_into(_meta_toy({"b": "qfloat8_e4m3fn"}), [_file(tmp_path, tensors)], PLAIN, torch.float32, "cpu")


def test_shape_mismatch_names_the_key_and_the_fix(tmp_path):
    tensors = {**_weights(), "b.weight": torch.zeros(2, 5)}
    keymap = KeyMap("toy", shape_fix="Check the config.")
    with pytest.raises(LoaderError, match=r"shapes disagree for b.weight: file \(2, 5\), model \(2, 3\). Check"):
        load_into(_meta_toy(), [_file(tmp_path, tensors)], keymap, torch.float32, "cpu")


def test_each_file_is_released_after_its_last_tensor(tmp_path):
    """A scaled weight in one shard and its scale in another: no file is dropped while still needed."""
    tensors, deq = _scaled_fp8(_weights())
    shards = {"s1.safetensors": {k: v for k, v in tensors.items() if "scale_weight" not in k},
              "s2.safetensors": {k: v for k, v in tensors.items() if "scale_weight" in k}}
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    for name, part in shards.items():
        save_file(part, str(tmp_path / name))
    (tmp_path / "m.safetensors.index.json").write_text(__import__("json").dumps(index))
    src = open_weights(tmp_path / "m.safetensors.index.json")
    released = []
    release = src.release
    src.release = lambda path: (released.append(path.name), release(path))
    model = _meta_toy()
    load_into(model, [src], PLAIN, torch.float32, "cpu")
    assert sorted(released) == ["s1.safetensors", "s2.safetensors"]
    assert torch.equal(model.b.weight, deq["b.weight"])


def test_keyed_files_answer_under_model_names(tmp_path):
    tensors, _ = _scaled_fp8(_weights())
    files = KeyedFiles([_file(tmp_path, {"x." + k: v for k, v in tensors.items()})],
                       rename=lambda k: k.removeprefix("x."))
    assert "a.weight" in files and files.dtype("a.weight") == torch.float8_e4m3fn
    assert files.shape("b.weight") == (2, 3) and files.found["b.weight"].scale == "x.b.scale_weight"


def test_a_weight_both_plain_and_quantized_is_provided_twice(tmp_path):
    tensors = {**_weights(), "b.weight._data": torch.zeros(2, 3, dtype=torch.int8), "b.weight._scale": torch.ones(2, 1)}
    with pytest.raises(LoaderError, match=r"1 provided twice \(e.g. \['b.weight \(w.safetensors\) and "
                                          r"b.weight._data \(w.safetensors\)'\]\)"):
        plan_keys(_meta_toy(), [_file(tmp_path, tensors)], PLAIN)
