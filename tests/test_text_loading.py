"""umT5 and wav2vec2 files in every supported layout load to the same model; clear errors otherwise."""
from __future__ import annotations

import pytest
import torch

from golden import assert_close
from infinitetalk.loaders.files import LoaderError
from infinitetalk.models.quant_ops import QuantoLinear
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


def test_wav2vec_reads_tensor_only_bin_weights_only(tmp_path):
    folder = tmp_path / "chinese-wav2vec2-base"
    sd = tiny.write_wav2vec_folder(folder, safetensors=False, pickle_bin=True)
    x = torch.randn(8000, generator=torch.Generator().manual_seed(2))
    for path in (folder, folder / "pytorch_model.bin"):
        assert_close(load_wav2vec(path)(x, 12), _plain_wav2vec(sd)(x, 12), 1e-5, f"{path.name} embedding")


def test_wav2vec_rejects_other_files(tmp_path):
    path = tmp_path / "x.safetensors"
    tiny.write_umt5_comfy_safetensors(path, spiece=False)
    with pytest.raises(Wav2VecLoadError, match="not a wav2vec2 checkpoint"):
        load_wav2vec(path)


def _drop_key(path, part: str) -> str:
    """Rewrite a safetensors file without the one key containing ``part``; returns that key."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    key = next(k for k in sd if part in k)
    del sd[key]
    save_file(sd, str(path))
    return key


@pytest.mark.parametrize("layout", ["hf_folder", "comfy", "kijai"])
def test_wav2vec_missing_weight_is_one_clear_error(layout, tmp_path):
    """A missing tensor must never leave a random weight: one LoaderError naming the file, the key,
    the input and the fix."""
    if layout == "hf_folder":
        tiny.write_wav2vec_folder(tmp_path / "w")
        path, weights = tmp_path / "w", tmp_path / "w" / "model.safetensors"
    else:
        path = weights = tmp_path / "wav2vec2-chinese-base_fp16.safetensors"
        tiny.write_wav2vec_comfy(path, style=layout)
    _drop_key(weights, "layers.3.attention.k_proj.bias")
    with pytest.raises(LoaderError) as err:
        load_wav2vec(path)
    msg = str(err.value)
    assert str(weights) in msg and "encoder.layers.3.attention.k_proj.bias" in msg
    assert err.value.input == "wav2vec_model" and "Download" in msg


def test_wav2vec_unused_keys_are_a_documented_list(tmp_path):
    """Pretraining / CTC heads load (ignored, listed in keymaps); any other extra key is an error."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    sd = tiny.write_wav2vec_comfy(path, style="kijai")
    extra = load_file(str(path))
    extra.update({"project_hid.weight": torch.zeros(2, 2), "lm_head.weight": torch.zeros(2, 2),
                  "wav2vec2.masked_spec_embed": torch.zeros(tiny.TINY_WAV2VEC["hidden_size"])})
    save_file(extra, str(path))
    x = torch.randn(8000, generator=torch.Generator().manual_seed(3))
    assert_close(load_wav2vec(path)(x, 12), _plain_wav2vec(sd)(x, 12), 1e-5, "with heads")
    extra["classifier.weight"] = torch.zeros(2, 2)
    save_file(extra, str(path))
    with pytest.raises(LoaderError, match="classifier.weight") as err:
        load_wav2vec(path)
    assert err.value.input == "wav2vec_model"


# ------------------------------------------------------------- quantized weights stay quantized

def _state_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.mark.parametrize("qtype,stored", [("int8", torch.int8), ("fp8", torch.float8_e4m3fn)])
def test_umt5_quanto_stays_quantized(qtype, stored, tmp_path):
    sd, path = _write(f"quanto_{qtype}", tmp_path)
    model, _ = load_umt5(path, dtype=torch.bfloat16)
    linears = [m for m in model.modules() if isinstance(m, QuantoLinear)]
    assert len(linears) == 7 * tiny.TINY_T5["num_layers"] and all(m.quantized for m in linears)
    assert {m.weight_data.dtype for m in linears} == {stored}
    # Bytes: int8/fp8 data (1 B) + fp32 row scale + two scalars per Linear; bf16 for the rest.
    names = {n for n, m in model.named_modules() if isinstance(m, QuantoLinear)}
    lin = {k for k in sd if k[: -len(".weight")] in names}
    want = sum(sd[k].numel() + 4 * sd[k].shape[0] + 8 for k in lin) + sum(2 * v.numel() for k, v in sd.items()
                                                                        if k not in lin)
    assert _state_bytes(model) == want
    upcast, _ = load_umt5(path, dtype=torch.bfloat16, keep_quantized=False)
    assert _state_bytes(upcast) == 2 * sum(v.numel() for v in sd.values()) > want
    ids, mask = torch.tensor([[5, 6, 7, 1, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    assert torch.equal(model(ids, mask), upcast(ids, mask))  # same math: dequantize, then matmul


def test_umt5_scaled_fp8_stays_fp8(tmp_path):
    sd, path = _write("comfy_fp8_scaled", tmp_path)
    model, tok = load_umt5(path, dtype=torch.float32)
    assert model.blocks[0].ffn.fc2.weight_data.dtype == torch.float8_e4m3fn
    ids, mask = tok(PROMPTS)
    assert torch.equal(model(ids, mask), load_umt5(path, dtype=torch.float32, keep_quantized=False)[0](ids, mask))


# ------------------------------------------------------------- one tensor at a time (host memory)

@pytest.fixture
def live_reads(monkeypatch):
    """Counts, at every read, the bytes of earlier reads still alive (weak references to what
    ``WeightFile.get`` returned): a loader that builds a whole dict of the file holds them all."""
    import weakref

    from infinitetalk.loaders.files import WeightFile

    refs, peak, get = {}, [0], WeightFile.get

    def counting_get(self, key):
        peak[0] = max(peak[0], sum(n for ref, n in refs.values() if ref() is not None))
        t = get(self, key)
        refs[id(t)] = (weakref.ref(t), t.numel() * t.element_size())
        return t

    monkeypatch.setattr(WeightFile, "get", counting_get)
    return peak


@pytest.mark.parametrize("loader", ["umt5", "wav2vec"])
def test_encoders_read_one_tensor_at_a_time(loader, live_reads, tmp_path):
    """fp16 files loaded as fp32: every tensor read is a temporary that is cast and placed before the
    next is read, so at most one earlier read (a weight with its scale) is alive, never the file."""
    path = tmp_path / "x.safetensors"
    if loader == "umt5":
        sd = tiny.write_umt5_comfy_safetensors(path, spiece=False)
        model = load_umt5(path, dtype=torch.float32, tokenizer_path=tiny.write_tokenizer_folder(tmp_path / "t"))[0]
    else:
        sd = tiny.write_wav2vec_comfy(path, style="kijai")
        model = load_wav2vec(path, dtype=torch.float32)
    largest = max(v.numel() for v in sd.values()) * 2              # fp16 bytes
    total = sum(v.numel() for v in sd.values()) * 2
    assert _state_bytes(model) >= 2 * total                        # fp32 result
    assert live_reads[0] <= largest < total / 4, (live_reads[0], largest, total)


# ------------------------------------------------------- the same bad-file errors as every loader

class _NotATensor:  # pickled by reference: loading it would need code execution
    pass


def _bad_file(kind: str, tmp_path, suffix: str):
    from safetensors.torch import save_file

    path = tmp_path / f"bad{suffix}"
    if kind == "truncated":
        save_file({"w": torch.zeros(64, 64)}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "pickle":
        torch.save({"w": torch.zeros(2), "obj": _NotATensor()}, str(path))
    else:
        path.write_text("this is not a weight file, just text\n" * 4)
    return path


@pytest.mark.parametrize("loader", ["umt5", "wav2vec"])
@pytest.mark.parametrize("kind,suffix,match", [("truncated", ".safetensors", "truncated"),
                                               ("pickle", ".pth", "code execution"),
                                               ("text", ".safetensors", "not a weight file")])
def test_bad_files_get_the_loader_errors(loader, kind, suffix, match, tmp_path):
    path = _bad_file(kind, tmp_path, suffix)
    with pytest.raises(LoaderError, match=match) as err:
        load_umt5(path) if loader == "umt5" else load_wav2vec(path)
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_text_and_audio_errors_are_loader_errors():
    for cls in (TextEncoderLoadError, Wav2VecLoadError, TokenizerNotFoundError):
        assert issubclass(cls, LoaderError) and issubclass(cls, ValueError)
