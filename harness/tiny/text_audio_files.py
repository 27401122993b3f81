"""Writers of tiny random umT5 / wav2vec2 / tokenizer files in the REAL layouts (tests, try-it demo).

Every umT5 writer returns the official-name fp32 state dict the file represents exactly (after the
layout's own quantisation), so a test can compare a loaded model against the plain one.
Layouts: see ``loaders/text.py`` and ``loaders/speech.py``. Files are KB-MB and written in well under
a second (the wav2vec writers build a transformers model, ~1 s).
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_T5 = dict(vocab=96, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32)
# 12 layers like the real model (the DiT expects [T, 12, C]); hidden 128 -> 2 heads of 64 (derivable).
TINY_WAV2VEC = dict(hidden_size=128, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                    conv_dim=[32] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
SENTENCES = [
    "A woman is talking to the camera in a bright room.", "Two people have a conversation at a desk.",
    "The man smiles and speaks slowly.", "bright tones, overexposed, static, blurred details, subtitles",
    "worst quality, low quality, JPEG compression residue, ugly", "The quick brown fox jumps over the lazy dog.",
    "She sings a song about the sea and the stars.", "Hello world, this is a tiny tokenizer for tests.",
]


# ----------------------------------------------------------------------------------------- umT5

def umt5_state(cfg: dict = TINY_T5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random official-name umT5 weights; values exactly representable in fp16 and bf16."""
    g = torch.Generator().manual_seed(seed)
    d, a, f, h = cfg["dim"], cfg["dim_attn"], cfg["dim_ffn"], cfg["num_heads"]

    def rnd(*shape, std=0.2, mean=0.0):
        return (mean + torch.randn(*shape, generator=g) * std).bfloat16().float()

    sd = {"token_embedding.weight": rnd(cfg["vocab"], d, std=1.0), "norm.weight": rnd(d, std=0.1, mean=1.0)}
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm2.weight"] = rnd(d, std=0.1, mean=1.0), rnd(d, std=0.1, mean=1.0)
        for n in "qkv":
            sd[p + f"attn.{n}.weight"] = rnd(a, d)
        sd[p + "attn.o.weight"] = rnd(d, a)
        sd[p + "ffn.gate.0.weight"], sd[p + "ffn.fc1.weight"] = rnd(f, d), rnd(f, d)
        sd[p + "ffn.fc2.weight"] = rnd(d, f)
        sd[p + "pos_embedding.embedding.weight"] = rnd(cfg["num_buckets"], h, std=1.0)
    return sd


HF_NAMES = {
    "token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight",
    "norm1.weight": "layer.0.layer_norm.weight", "norm2.weight": "layer.1.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight", "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight", "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight", "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def hf_name(key: str) -> str:
    if key in HF_NAMES:
        return HF_NAMES[key]
    _, i, rest = key.split(".", 2)
    return f"encoder.block.{i}.{HF_NAMES[rest]}"


def _is_linear(key: str) -> bool:
    return ".attn." in key or ".ffn." in key


def write_umt5_pth(path, cfg: dict = TINY_T5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official ``models_t5_umt5-xxl-enc-bf16.pth`` layout (bf16 tensors, official names)."""
    sd = umt5_state(cfg, seed)
    torch.save({k: v.bfloat16() for k, v in sd.items()}, str(path))
    return sd


def write_umt5_comfy_safetensors(path, cfg: dict = TINY_T5, fp8_scaled: bool = False,
                                 seed: int = 0, spiece: bool = True) -> dict[str, torch.Tensor]:
    """ComfyUI ``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled`` layout with the embedded tokenizer."""
    sd, out = umt5_state(cfg, seed), {}
    for key, value in sd.items():
        if fp8_scaled and _is_linear(key):
            scale = value.abs().max() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            out[hf_name(key)], out[hf_name(key)[: -len("weight")] + "scale_weight"] = q, scale.reshape(())
            sd[key] = q.float() * scale
        else:
            out[hf_name(key)] = value.half()
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    if fp8_scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    if spiece:
        out["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_bytes()), dtype=torch.uint8)
    save_file({k: v.contiguous().clone() for k, v in out.items()}, str(path))
    return sd


def write_umt5_quanto(path, cfg: dict = TINY_T5, qtype: str = "int8", seed: int = 0) -> dict[str, torch.Tensor]:
    """Official quanto ``t5_<qtype>.safetensors`` + ``t5_map_<qtype>.json`` (every Linear quantized)."""
    if qtype not in ("int8", "fp8"):
        raise ValueError(f"qtype must be 'int8' or 'fp8', got {qtype!r}")
    sd, out, qmap = umt5_state(cfg, seed), {}, {}
    for key, value in sd.items():
        if not _is_linear(key):
            out[key] = value.bfloat16()
            sd[key] = out[key].float()
            continue
        mod = key[: -len(".weight")]
        rowmax = value.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        if qtype == "int8":
            scale = rowmax / 127.0
            data = torch.round(value / scale).clamp(-127, 127).to(torch.int8)
        else:
            scale = rowmax / 448.0
            data = (value / scale).to(torch.float8_e4m3fn)
        out[mod + ".weight._data"], out[mod + ".weight._scale"] = data, scale
        out[mod + ".input_scale"], out[mod + ".output_scale"] = torch.ones(()), torch.ones(())
        qmap[mod] = {"weights": "qint8" if qtype == "int8" else "qfloat8_e4m3fn", "activations": "none"}
        sd[key] = data.float() * scale
    path = Path(path)
    save_file(out, str(path))
    (path.parent / f"t5_map_{qtype}.json").write_text(json.dumps(qmap, indent=1))
    return sd


# ------------------------------------------------------------------------------------ tokenizer

@lru_cache(maxsize=1)
def tiny_spiece_bytes() -> bytes:
    """A tiny sentencepiece unigram model trained in-process (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 3), model_writer=buf, vocab_size=80, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        normalization_rule_name="identity", minloglevel=2)
    return buf.getvalue()


def _tokenizer_json(proto: bytes):
    """The same vocabulary as a ``tokenizers`` Unigram (as ``tokenizer.json`` of google/umt5-xxl is)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", sp.eos_id())])
    return tok


def write_tokenizer_folder(folder, spiece: bool = True, tokenizer_json: bool = True) -> Path:
    """A ``google/umt5-xxl``-like folder: ``spiece.model`` and/or ``tokenizer.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spiece:
        (folder / "spiece.model").write_bytes(tiny_spiece_bytes())
    if tokenizer_json:
        _tokenizer_json(tiny_spiece_bytes()).save(str(folder / "tokenizer.json"))
    return folder


# -------------------------------------------------------------------------------------- wav2vec2

def wav2vec_state(cfg: dict = TINY_WAV2VEC, seed: int = 0) -> dict[str, torch.Tensor]:
    """transformers' own Wav2Vec2Model weights (HF names of the installed version), randomly initialised."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**cfg))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _old_weight_norm_names(sd: dict) -> dict:
    ren = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for k, v in sd.items():
        for new, old in ren.items():
            k = k.replace(new, old)
        out[k] = v
    return out


def write_wav2vec_folder(folder, cfg: dict = TINY_WAV2VEC, seed: int = 0, do_normalize: bool = False,
                         safetensors: bool = True, pickle_bin: bool = False) -> dict[str, torch.Tensor]:
    """The HF ``chinese-wav2vec2-base/`` folder: config.json, preprocessor_config.json, model.safetensors
    and/or, with ``pickle_bin``, the original ``pytorch_model.bin`` (a tensors-only torch zip)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = wav2vec_state(cfg, seed)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2", **cfg}, indent=1))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": 16000}))
    if safetensors:
        save_file(_old_weight_norm_names(sd), str(folder / "model.safetensors"))  # the real file's naming
    if pickle_bin:
        torch.save(sd, str(folder / "pytorch_model.bin"))
    return sd


def write_wav2vec_comfy(path, cfg: dict = TINY_WAV2VEC, seed: int = 0, style: str = "comfy") -> dict[str, torch.Tensor]:
    """Single fp16 file, no config. ``style='comfy'``: ComfyUI's names (no prefix, parametrizations);
    ``style='kijai'``: Kijai's ``wav2vec2-chinese-base_fp16`` (``wav2vec2.`` prefix, weight_g/weight_v,
    pretraining heads). Returns the fp16-rounded weights under the HF names."""
    sd = {k: v.half().float() for k, v in wav2vec_state(cfg, seed).items()}
    out = {k: v.half() for k, v in sd.items()}
    if style == "kijai":
        out = {"wav2vec2." + k: v for k, v in _old_weight_norm_names(out).items()}
        out["quantizer.codevectors"] = torch.zeros(1, 8, 4, dtype=torch.float16)
        out["project_q.weight"] = torch.zeros(4, 4, dtype=torch.float16)
    elif style != "comfy":
        raise ValueError(f"style must be 'comfy' or 'kijai', got {style!r}")
    save_file(out, str(path))
    return sd
