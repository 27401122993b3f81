"""Hostile and unlucky weight files (issue 11, points 7, 8 and the loader part of 9): each gets one
LoaderError that says what and where, never a raw library error, and names the input to blame."""
from __future__ import annotations

import json
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.files import LoaderError, open_weights
from tiny import dit_files as tf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    base = tf.random_weights(tf.base_shapes(tf.TINY), 0)
    audio = tf.random_weights(tf.audio_shapes(tf.TINY), 1)
    full = {**base, **audio}
    lin = tf.linear_modules({k: tuple(v.shape) for k, v in full.items()})
    out = {"full": tf.write_single(root / "full.safetensors", full, tf.TINY),
           "base": tf.write_single(root / "base.safetensors", base, tf.TINY),
           "full_weights": full,
           "quant": tf.write_quanto(root / "q" / "infinitetalk_single_int8.safetensors", full, "qint8", lin,
                                    "infinitetalk_single_int8.json", tf.TINY)[0]}
    return out


def _raw_safetensors(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# -- 7: shard index paths stay inside the index's folder ------------------------------------------
@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_index_shards_outside_the_folder_are_refused(tmp_path, shard):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    folder = tmp_path / "models"
    folder.mkdir()
    index = folder / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(LoaderError, match="outside") as err:
        open_weights(index)
    assert "root:" not in str(err.value)


def test_foreign_file_as_shard_does_not_echo_its_bytes(tmp_path):
    (tmp_path / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "passwd"}}))
    with pytest.raises(LoaderError) as err:
        open_weights(tmp_path / "m.safetensors.index.json")
    leaked = str(struct.unpack("<Q", b"root:x:0")[0])
    assert leaked not in str(err.value) and "root:x" not in str(err.value)


# -- 8: content decides the reader, not the name -------------------------------------------------
def test_torch_checkpoint_named_safetensors_is_read_by_content(tmp_path):
    torch.save({"a": torch.arange(3.0)}, tmp_path / "zip.safetensors")
    torch.save({"a": torch.arange(3.0)}, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    for name in ("zip.safetensors", "legacy.safetensors"):
        with open_weights(tmp_path / name) as f:
            assert torch.equal(f.get("a"), torch.arange(3.0))


def test_plain_zip_named_safetensors(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.safetensors", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(LoaderError, match="torch checkpoint"):
        open_weights(tmp_path / "x.safetensors")


# -- 9: malformed headers, indexes, metadata -------------------------------------------------------
@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [2]}, "a string", {"dtype": "F32", "shape": [2],
                                   "data_offsets": "x"}, {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}])
def test_malformed_safetensors_header_entries(tmp_path, entry):
    _raw_safetensors(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 8)
    with pytest.raises(LoaderError, match="header"):
        open_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("weight_map", [["a.safetensors"], {"w": 3}, "x"])
def test_index_weight_map_of_the_wrong_type(tmp_path, weight_map):
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(LoaderError, match="weight_map"):
        open_weights(tmp_path / "m.safetensors.index.json")


@pytest.mark.parametrize("heads", [0, "x", -4, 1.5])
def test_metadata_num_heads_out_of_range(tmp_path, files, heads):
    cfg = {**tf.TINY, "num_heads": heads}
    path = tf.write_single(tmp_path / "m.safetensors", files["full_weights"], cfg)
    with pytest.raises(LoaderError, match="num_heads") as err:
        load_dit(path, dtype=torch.float32)
    assert err.value.input == "model"


def test_broken_unrelated_json_beside_a_quant_file(files):
    """A broken notes.json is not 'the quantization map': with the real map there the file loads; without
    it the error says the map is missing."""
    notes = files["quant"].parent / "notes.json"
    qmap = files["quant"].parent / "infinitetalk_single_int8.json"
    notes.write_text("{ not json")
    try:
        assert load_dit(files["quant"], dtype=torch.float32).load_report.quantized_layers > 0
        qmap.rename(qmap.with_suffix(".bak"))
        with pytest.raises(LoaderError, match="no matching quantization map") as err:
            load_dit(files["quant"], dtype=torch.float32)
        assert "notes.json" not in str(err.value)
    finally:
        notes.unlink()
        if qmap.with_suffix(".bak").exists():
            qmap.with_suffix(".bak").rename(qmap)


def test_loader_errors_carry_the_input_to_blame(tmp_path, files):
    lora = tmp_path / "lora.safetensors"
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 64),
               "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(256, 4)}, str(lora))
    with pytest.raises(LoaderError) as err:
        load_dit(files["full"], loras=[(lora, 1.0)], dtype=torch.float32)
    assert err.value.input == "lora"
    with pytest.raises(LoaderError) as err:
        load_dit(files["full"], loras=[(tmp_path / "gone.safetensors", 1.0)], dtype=torch.float32)
    assert err.value.input == "lora"
    with pytest.raises(LoaderError) as err:
        load_dit(files["base"], adapter_path=tmp_path / "gone.safetensors", dtype=torch.float32)
    assert err.value.input == "audio_adapter"
