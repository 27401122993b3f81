"""NaN / inf in the audio, a LoRA or the first DiT output: one clear error naming the input (issue 11.5).

Before: NaN audio ran the whole sampling and failed in the encoder; inf audio or a NaN LoRA made a
black video."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.files import LoaderError
from infinitetalk.media import speech_features
from infinitetalk.samplers import checks
from tiny import dit_files as tf


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_audio_is_refused(bad):
    wav = torch.sin(torch.arange(16000.0) / 7)[None, None].clone()
    wav[0, 0, 1234] = bad
    with pytest.raises(speech_features.SpeechInputError, match="NaN or infinite") as err:
        speech_features.check_waveform(wav, 16000, 1)
    assert err.value.speaker == 1


def test_lora_holding_nan_is_refused(tmp_path):
    full = {**tf.random_weights(tf.base_shapes(tf.TINY), 0), **tf.random_weights(tf.audio_shapes(tf.TINY), 1)}
    path = tf.write_single(tmp_path / "full.safetensors", full, tf.TINY)
    lora = tf.lora_weights(tf.base_shapes(tf.TINY), with_diffs=False)
    key = sorted(lora)[0]
    lora[key] = lora[key].clone()
    lora[key][0, 0] = math.nan
    from safetensors.torch import save_file
    save_file(lora, str(tmp_path / "nan_lora.safetensors"))
    with pytest.raises(LoaderError, match="NaN or infinite") as err:
        load_dit(path, loras=[(tmp_path / "nan_lora.safetensors", 1.0)], dtype=torch.float32)
    assert err.value.input == "lora"


class _Model(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, x):
        return self.outputs.pop(0)


def test_first_dit_output_is_checked_once():
    model = _Model([torch.tensor([1.0, math.nan])])
    with checks.first_output_finite(model):
        with pytest.raises(checks.NonFiniteOutput, match="NaN or infinite"):
            model(torch.zeros(1))
    model = _Model([torch.ones(2), torch.tensor([math.inf])])
    with checks.first_output_finite(model):
        model(torch.zeros(1))
        model(torch.zeros(1))                 # only the first pass is checked (no per-step cost)
    assert not model._forward_hooks
