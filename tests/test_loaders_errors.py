"""The bad-file catalogue: every wrong file gets a LoaderError that says what and where."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.files import LoaderError, open_weights
from infinitetalk.loaders.lora import apply_lora
from tiny import dit_files as tf


class NotATensor:  # pickled by reference: loading it would need code execution
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    base = tf.random_weights(tf.base_shapes(tf.TINY), 0)
    audio = tf.random_weights(tf.audio_shapes(tf.TINY), 1)
    full = {**base, **audio}
    lin = tf.linear_modules({k: tuple(v.shape) for k, v in full.items()})
    out = {
        "base": tf.write_single(root / "base.safetensors", base, tf.TINY),
        "adapter": tf.write_single(root / "adapter.safetensors", audio),
        "full": tf.write_single(root / "full.safetensors", full, tf.TINY),
        "lora": root / "lora.safetensors",
        "quant": tf.write_quanto(root / "q" / "infinitetalk_single_int8.safetensors", full, "qint8", lin,
                                 None, tf.TINY)[0],
    }
    save_file(tf.lora_weights(tf.base_shapes(tf.TINY)), str(out["lora"]))
    return out


def _raises(match: str, *args, **kwargs):
    with pytest.raises(LoaderError, match=match):
        load_dit(*args, dtype=torch.float32, **kwargs)


def test_truncated_safetensors(tmp_path, files):
    data = files["adapter"].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    _raises("truncated", files["base"], bad)


def test_not_a_weight_file(tmp_path, files):
    bad = tmp_path / "model.safetensors"
    bad.write_text("<html>404 Not Found</html>")
    _raises("not a weight file", bad)


def test_pickle_needing_code_execution_is_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, bad)
    with pytest.raises(LoaderError, match="code execution"):
        open_weights(bad)


def test_adapter_given_as_model(files):
    _raises("audio adapter.*audio_adapter input", files["adapter"])


def test_lora_given_as_model(files):
    _raises("is a LoRA.*lora input", files["lora"])


def test_base_given_as_adapter(files):
    _raises("not an audio adapter.*model input", files["base"], files["base"])


def test_two_adapters_full_model_plus_adapter(files):
    _raises("already contains audio weights", files["full"], files["adapter"])


def test_base_without_adapter(files):
    _raises("no audio weights", files["base"])


def test_quant_file_without_map(files):
    _raises("no matching quantization map", files["quant"])


def test_quant_map_that_does_not_match(files):
    wrong = files["quant"].with_suffix(".json")
    wrong.write_text(json.dumps({"blocks.0.self_attn.q": {"weights": "qint8", "activations": "none"}}))
    try:
        _raises("does not match the weights", files["quant"])
    finally:
        wrong.unlink()


def test_lora_for_another_architecture(files, tmp_path):
    model = load_dit(files["full"], dtype=torch.float32)
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
    with pytest.raises(LoaderError, match="another architecture"):
        apply_lora(model, sdxl)


def test_lora_partial_match_warns_and_reports(files, caplog):
    model = load_dit(files["full"], dtype=torch.float32)
    lora = tf.lora_weights(tf.base_shapes(tf.TINY), with_diffs=False)
    lora["diffusion_model.blocks.7.self_attn.q.lora_down.weight"] = torch.zeros(4, 128)
    with caplog.at_level(logging.WARNING):
        report = apply_lora(model, lora)
    assert report.unmatched == ["diffusion_model.blocks.7.self_attn.q.lora_down.weight"]
    assert "matched nothing" in caplog.text


def test_lora_with_wrong_shapes(files):
    model = load_dit(files["full"], dtype=torch.float32)
    lora = {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 64),
            "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(256, 4)}
    with pytest.raises(LoaderError, match="shapes disagree"):
        apply_lora(model, lora)


def test_adapter_for_another_model_size(tmp_path, files):
    other = tf.write_single(tmp_path / "a.safetensors",
                            tf.random_weights(tf.audio_shapes({**tf.TINY, "dim": 256}), 2))
    _raises("shapes disagree.*dim 256", files["base"], other)


def test_config_that_disagrees_with_shapes(files):
    _raises("shapes disagree.*ffn_dim", files["full"], config={"ffn_dim": 512})


def test_missing_shard(tmp_path):
    index = tf.write_base_shards(tmp_path / "wan", tf.random_weights(tf.base_shapes(tf.TINY)), tf.TINY)
    (tmp_path / "wan" / tf.BASE_SHARD.format(4, 7)).unlink()
    _raises("not in", index)


def test_missing_keys_are_listed(tmp_path, files):
    audio = tf.random_weights(tf.audio_shapes(tf.TINY), 1)
    del audio["blocks.1.norm_x.bias"]
    partial = tf.write_single(tmp_path / "a.safetensors", audio)
    _raises(r"1 missing \(e.g. \['blocks.1.norm_x.bias'\]\).*audio weights are missing", files["base"], partial)
