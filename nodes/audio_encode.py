"""InfiniteTalk Audio Encode: one or two speakers' audio -> wav2vec2 features at 25 fps + soundtrack."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders import host, kept_encoders
from ..media import speech_features
from . import choices
from .types import CATEGORY, Audio, input_error

NODE = "InfiniteTalk Audio Encode"


def _waveform(audio, name: str):
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise input_error(NODE, name, "expected an AUDIO (e.g. from Load Audio)")
    return audio["waveform"], int(audio["sample_rate"])


def encode(wav2vec_model: str, audio_1, audio_2, mode: str, normalize_loudness: bool):
    path = choices.chosen_file(NODE, "wav2vec_model", "wav2vec", wav2vec_model)
    names = ["audio_1"] + (["audio_2"] if audio_2 is not None else [])
    clips = [_waveform(a, n) for a, n in zip((audio_1, audio_2), names)]
    for i, (wav, rate) in enumerate(clips):      # before loading anything: fail fast on bad audio
        try:
            speech_features.check_waveform(wav, rate, i)
        except speech_features.SpeechInputError as err:
            raise input_error(NODE, names[err.speaker], err.problem, err.fix) from None
    try:
        model = kept_encoders.load_speech_model(path, host)
    except ValueError as err:   # LoaderError and the loaders' own errors
        raise input_error(NODE, "wav2vec_model", str(err)) from None
    try:
        return speech_features.encode_speakers(model, [c[0] for c in clips], [c[1] for c in clips], mode,
                                      normalize_loudness)
    except speech_features.SpeechInputError as err:
        raise input_error(NODE, names[err.speaker], err.problem, err.fix) from None
    except ValueError as err:
        raise input_error(NODE, "audio_1", str(err)) from None
    finally:
        kept_encoders.release_speech_model(host)


class InfiniteTalkAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkAudioEncode",
            display_name=NODE,
            category=CATEGORY,
            description="Turns speech into the per-frame audio features the model listens to (25 video "
                        "frames per second). Also gives the soundtrack (your audio as loaded, which the "
                        "sampler puts into the video) and the video length in frames.",
            inputs=[
                io.Combo.Input("wav2vec_model", options=choices.options("wav2vec"),
                               tooltip="wav2vec2 (chinese-wav2vec2-base): a Hugging Face folder "
                                       "(config.json + weights) in models/wav2vec2, or a single file in "
                                       "models/audio_encoders. Kept in RAM between runs (reloaded "
                                       "when its files change)."),
                io.Audio.Input("audio_1", tooltip="Speech of speaker 1 (the only speaker for one person)."),
                io.Audio.Input("audio_2", optional=True,
                               tooltip="Speech of speaker 2, for two-person videos (needs speaker masks "
                                       "or the default left/right halves)."),
                io.Combo.Input("mode", options=["para", "add"], default="para",
                               tooltip="Two speakers only. para: per-speaker tracks of ONE "
                                       "conversation, equally long, each silent while the other talks "
                                       "(the official multi-person demo); they play together and the "
                                       "soundtrack is their mix. add: two separate monologues; speaker 1 "
                                       "talks first, then speaker 2, and the soundtrack is one clip "
                                       "after the other."),
                io.Boolean.Input("normalize_loudness", default=True,
                                 tooltip="Bring each track to -23 LUFS for the model's audio features, as "
                                         "the official pipeline does. The soundtrack in the video is "
                                         "never changed: your audio at its own volume, sample rate "
                                         "and channels."),
            ],
            outputs=[Audio.Output(display_name="audio_embeds"),
                     io.Audio.Output(display_name="soundtrack",
                                     tooltip="Your audio as it goes into the video: one speaker's clip, "
                                             "or both mixed (para) / one after the other (add), at the "
                                             "clips' own sample rate and channels, not normalised."),
                     io.Int.Output(display_name="frames")],
        )

    @classmethod
    def validate_inputs(cls, wav2vec_model):
        return choices.missing_file(NODE, "wav2vec_model", "wav2vec", wav2vec_model) or True

    @classmethod
    def fingerprint_inputs(cls, wav2vec_model=None, mode="para", normalize_loudness=True, **_):
        return (choices.fingerprint("wav2vec", wav2vec_model), mode, normalize_loudness)

    @classmethod
    def execute(cls, wav2vec_model, audio_1, mode, normalize_loudness, audio_2=None) -> io.NodeOutput:
        feats = encode(wav2vec_model, audio_1, audio_2, mode, normalize_loudness)
        return io.NodeOutput(feats, feats.as_audio(), feats.frames)
