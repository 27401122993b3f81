"""One Audio Encode run without the host: the speakers' AUDIO -> ``SpeechFeatures`` (wav2vec2 features
at 25 fps + the soundtrack). Bad audio is refused before the model is loaded; the kept wav2vec2
goes back to RAM afterwards, whatever happened (``loaders/kept_encoders.py``, ``host`` passed in)."""
from __future__ import annotations

from ..errors import InputError
from ..loaders import kept_encoders
from ..media import speech_features


def _waveform(audio, name: str):
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(name, "expected an AUDIO (e.g. from Load Audio)")
    return audio["waveform"], int(audio["sample_rate"])


def encode_audio(host, wav2vec_path: str, audio_1, audio_2, mode: str,
                 normalize_loudness: bool) -> speech_features.SpeechFeatures:
    """``audio_1`` / ``audio_2`` (None: one speaker): the host's AUDIO dicts. Errors name the input."""
    names = ["audio_1"] + (["audio_2"] if audio_2 is not None else [])
    clips = [_waveform(a, n) for a, n in zip((audio_1, audio_2), names)]
    try:
        for i, (wav, rate) in enumerate(clips):      # before loading anything: fail fast on bad audio
            speech_features.check_waveform(wav, rate, i)
    except speech_features.SpeechInputError as err:
        raise InputError(names[err.speaker], err.problem, err.fix) from None
    try:
        model = kept_encoders.load_speech_model(wav2vec_path, host)
    except ValueError as err:   # LoaderError and the loaders' own errors
        raise InputError("wav2vec_model", str(err)) from None
    try:
        return speech_features.encode_speakers(model, [c[0] for c in clips], [c[1] for c in clips], mode,
                                               normalize_loudness)
    except speech_features.SpeechInputError as err:
        raise InputError(names[err.speaker], err.problem, err.fix) from None
    except ValueError as err:
        raise InputError("audio_1", str(err)) from None
    finally:
        kept_encoders.release_speech_model(host)
