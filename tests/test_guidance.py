"""Guidance combination, pass counts, APG, TeaCache, presets."""
import numpy as np
import pytest
import torch

from golden import assert_close
from infinitetalk.samplers.guidance import (APG, COND, DROP_AUDIO, DROP_TEXT, UNCOND, combine, null_audio,
                                            pass_inputs, pass_names, passes_per_step)
from infinitetalk.samplers.loop import Settings
from infinitetalk.samplers.presets import get_preset
from infinitetalk.samplers.schedule import timesteps
from infinitetalk.samplers.teacache import COEFFICIENTS, TeaCache, rescale


def _preds(names):
    torch.manual_seed(1)
    return {n: torch.randn(16, 3, 4, 6) for n in names}


def test_three_and_two_pass_formulas():
    assert pass_names(5.0, 4.0) == (COND, DROP_TEXT, UNCOND) and pass_names(1.0, 2.0) == (COND, DROP_AUDIO)
    p = _preds(pass_names(5.0, 4.0))
    want = p[UNCOND] + 5.0 * (p[COND] - p[DROP_TEXT]) + 4.0 * (p[DROP_TEXT] - p[UNCOND])
    assert_close(combine(p, 5.0, 4.0), want, 0.0, "3-pass")
    q = _preds(pass_names(1.0, 2.0))
    assert_close(combine(q, 1.0, 2.0), q[DROP_AUDIO] + 2.0 * (q[COND] - q[DROP_AUDIO]), 0.0, "2-pass")


def test_null_audio_is_one_zero_speaker():
    audio = torch.randn(2, 9, 5, 12, 768)
    z = null_audio(audio)
    assert z.shape == (1, 9, 5, 12, 768) and not z.any()
    assert pass_inputs(UNCOND, "c", "n", audio, z) == ("n", z)
    assert pass_inputs(DROP_AUDIO, "c", "n", audio, z) == ("c", z)


def test_apg_orthogonal_clipped_momentum():
    p = _preds(pass_names(5.0, 4.0))
    apg = APG()
    cond, diff = p[COND], p[COND] - p[DROP_TEXT]
    g = apg("text", diff, cond)
    assert abs(float((g.double() * cond.double()).sum())) < 1e-3  # orthogonal to cond
    assert g.norm() <= 55.0 + 1e-3
    g2 = apg("text", diff, cond)  # momentum: buffer = diff + (-0.75) * diff
    ref = APG().running  # fresh
    assert not ref
    expected = APG(momentum=0.0)("x", 0.25 * diff, cond)
    assert_close(g2, expected, 1e-4, "momentum")
    out = combine(p, 5.0, 4.0, APG())
    assert out.shape == cond.shape and torch.isfinite(out).all()


class SlotDiT:
    """Stands in for the DiT's hook: e0 from t, the block stack = "add a residual that names the pass"."""

    def __init__(self):
        self.block_runs = []

    def __call__(self, name, t, slot, tag):
        e0 = torch.stack([t.float(), t.float() ** 2 / 1000])[None].expand(1, 2, 4)  # [1, 2, 4], moves with t
        x = torch.full((1, 3, 4), float(t))
        cached = slot.reuse(e0, x)
        if cached is not None:
            return cached
        self.block_runs.append(name)
        out = x + tag
        slot.store(x, out)
        return out


@pytest.mark.parametrize("text_scale", [5.0, 1.0])
def test_teacache_keys_by_pass_type(text_scale):
    steps = 20
    dit, cache = SlotDiT(), TeaCache(threshold=1e30)  # huge threshold: reuse whenever allowed
    ts = timesteps(steps, 7.0)
    names = pass_names(text_scale, 4.0)
    for i in range(steps):
        for tag, name in enumerate(names):
            out = dit(name, ts[i], cache.slot(name), tag)
            # a reused residual always belongs to the same pass type; the tokens are this call's own
            assert_close(out, torch.full((1, 3, 4), float(ts[i]) + tag), 1e-3, f"{name} step {i}")
    # every pass: 5 warm-up calls, then reuse to the end (no cutoff, as the official use_ret_steps=True)
    assert dit.block_runs == [n for _ in range(5) for n in names]
    assert cache.skipped == (steps - 5) * len(names)
    cache.reset()
    dit(names[0], ts[7], cache.slot(names[0]), 0)
    assert dit.block_runs[-1] == names[0]  # after reset the warm-up starts again


def test_teacache_accumulates_then_computes():
    coefficients = COEFFICIENTS["480p"]
    cache = TeaCache(threshold=0.2)
    slot = cache.slot(COND)
    x = torch.zeros(1, 1, 2)
    e0 = torch.ones(1, 6, 2)
    for _ in range(5):  # warm-up
        assert slot.reuse(e0, x) is None
        slot.store(x, x + 1)
    p = rescale(0.02, coefficients)
    assert p == pytest.approx(np.polyval(coefficients, 0.02)) and 0.1 < p < 0.2  # README: p(0.02) ~ 0.18
    e0 = e0 * 1.02
    assert slot.reuse(e0, x) is not None and slot.accumulated == pytest.approx(p, rel=1e-5)
    e0 = e0 * 1.02
    assert slot.reuse(e0, x) is None and slot.accumulated == 0.0  # 2p >= 0.2: compute, reset
    assert cache.skipped == 1
    assert COEFFICIENTS["720p"][0] == pytest.approx(8.10705460e03)
    with pytest.raises(ValueError, match="teacache_thresh"):
        TeaCache(threshold=-1)


def test_pass_count_follows_guidance():
    assert [passes_per_step(t, a) for t, a in [(5, 4), (1, 2), (1, 1), (5, 1)]] == [3, 2, 1, 2]
    p = _preds((COND, DROP_TEXT, UNCOND, DROP_AUDIO))
    assert torch.equal(combine({COND: p[COND]}, 1.0, 1.0), p[COND])
    # what the skipped pass would have added has weight 0: same result as the full formulas
    assert_close(combine({COND: p[COND]}, 1.0, 1.0), combine({COND: p[COND], DROP_AUDIO: p[DROP_AUDIO]}, 1.0, 1.0),
                 1e-5, "cfg 1")
    two = {k: p[k] for k in (COND, DROP_TEXT)}
    assert_close(combine(two, 5.0, 1.0), combine({k: p[k] for k in (COND, DROP_TEXT, UNCOND)}, 5.0, 1.0), 1e-5,
                 "audio 1")
    assert_close(combine(two, 5.0, 1.0, APG()), combine(dict(two, uncond=p[UNCOND]), 5.0, 1.0, APG()), 1e-5,
                 "audio 1, APG")


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
