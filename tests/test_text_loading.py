"""umT5 and wav2vec2 files in every supported layout load to the same model; clear errors otherwise."""
from __future__ import annotations

import pytest
import torch

from golden import assert_close
from infinitetalk.loaders.speech import Wav2VecLoadError, load_wav2vec
from infinitetalk.loaders.text import TextEncoderLoadError, load_umt5
from infinitetalk.loaders.tokenizer import TokenizerNotFoundError, clean_text, load_tokenizer
from infinitetalk.models.umt5 import UMT5Encoder
from infinitetalk.models.wav2vec import Wav2Vec2At25fps
from tiny import text_audio_files as tiny

PROMPTS = ["A woman is talking to the camera in a bright room.", "The man smiles and speaks slowly."]


def _plain_t5(sd: dict) -> UMT5Encoder:
    model = UMT5Encoder(**tiny.TINY_T5).eval()
    model.load_state_dict(sd, strict=True)
    return model


def _write(layout: str, folder):
    if layout == "pth":
        sd, path = tiny.write_umt5_pth(folder / "models_t5_umt5-xxl-enc-bf16.pth"), folder / "models_t5_umt5-xxl-enc-bf16.pth"
        tiny.write_tokenizer_folder(folder / "google" / "umt5-xxl")
    elif layout in ("comfy_fp16", "comfy_fp8_scaled"):
        path = folder / "umt5_xxl.safetensors"
        sd = tiny.write_umt5_comfy_safetensors(path, fp8_scaled=layout.endswith("scaled"))
    else:
        qtype = layout.split("_")[1]
        path = folder / "quant_models" / f"t5_{qtype}.safetensors"
        path.parent.mkdir()
        sd = tiny.write_umt5_quanto(path, qtype=qtype)
        tiny.write_tokenizer_folder(folder / "google" / "umt5-xxl")  # the ckpt dir, one level up
    return sd, path


@pytest.mark.parametrize("layout", ["pth", "comfy_fp16", "comfy_fp8_scaled", "quanto_int8", "quanto_fp8"])
def test_umt5_layouts_match_plain_model(layout, tmp_path):
    sd, path = _write(layout, tmp_path)
    model, tokenizer = load_umt5(path, dtype=torch.float32)
    assert model.config == {**tiny.TINY_T5, "shared_pos": False}
    ids, mask = tokenizer(PROMPTS)
    assert ids.shape == (2, 512) and mask.shape == (2, 512)
    assert_close(model(ids, mask), _plain_t5(sd)(ids, mask), 1e-5, f"{layout} hidden")


def test_umt5_default_dtype_is_bf16(tmp_path):
    _, path = _write("comfy_fp16", tmp_path)
    model, _ = load_umt5(path)
    assert model.token_embedding.weight.dtype == torch.bfloat16
    ids, mask = torch.tensor([[5, 6, 1, 0]]), torch.tensor([[1, 1, 1, 0]])
    assert model(ids, mask).dtype == torch.bfloat16


def test_tokenizer_sources_agree(tmp_path):
    tiny.write_tokenizer_folder(tmp_path / "json", spiece=False)
    tiny.write_tokenizer_folder(tmp_path / "spm", tokenizer_json=False)
    embedded = torch.frombuffer(bytearray(tiny.tiny_spiece_bytes()), dtype=torch.uint8)
    toks = [load_tokenizer(tmp_path / "x.pth", tokenizer_path=tmp_path / "json"),
            load_tokenizer(tmp_path / "x.pth", tokenizer_path=tmp_path / "spm"),
            load_tokenizer(tmp_path / "x.safetensors", spiece_model=embedded)]
    results = [t(PROMPTS) for t in toks]
    for ids, mask in results[1:]:
        assert torch.equal(ids, results[0][0]) and torch.equal(mask, results[0][1])


def test_tokenizer_eos_pad_truncation_and_cleaning(tmp_path):
    tok = load_tokenizer(tmp_path / "x.pth", tokenizer_path=tiny.write_tokenizer_folder(tmp_path / "t"))
    ids, mask = tok("hello world")
    n = int(mask.sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (mask[0, :n] == 1).all()
    ids, mask = tok("hello " * 2000)
    assert mask.all() and ids[0, -1] == 1
    assert clean_text("  a &amp;amp; b \n\t c ") == "a & b c"
    assert torch.equal(tok("a &amp; b")[0], tok(" a   & b ")[0])


def test_missing_tokenizer_error_lists_places(tmp_path):
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    tiny.write_umt5_pth(path)
    with pytest.raises(TokenizerNotFoundError) as err:
        load_umt5(path, dtype=torch.float32)
    msg = str(err.value)
    assert "spiece.model" in msg and "tokenizer.json" in msg and str(tmp_path / "google" / "umt5-xxl") in msg


def test_not_a_umt5_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(TextEncoderLoadError, match="no umT5 encoder weights"):
        load_umt5(tmp_path / "x.safetensors")


def test_quanto_map_mismatch_is_reported(tmp_path):
    _, path = _write("quanto_int8", tmp_path)
    (path.parent / "t5_map_int8.json").write_text('{"blocks.9.attn.q": {"weights": "qint8", "activations": "none"}}')
    with pytest.raises(TextEncoderLoadError, match="quanto map"):
        load_umt5(path, dtype=torch.float32)


# --------------------------------------------------------------------------------------- wav2vec2

def _plain_wav2vec(sd: dict) -> Wav2Vec2At25fps:
    model = Wav2Vec2At25fps(tiny.TINY_WAV2VEC)
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("layout", ["hf_folder", "comfy", "kijai"])
def test_wav2vec_layouts_match_plain_model(layout, tmp_path):
    if layout == "hf_folder":
        sd, path = tiny.write_wav2vec_folder(tmp_path / "chinese-wav2vec2-base"), tmp_path / "chinese-wav2vec2-base"
    else:
        path = tmp_path / "wav2vec2-chinese-base_fp16.safetensors"
        sd = tiny.write_wav2vec_comfy(path, style=layout)
    model = load_wav2vec(path)
    cfg = model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                "conv_kernel", "conv_stride", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"):
        value = getattr(cfg, key)
        assert (list(value) if isinstance(value, (list, tuple)) else value) == tiny.TINY_WAV2VEC[key], key
    assert model.do_normalize is False
    x = torch.randn(8000, generator=torch.Generator().manual_seed(1))
    assert_close(model(x, 12), _plain_wav2vec(sd)(x, 12), 1e-5, f"{layout} embedding")


def test_wav2vec_preprocessor_config_sets_do_normalize(tmp_path):
    tiny.write_wav2vec_folder(tmp_path / "w", do_normalize=True)
    assert load_wav2vec(tmp_path / "w").do_normalize is True


def test_wav2vec_refuses_pickle(tmp_path):
    folder = tmp_path / "chinese-wav2vec2-base"
    tiny.write_wav2vec_folder(folder, safetensors=False, pickle_bin=True)
    with pytest.raises(Wav2VecLoadError, match="refs/pr/1"):
        load_wav2vec(folder)
    with pytest.raises(Wav2VecLoadError, match="never unpickles"):
        load_wav2vec(folder / "pytorch_model.bin")


def test_wav2vec_rejects_other_files(tmp_path):
    path = tmp_path / "x.safetensors"
    tiny.write_umt5_comfy_safetensors(path, spiece=False)
    with pytest.raises(Wav2VecLoadError, match="not a wav2vec2 checkpoint"):
        load_wav2vec(path)
