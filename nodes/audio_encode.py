"""InfiniteTalk Audio Encode: one or two speakers' audio -> wav2vec2 features at 25 fps + soundtrack."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders import host
from ..runs.encode_audio import encode_audio
from . import choices
from .types import CATEGORY, Audio, blaming

NODE = "InfiniteTalk Audio Encode"


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
        path = choices.chosen_file(NODE, "wav2vec_model", "wav2vec", wav2vec_model)
        with blaming(NODE):
            feats = encode_audio(host, path, audio_1, audio_2, mode, normalize_loudness)
        return io.NodeOutput(feats, feats.as_audio(), feats.frames)
