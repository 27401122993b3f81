"""wav2vec2 on long audio in bounded chunks (issue 11.4): the conv feature encoder (the part whose
memory grows with the samples, ~16 MiB per second at full size) never sees more than one chunk plus
its overlap, and the features equal the one-pass features."""
from __future__ import annotations

import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.models.wav2vec import Wav2Vec2At25fps
from infinitetalk.media import speech_features


def _longest_conv_input(model, values, seq_len):
    seen = []
    handle = model.feature_extractor.conv_layers[0].conv.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[-1]))
    try:
        out = model(values, seq_len)
    finally:
        handle.remove()
    return out, max(seen)


def test_long_audio_is_encoded_in_bounded_chunks(wav2vec):
    g = torch.Generator().manual_seed(0)
    n = 16000 * 45 + 1234                                 # 45 s, not a multiple of anything
    values = torch.randn(n, generator=g) * 0.1
    seq_len = speech_features.num_frames(n)
    wav2vec.chunk_samples = 10**9                         # one pass, as before
    whole, longest_whole = _longest_conv_input(wav2vec, values, seq_len)
    wav2vec.chunk_samples = 16000 * 4
    chunked, longest = _longest_conv_input(wav2vec, values, seq_len)
    assert longest_whole == n
    assert longest <= wav2vec.chunk_samples + wav2vec.conv_overlap_samples()
    assert wav2vec.conv_overlap_samples() == 80           # receptive field 400 - hop 320
    assert chunked.shape == whole.shape == (seq_len, 12, 128)
    assert_close(chunked, whole, 1e-4, "chunked vs one pass")


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_golden_features_in_small_chunks(case):
    fe = case.case["feature_extractor_config"]
    model = Wav2Vec2At25fps(case.case["wav2vec2_config"], do_normalize=fe["do_normalize"])
    model.load_state_dict(case.weights(), strict=True)
    expected = case.outputs()
    values = expected["input_values"]
    model.chunk_samples = 3200                            # 0.2 s: many chunks even for a short clip
    seq_len = speech_features.num_frames(values.shape[-1], case.case["sr"])
    assert_close(model.conv_features(values[None]), expected["cnn_features"], 1e-4, "cnn_features")
    assert_close(model(values, seq_len), expected["embedding"], 1e-4, "embedding")
