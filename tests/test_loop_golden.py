"""The sampling loop against the official generate_infinitetalk (clip mode) on the tiny golden DiT.

The whole ``generate`` runs with stand-ins for the VAE/CLIP that return the recorded tensors; everything the
loop builds itself (noise from the seed, y, masks, windowed audio, guidance, APG, TeaCache, Euler, motion
pinning) is ours. The official extras come from the case's ``sampling.extra_args`` (README §4a, §4b).
"""
import pytest
import torch

from golden import assert_close, golden_cases, golden_dit
from infinitetalk.models.wan_dit import sinusoidal_embedding
from infinitetalk.samplers.audio_windows import frame_audio_windows
from infinitetalk.samplers.guidance import pass_names
from infinitetalk.samplers.loop import Settings, generate
from infinitetalk.samplers.teacache import TeaCache

CASES = (golden_cases("loop_single_cfg3") + golden_cases("loop_single_lora_cfg2") + golden_cases("loop_multi_cfg3")
         + golden_cases("loop_single_teacache") + golden_cases("loop_single_apg")
         + golden_cases("loop_single_apg_clip"))
TEACACHE_SIZES = {"infinitetalk-480": "480p", "infinitetalk-720": "720p"}




class Recorder:
    """Wraps the DiT: records what each call received and whether its block stack ran."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks=None, **kw):
        ran = []
        hook = self.model.blocks[0].register_forward_hook(lambda *_: ran.append(1))
        try:
            out = self.model(x, t, context, clip_fea, y, audio, ref_target_masks, **kw)
        finally:
            hook.remove()
        self.calls.append(dict(context_len=context.shape[1], audio=audio, y=y, masks=ref_target_masks,
                               clip=clip_fea, blocks_ran=bool(ran)))
        return out


def settings_of(case) -> Settings:
    """Our settings for a clip-mode loop case: its sampling, plus the official extras it turned on."""
    s = case.case["sampling"]
    extra = s.get("extra_args", {})
    over = {}
    if extra.get("use_apg"):
        over.update(apg=True, apg_momentum=extra["apg_momentum"], apg_norm_threshold=extra["apg_norm_threshold"])
    if extra.get("use_teacache"):
        over.update(teacache_thresh=extra["teacache_thresh"], resolution=TEACACHE_SIZES[extra["size"]])
    return Settings(steps=s["steps"], shift=s["shift"], text_scale=s["text_guide_scale"],
                    audio_scale=s["audio_guide_scale"], seed=s["seed"], frame_num=s["frame_num"],
                    motion_frames=s["frame_num"], max_frames=s["frame_num"], size=(s["pixel_h"], s["pixel_w"]),
                    color_strength=0.0, **over)


@pytest.mark.parametrize("case", CASES)
def test_loop_matches_reference(case):
    s, inp, out = case.case["sampling"], case.inputs(), case.outputs()
    h, w, frames = s["pixel_h"], s["pixel_w"], s["frame_num"]
    torch.manual_seed(0)
    image = torch.rand(h, w, 3)

    def vae_encode(pixels):
        assert pixels.shape[1:] == (h, w, 3)
        assert torch.equal(pixels[0], image)
        if pixels.shape[0] == 1:
            return inp["latent_motion_frames"]
        assert pixels.shape[0] == frames and bool((pixels[1:] == 0.5).all())  # mid-grey padding
        return inp["y_vae_latent"]

    audio = inp["audio_full"]
    if s["human_num"] == 2:
        audio = torch.cat([audio, inp["full_audio_emb_person2"][None]])
    settings = settings_of(case)
    traced, emitted = {}, []
    dit = Recorder(golden_dit(case))
    result = generate(dit, vae_encode, lambda lat: torch.zeros(frames, h, w, 3), lambda f: inp["clip_fea"], image,
                      audio, (inp["context"], inp["context_null"]), settings, sink=emitted.append,
                      trace=lambda k, v: traced.__setitem__(k, v))
    assert result.frames == frames and sum(len(f) for f in emitted) == frames

    expected_calls = case.case["dit_calls_in_order"]
    assert len(dit.calls) == len(expected_calls)
    windowed = frame_audio_windows(audio, 0, frames, audio.shape[1])
    assert torch.equal(windowed, torch.stack([a[inp["dit_audio_indices"]] for a in audio]))
    for call, want in zip(dit.calls, expected_calls):
        assert call["context_len"] == want["context_len"]
        assert call["audio"].shape[0] == want["audio_batch"]
        assert bool((call["audio"] == 0).all()) == want["audio_all_zero"]
        if not want["audio_all_zero"]:
            assert torch.equal(call["audio"], windowed)
        assert_close(call["y"], inp["dit_y"], 0.0, "y")
        assert torch.equal(call["masks"], inp["dit_ref_target_masks"])
        if "teacache" in want:
            assert call["blocks_ran"] == want["teacache"]["should_calc"]
    if "teacache" in case.case:
        assert result.skipped_passes == case.case["teacache"]["skipped_calls"]

    checked = []
    for key, ref in out.items():
        if key.startswith("step"):
            assert key in traced, f"missing trace {key}"
            assert_close(traced[key].reshape(ref.shape), ref, 5e-4, key)
            checked.append(key)
    assert_close(traced["x0"], out["x0"], 5e-4, "x0")
    assert len(checked) >= 3 * s["steps"]


@pytest.mark.parametrize("case", golden_cases("loop_single_cfg3"))
def test_noise_stream_matches_reference(case):
    inp = case.inputs()
    g = torch.Generator().manual_seed(case.case["sampling"]["seed"])
    assert torch.equal(torch.randn(tuple(inp["noise"].shape), generator=g), inp["noise"])


@pytest.mark.parametrize("case", golden_cases("loop_single_teacache"))
def test_teacache_decisions_match_reference(case):
    """Every call's rel-L1, accumulated distance and decision, our TeaCache fed the model's own e0."""
    model, out, tc = golden_dit(case), case.outputs(), case.case["teacache"]
    s = case.case["sampling"]
    decisions = []
    cache = TeaCache(tc["teacache_thresh"], TEACACHE_SIZES[tc["model_scale"]],
                     on_decision=lambda name, info: decisions.append((name, info)))
    assert list(cache.coefficients) == pytest.approx(tc["coefficients"], rel=1e-12)
    x = torch.zeros(1, 2, model.dim)
    with torch.no_grad():
        for i in range(s["steps"]):
            e = model.time_embedding(sinusoidal_embedding(out[f"step{i}.t"].reshape(1), model.freq_dim))
            e0 = model.time_projection(e).unflatten(1, (6, model.dim))
            for name in pass_names(s["text_guide_scale"], s["audio_guide_scale"]):
                slot = cache.slot(name)
                if slot.reuse(e0, x) is None:
                    slot.store(x, x + 1)
    calls = case.case["dit_calls_in_order"]
    assert [name for name, _ in decisions] == [c["branch"] for c in calls]
    for (_, got), want in zip(decisions, (c["teacache"] for c in calls)):
        assert got["forced"] == want["forced_calc"] and got["compute"] == want["should_calc"]
        if not want["forced_calc"]:
            assert got["rel"] == pytest.approx(want["rel_l1"], rel=1e-4)
            assert got["accumulated"] == pytest.approx(want["accumulated"], rel=1e-4)
    assert cache.skipped == tc["skipped_calls"]
    pattern = "".join("C" if got["compute"] else "s" for name, got in decisions if name == "cond")
    assert pattern == tc["step_pattern"]
