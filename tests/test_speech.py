"""Speech front end: pure functions and edge cases (stereo, 8-48 kHz, silence, very short audio)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from golden import assert_close
from infinitetalk.media import speech_features
from infinitetalk.samplers.audio_windows import audio_indices, frame_audio_windows
from tiny import text_audio_files as tiny


def _tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_to_mono_layouts():
    left, right = np.ones(10, np.float32), np.zeros(10, np.float32)
    np.testing.assert_allclose(speech_features.to_mono(np.stack([left, right])), 0.5)
    host_audio = torch.from_numpy(np.stack([left, right]))[None]  # the host's AUDIO [1, C, N]
    np.testing.assert_allclose(speech_features.to_mono(host_audio), 0.5)
    assert speech_features.to_mono(torch.ones(1, 1, 7)).shape == (7,)
    with pytest.raises(ValueError, match="batch"):
        speech_features.to_mono(torch.zeros(2, 1, 7))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_length_and_pitch(sr):
    x = _tone(1.3, sr)
    y = speech_features.resample(x, sr)
    assert y.dtype == np.float32 and y.shape == (math.ceil(x.shape[0] * 16000 / sr),)
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * 16000 / y.shape[0]
    assert abs(peak_hz - 440.0) < 2.0


def test_loudness_to_target_and_silence():
    import pyloudnorm

    rng = np.random.default_rng(0)
    x = (_tone(2.0, 16000, amp=0.01) + 0.001 * rng.standard_normal(32000)).astype(np.float32)
    y = speech_features.loudness_norm(x)
    assert y.dtype == np.float32
    assert abs(pyloudnorm.Meter(16000).integrated_loudness(y) - (-23.0)) < 0.05
    silence = np.zeros(32000, np.float32)
    assert np.array_equal(speech_features.loudness_norm(silence), silence)


def test_loudness_skips_audio_shorter_than_a_block(caplog):
    x = _tone(0.2, 16000)
    assert np.array_equal(speech_features.loudness_norm(x), x)
    assert "loudness not normalised" in caplog.text


def test_normalize_input_stats():
    x = _tone(1.0, 16000) + 0.3
    y = speech_features.normalize_input(x)
    assert y.dtype == np.float32 and abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-3


def test_frames_at_25fps():
    assert speech_features.num_frames(32480) == 50
    assert speech_features.num_frames(16000) == 25
    assert speech_features.num_frames(639) == 0


def test_two_speaker_tracks():
    a, b = np.ones(3, np.float32), 2 * np.ones(5, np.float32)
    p1, p2 = speech_features.two_speaker_tracks(a, b, "para")
    assert p1.tolist() == [1, 1, 1, 0, 0] and p2.tolist() == [2] * 5
    s1, s2 = speech_features.two_speaker_tracks(a, b, "add")
    assert s1.tolist() == [1, 1, 1, 0, 0, 0, 0, 0] and s2.tolist() == [0, 0, 0, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="para"):
        speech_features.two_speaker_tracks(a, b, "mix")


def test_window_indices_clamp_both_ends():
    idx = audio_indices(0, 3, 10)
    assert idx.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert audio_indices(8, 3, 10)[-1].tolist() == [8, 9, 9, 9, 9]
    # audio shorter than one window: everything clamps into the few frames there are
    assert audio_indices(0, 2, 2).tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    emb = torch.arange(4.0).reshape(1, 2, 1, 2)  # [S, T, layers, C]
    assert frame_audio_windows(emb, 0, 2, emb.shape[1]).shape == (1, 2, 5, 1, 2)


def test_embed_speech_stereo_48k(wav2vec):
    x = np.stack([_tone(0.5, 48000), _tone(0.5, 48000, freq=300.0)])
    emb = speech_features.embed_speech(wav2vec, x, 48000)
    assert emb.shape == (12, 12, tiny.TINY_WAV2VEC["hidden_size"]) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()


def test_embed_speech_silence_and_tiny_clip(wav2vec):
    emb = speech_features.embed_speech(wav2vec, np.zeros(4000, np.float32), 16000)  # 0.25 s of silence
    assert emb.shape[0] == 6 and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="shorter than one video frame"):
        speech_features.embed_speech(wav2vec, np.zeros(500, np.float32), 16000)


def test_embed_speech_do_normalize_follows_model(wav2vec):
    x = _tone(0.4, 16000) + 0.05
    plain = speech_features.embed_speech(wav2vec, x, 16000, normalize_loudness=False)
    forced = speech_features.embed_speech(wav2vec, x, 16000, normalize_loudness=False, do_normalize=True)
    ref = wav2vec(torch.from_numpy(speech_features.normalize_input(x)), speech_features.num_frames(x.shape[0]))
    assert_close(forced, ref, 0.0, "do_normalize=True")
    assert (plain - forced).abs().max() > 1e-3


def test_encoder_matches_transformers_forward(wav2vec):
    """With seq_len = the conv frame count the interpolation is the identity: our layer loop must
    reproduce transformers' own Wav2Vec2Model hidden_states[1:]."""
    from transformers import Wav2Vec2Model

    hf = Wav2Vec2Model(wav2vec.config).eval()
    hf.load_state_dict({k: v for k, v in wav2vec.state_dict().items()}, strict=True)
    x = torch.randn(1, 6400, generator=torch.Generator().manual_seed(3))
    conv = wav2vec.conv_features(x)
    ours = wav2vec(x[0], conv.shape[-1])
    out = hf(x, output_hidden_states=True)
    theirs = torch.stack(out.hidden_states[1:], dim=2)[0]
    assert_close(ours, theirs, 1e-5, "encoder vs transformers")
