"""InfiniteTalk Audio Encode: one or two speakers' audio -> wav2vec2 features at 25 fps + soundtrack."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..loaders import host
from ..samplers import speech
from .types import CATEGORY, Audio, input_error

NODE = "InfiniteTalk Audio Encode"
MIN_SECONDS = 0.2          # shorter than this gives no usable mouth motion
SILENCE_RMS = 1e-4


def _track(audio: dict, name: str, normalize: bool) -> np.ndarray:
    if not isinstance(audio, dict) or "waveform" not in audio:
        raise input_error(NODE, name, "expected an AUDIO (e.g. from Load Audio)")
    wav = audio["waveform"]
    rate = int(audio["sample_rate"])
    if wav.numel() == 0 or wav.shape[-1] / rate < MIN_SECONDS:
        raise input_error(NODE, name, f"the audio is {wav.shape[-1] / rate:.2f} s long; at least "
                          f"{MIN_SECONDS} s is needed", "Use a longer clip")
    if float(wav.float().pow(2).mean().sqrt()) < SILENCE_RMS:
        raise input_error(NODE, name, "the audio is silent (all samples ~0)",
                          "Check the file, or that the right channel was picked")
    return speech.prepare_waveform(wav, rate, normalize_loudness=normalize)


class InfiniteTalkAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkAudioEncode",
            display_name=NODE,
            category=CATEGORY,
            description="Turns speech into the per-frame audio features the model listens to (25 video "
                        "frames per second). Also gives the soundtrack and the video length in frames.",
            inputs=[
                io.Combo.Input("wav2vec_model", options=host.list_models("wav2vec"),
                               tooltip="wav2vec2 (chinese-wav2vec2-base): a Hugging Face folder "
                                       "(config.json + weights) in models/wav2vec2, or a single file in "
                                       "models/audio_encoders."),
                io.Audio.Input("audio_1", tooltip="Speech of speaker 1 (the only speaker for one person)."),
                io.Audio.Input("audio_2", optional=True,
                               tooltip="Speech of speaker 2, for two-person videos (needs speaker masks "
                                       "or the default left/right halves)."),
                io.Combo.Input("mode", options=["para", "add"], default="para",
                               tooltip="Two speakers only. para: both tracks play at the same time. add: "
                                       "a conversation, speaker 1 first, then speaker 2."),
                io.Boolean.Input("normalize_loudness", default=True,
                                 tooltip="Bring each track to -23 LUFS before encoding, as the official "
                                         "pipeline does."),
            ],
            outputs=[Audio.Output(display_name="audio_embeds"),
                     io.Audio.Output(display_name="soundtrack"),
                     io.Int.Output(display_name="frames")],
        )

    @classmethod
    def validate_inputs(cls, wav2vec_model):
        if host.resolve_model("wav2vec", wav2vec_model) is None:
            return (f"{NODE}: wav2vec_model '{wav2vec_model}' not found in "
                    f"{host.folder_hint('wav2vec')}")
        return True

    @classmethod
    def execute(cls, wav2vec_model, audio_1, mode, normalize_loudness, audio_2=None) -> io.NodeOutput:
        path = host.resolve_model("wav2vec", wav2vec_model)
        if path is None:
            raise input_error(NODE, "wav2vec_model", f"'{wav2vec_model}' was not found",
                              f"Put it in {host.folder_hint('wav2vec')} and refresh the page (R)")
        tracks = [_track(audio_1, "audio_1", normalize_loudness)]
        if audio_2 is not None:
            tracks = list(speech.two_speaker_tracks(tracks[0], _track(audio_2, "audio_2",
                                                                       normalize_loudness), mode))
        try:
            model = host.load_speech_model(path)
        except ValueError as err:   # LoaderError and the loaders' own errors
            raise input_error(NODE, "wav2vec_model", str(err)) from None
        feats = [speech.embed_waveform(model, t).cpu() for t in tracks]
        frames = min(f.shape[0] for f in feats)
        embeds = torch.stack([f[:frames] for f in feats])            # [S, T, 12, 768]
        soundtrack = torch.from_numpy(speech.mix_tracks(tracks))
        out = {"embeddings": embeds, "soundtrack": soundtrack, "sample_rate": speech.SAMPLE_RATE,
               "frames": frames, "speakers": len(tracks), "mode": mode}
        audio = {"waveform": soundtrack[None, None].float(), "sample_rate": speech.SAMPLE_RATE}
        return io.NodeOutput(out, audio, frames)
