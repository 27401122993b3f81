"""The sampling loop against the official generate_infinitetalk (clip mode) on the tiny golden DiT.

The whole ``generate`` runs with stand-ins for the VAE/CLIP that return the recorded tensors; everything the
loop builds itself (noise from the seed, y, masks, windowed audio, guidance, Euler, motion pinning) is ours.
"""
import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.models.wan_dit import WanModel
from infinitetalk.samplers.audio import window_audio
from infinitetalk.samplers.loop import Settings, generate

CASES = golden_cases("loop_single_cfg3") + golden_cases("loop_single_lora_cfg2") + golden_cases("loop_multi_cfg3")
_MODELS = {}


def _model(case):
    key = case.case["weights_file"]
    if key not in _MODELS:
        model = WanModel(**case.config)
        model.load_state_dict(case.weights(), strict=True)
        _MODELS[key] = model.eval()
    return _MODELS[key]


class Recorder:
    """Wraps the DiT: records what each call received."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks=None):
        self.calls.append(dict(context_len=context.shape[1], audio=audio, y=y, masks=ref_target_masks,
                               clip=clip_fea))
        return self.model(x, t, context, clip_fea, y, audio, ref_target_masks)


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
    settings = Settings(steps=s["steps"], shift=s["shift"], text_scale=s["text_guide_scale"],
                        audio_scale=s["audio_guide_scale"], seed=s["seed"], frame_num=frames, motion_frames=frames,
                        max_frames=frames, size=(h, w), color_strength=0.0)
    traced, emitted = {}, []
    dit = Recorder(_model(case))
    result = generate(dit, vae_encode, lambda lat: torch.zeros(frames, h, w, 3), lambda f: inp["clip_fea"], image,
                      audio, (inp["context"], inp["context_null"]), settings, sink=emitted.append,
                      trace=lambda k, v: traced.__setitem__(k, v))
    assert result.frames == frames and sum(len(f) for f in emitted) == frames

    expected_calls = case.case["dit_calls_in_order"]
    assert len(dit.calls) == len(expected_calls)
    windowed = window_audio(audio, 0, frames, audio.shape[1])
    assert torch.equal(windowed, torch.stack([a[inp["dit_audio_indices"]] for a in audio]))
    for call, want in zip(dit.calls, expected_calls):
        assert call["context_len"] == want["context_len"]
        assert call["audio"].shape[0] == want["audio_batch"]
        assert bool((call["audio"] == 0).all()) == want["audio_all_zero"]
        if not want["audio_all_zero"]:
            assert torch.equal(call["audio"], windowed)
        assert_close(call["y"], inp["dit_y"], 0.0, "y")
        assert torch.equal(call["masks"], inp["dit_ref_target_masks"])

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
