"""wav2vec2 speech features against the official reference (golden README §3)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.loaders.speech import load_wav2vec
from infinitetalk.models.wav2vec import Wav2Vec2At25fps
from infinitetalk.media import speech_features
from infinitetalk.samplers.audio_windows import audio_indices, frame_audio_windows

ATOL = 1e-4


def _model(case):
    fe = case.case["feature_extractor_config"]
    model = Wav2Vec2At25fps(case.case["wav2vec2_config"], do_normalize=fe["do_normalize"])
    model.load_state_dict(case.weights(), strict=True)
    return model


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_loudness_norm(case):
    wav = case.inputs()["waveform_16k"].numpy()
    expected = case.outputs()["waveform_loudnorm"]
    out = torch.from_numpy(speech_features.loudness_norm(wav, case.case["sr"]))
    assert out.dtype == torch.float32
    # numpy>=2 pyloudnorm arithmetic may move the loudness (and so the gain) by an ulp.
    tol = 4 * float(np.finfo(np.float32).eps) * float(expected.abs().max())
    assert_close(out, expected, tol, "waveform_loudnorm")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_input_values(case):
    expected = case.outputs()
    out = torch.from_numpy(speech_features.normalize_input(expected["waveform_loudnorm"].numpy()))
    assert_close(out, expected["input_values"], 1e-5, "input_values")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_features_and_embedding(case):
    expected = case.outputs()
    model = _model(case)
    values = expected["input_values"][None]
    seq_len = speech_features.num_frames(values.shape[-1], case.case["sr"])
    assert seq_len == case.case["seq_len_passed"]
    conv = model.conv_features(values)
    assert_close(conv, expected["cnn_features"], ATOL, "cnn_features")
    frames = model.to_frames(expected["cnn_features"], seq_len)
    assert_close(frames, expected["interp_features"], ATOL, "interp_features")
    assert_close(model(values[0], seq_len), expected["embedding"], ATOL, "embedding")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_end_to_end_from_16k_waveform(case):
    expected = case.outputs()
    model = _model(case)
    emb = speech_features.embed_speech(model, case.inputs()["waveform_16k"], case.case["sr"])
    assert_close(emb, expected["embedding"], ATOL, "embed_speech")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_windows(case):
    expected = case.outputs()
    clip_len = case.case["windowing"]["clip_len"]
    emb = expected["embedding"]
    starts = sorted(int(k[len("window_start"):-len(".indices")]) for k in expected if k.endswith(".indices"))
    assert starts, "fixture has no window cases"
    for s in starts:
        idx = audio_indices(s, clip_len, emb.shape[0])
        assert torch.equal(idx, expected[f"window_start{s}.indices"]), f"indices at start {s}"
        audio = frame_audio_windows(emb[None], s, clip_len, emb.shape[0])
        assert_close(audio, expected[f"window_start{s}.audio"], 0.0, f"window audio at start {s}")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_loader_gives_the_reference_embedding(case, tmp_path):
    """The same weights through ``load_wav2vec`` (HF folder layout: config.json beside the file)."""
    folder = tmp_path / "chinese-wav2vec2-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(case.case["wav2vec2_config"]))
    (folder / "preprocessor_config.json").write_text(json.dumps(case.case["feature_extractor_config"]))
    (folder / "model.safetensors").symlink_to(case.dir / case.case.get("weights_file", "weights.safetensors"))
    model = load_wav2vec(folder)
    assert model.do_normalize == case.case["feature_extractor_config"]["do_normalize"]
    emb = speech_features.embed_speech(model, case.inputs()["waveform_16k"], case.case["sr"])
    assert_close(emb, case.outputs()["embedding"], ATOL, "embed_speech via load_wav2vec")
