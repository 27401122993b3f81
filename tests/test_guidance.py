"""Guidance combination, APG, step cache, presets."""
import pytest
import torch

from golden import assert_close
from infinitetalk.samplers.guidance import (APG, COND, DROP_AUDIO, DROP_TEXT, UNCOND, StepCache, combine,
                                            null_audio, pass_inputs, pass_names)
from infinitetalk.samplers.loop import Settings
from infinitetalk.samplers.presets import get_preset
from infinitetalk.samplers.schedule import timesteps


def _preds(names):
    torch.manual_seed(1)
    return {n: torch.randn(16, 3, 4, 6) for n in names}


def test_three_and_two_pass_formulas():
    assert pass_names(5.0) == (COND, DROP_TEXT, UNCOND) and pass_names(1.0) == (COND, DROP_AUDIO)
    p = _preds(pass_names(5.0))
    want = p[UNCOND] + 5.0 * (p[COND] - p[DROP_TEXT]) + 4.0 * (p[DROP_TEXT] - p[UNCOND])
    assert_close(combine(p, 5.0, 4.0), want, 0.0, "3-pass")
    q = _preds(pass_names(1.0))
    assert_close(combine(q, 1.0, 2.0), q[DROP_AUDIO] + 2.0 * (q[COND] - q[DROP_AUDIO]), 0.0, "2-pass")


def test_null_audio_is_one_zero_speaker():
    audio = torch.randn(2, 9, 5, 12, 768)
    z = null_audio(audio)
    assert z.shape == (1, 9, 5, 12, 768) and not z.any()
    assert pass_inputs(UNCOND, "c", "n", audio, z) == ("n", z)
    assert pass_inputs(DROP_AUDIO, "c", "n", audio, z) == ("c", z)


def test_apg_orthogonal_clipped_momentum():
    p = _preds(pass_names(5.0))
    apg = APG()
    cond, diff = p[COND], p[COND] - p[DROP_TEXT]
    g = apg("text", diff, cond)
    assert abs(float((g.double() * cond.double()).sum())) < 1e-3  # orthogonal to cond
    assert g.norm() <= 55.0 + 1e-3
    g2 = apg("text", diff, cond)  # momentum: buffer = diff + (-0.75) * diff
    ref = APG()._buffers  # fresh
    assert not ref
    expected = APG(momentum=0.0)("x", 0.25 * diff, cond)
    assert_close(g2, expected, 1e-4, "momentum")
    out = combine(p, 5.0, 4.0, APG())
    assert out.shape == cond.shape and torch.isfinite(out).all()


class CountingDiT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.freq_dim = 256
        self.time_embedding = torch.nn.Sequential(torch.nn.Linear(256, 8), torch.nn.SiLU(), torch.nn.Linear(8, 8))
        self.time_projection = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(8, 48))
        self.calls = 0

    def forward(self, x, t, tag):
        self.calls += 1
        return torch.tensor([[float(tag), float(t)]])  # which pass type, at which timestep


@pytest.mark.parametrize("text_scale", [5.0, 1.0])
def test_step_cache_keys_by_pass_type(text_scale):
    steps = 20
    dit = CountingDiT()
    cache = StepCache(dit, steps, threshold=1e9, warmup=3)  # huge threshold: skip whenever allowed
    ts = timesteps(steps, 7.0)
    names = pass_names(text_scale)
    for i in range(steps):
        for tag, n in enumerate(names):
            out = cache(n, i, torch.zeros(1, 2), ts[i], tag)
            assert out[0, 0].item() == tag  # a reused output always belongs to the same pass type
            fresh = i < 3 or i == steps - 1
            assert (out[0, 1].item() == ts[i].item()) == fresh or ts[i].item() == ts[2].item()
    computed = 4 * len(names)  # 3 warm-up steps + the last step
    assert dit.calls == computed and cache.skipped == steps * len(names) - computed
    cache.reset()
    cache(names[0], 5, torch.zeros(1, 2), ts[5], 0)
    assert dit.calls == computed + 1  # after reset nothing is reused


def test_step_cache_zero_threshold_computes_everything():
    dit = CountingDiT()
    cache = StepCache(dit, 5, threshold=0.0)
    for i, t in enumerate(timesteps(5, 7.0)[:-1]):
        cache(COND, i, torch.zeros(1, 2), t, 0)
    assert dit.calls == 5 and cache.skipped == 0


def test_presets_as_settings():
    std = Settings.from_preset("standard", "720p")
    assert (std.steps, std.text_scale, std.audio_scale, std.shift) == (40, 5.0, 4.0, 11.0)
    fast = Settings.from_preset("fast", "480p", steps=4)
    assert (fast.steps, fast.text_scale, fast.audio_scale, fast.shift) == (4, 1.0, 2.0, 2.0)
    assert get_preset("fast").steps == 8
    with pytest.raises(ValueError, match="4..8"):
        Settings.from_preset("fast", steps=12)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        get_preset("turbo")
