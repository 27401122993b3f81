"""encode_speakers: one/two speakers -> SpeechFeatures, without the host (tiny wav2vec2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.media import speech_features
from infinitetalk.models.wav2vec import Wav2Vec2At25fps
from tiny import text_audio_files as tiny


def _voice(seconds: float, sr: int, f0: float = 150.0, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    x = 0.2 * torch.sin(2 * torch.pi * f0 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t))
    return x.repeat(channels, 1)[None]                          # host AUDIO layout [1, C, S]


def test_one_speaker_frames_follow_the_audio_length(wav2vec):
    feats = speech_features.encode_speakers(wav2vec, [_voice(1.0, 44100, channels=2)], [44100])
    assert feats.frames == 25 and feats.speakers == 1
    assert feats.embeddings.shape == (1, 25, 12, tiny.TINY_WAV2VEC["hidden_size"])
    assert feats.embeddings.dtype == torch.float32 and feats.embeddings.device.type == "cpu"
    # the soundtrack is the user's clip: 44.1 kHz stereo, not the model's 16 kHz mono
    assert feats.sample_rate == 44100 and feats.soundtrack.shape == (2, 44100)
    assert feats["frames"] == 25 and feats["soundtrack"] is feats.soundtrack   # dict-style access
    audio = feats.as_audio()
    assert audio["waveform"].shape == (1, 2, 44100) and audio["sample_rate"] == 44100


def test_frames_round_down_like_the_reference(wav2vec):
    feats = speech_features.encode_speakers(wav2vec, [_voice(1.23, 16000)], [16000])
    assert feats.frames == int(1.23 * 16000 / 16000 * 25) == 30


def test_two_speakers_para_pads_to_the_longer(wav2vec):
    feats = speech_features.encode_speakers(wav2vec, [_voice(0.8, 16000), _voice(0.4, 22050, 220)],
                                   [16000, 22050], mode="para")
    assert feats.embeddings.shape[:2] == (2, 20) and feats.frames == 20
    assert feats.sample_rate == 22050                     # the higher of the two rates
    assert feats.soundtrack.shape == (1, int(0.8 * 22050))


def test_two_speakers_add_takes_turns(wav2vec):
    a, b = _voice(0.8, 16000), _voice(0.4, 16000, 220)
    feats = speech_features.encode_speakers(wav2vec, [a, b], [16000, 16000], mode="add",
                                   normalize_loudness=False)
    assert feats.frames == int(1.2 * 25) and feats.embeddings.shape[0] == 2
    mix = feats.soundtrack.numpy()[0]
    np.testing.assert_allclose(mix[:12800], a[0, 0].numpy(), atol=1e-6)   # speaker 1 first
    np.testing.assert_allclose(mix[12800:], b[0, 0].numpy(), atol=1e-6)   # then speaker 2


def test_soundtrack_is_never_loudness_normalised(wav2vec):
    """normalize_loudness shapes the features only; the video carries the clip as recorded."""
    quiet = _voice(1.0, 48000, channels=2) * 0.05
    feats = speech_features.encode_speakers(wav2vec, [quiet], [48000], normalize_loudness=True)
    torch.testing.assert_close(feats.soundtrack, quiet[0])


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_one_speaker_matches_the_official_embedding(case):
    """The node's whole path (checks, mono, 16 kHz, loudness, wav2vec2) gives the official embedding."""
    fe = case.case["feature_extractor_config"]
    model = Wav2Vec2At25fps(case.case["wav2vec2_config"], do_normalize=fe["do_normalize"])
    model.load_state_dict(case.weights(), strict=True)
    wav = case.inputs()["waveform_16k"]
    feats = speech_features.encode_speakers(model, [wav[None, None]], [case.case["sr"]])
    expected = case.outputs()["embedding"]
    assert feats.speakers == 1 and feats.frames == expected.shape[0]
    assert_close(feats.embeddings[0], expected, 1e-4, "encode_speakers embedding")


@pytest.mark.parametrize("speaker", [0, 1])
def test_silent_or_short_audio_names_the_speaker(wav2vec, speaker):
    good = _voice(0.5, 16000)
    silent = torch.zeros(1, 1, 16000)
    with pytest.raises(speech_features.SpeechInputError, match="silent") as err:
        speech_features.encode_speakers(wav2vec, [good, silent][::1 if speaker else -1], [16000, 16000])
    assert err.value.speaker == speaker
    short = _voice(0.05, 16000)
    with pytest.raises(speech_features.SpeechInputError, match="at least") as err:
        speech_features.encode_speakers(wav2vec, [good, short][::1 if speaker else -1], [16000, 16000])
    assert err.value.speaker == speaker and "longer clip" in err.value.fix


def test_bad_mode_and_counts(wav2vec):
    with pytest.raises(ValueError, match="para"):
        speech_features.encode_speakers(wav2vec, [_voice(0.5, 16000)] * 2, [16000] * 2, mode="both")
    with pytest.raises(ValueError, match="one or two"):
        speech_features.encode_speakers(wav2vec, [_voice(0.5, 16000)] * 3, [16000] * 3)
