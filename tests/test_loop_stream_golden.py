"""The long-video loop against the official streaming ``generate_infinitetalk`` (golden loop_stream_*, README §4c).

Our whole ``generate`` runs over several windows on the tiny golden DiT with the fixtures' stub VAE and CLIP
(the formulas of README §4c "The stubs", written here in torch). Everything else is ours: the window plan, the
per-window audio and its end padding, the noise stream, the motion frames carried through decode -> colour
correction -> re-encode, the trimming. Every size comes from the case, so any root of these families works.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import infinitetalk.samplers.loop as loop
from golden import assert_close, golden_cases, golden_dit
from infinitetalk.samplers.guidance import pass_names
from infinitetalk.samplers.loop import Settings, generate

CASES = (golden_cases("loop_stream_single") + golden_cases("loop_stream_dubbing")
         + golden_cases("loop_stream_multi"))
ATOL = 5e-4           # README "Tolerances": every float tensor of the streaming loop
CLIP_MEAN_ATOL = 1e-6




class Stubs:
    """The fixtures' stub VAE and CLIP behind our loop's callable contracts (frames 0..1, [n, H, W, 3]).

    ``done`` counts finished sampling steps (the loop's ``on_step``), so each recorded value lands under the
    window that produced it: a DiT call of window k runs while ``done // steps == k``, its decode right after
    the window's last step."""

    def __init__(self, inp: dict, steps: int):
        self.enc_w, self.enc_b = inp["stub_vae.enc_w"], inp["stub_vae.enc_b"]
        self.dec_w, self.dec_b = inp["stub_vae.dec_w"], inp["stub_vae.dec_b"]
        self.proj, self.clip_base = inp["stub_clip.proj"], inp["clip_fea"]
        self.steps, self.done, self.clip_mean, self.decoded = steps, 0, {}, {}
        self.current_mean = None

    @property
    def window(self) -> int:
        """The window being sampled."""
        return self.done // self.steps

    @property
    def finished_window(self) -> int:
        """The window whose last step has just run (decode, colour correction, x0)."""
        return (self.done - 1) // self.steps

    def vae_encode(self, frames: torch.Tensor) -> torch.Tensor:
        u = frames.permute(3, 0, 1, 2) * 2 - 1                            # [3, n, H, W] in -1..1
        g = F.avg_pool2d(u, 8)                                            # [3, n, h, w]
        groups = [g[:, :1]] + [g[:, i:i + 4].mean(1, keepdim=True) for i in range(1, g.shape[1], 4)]
        g = torch.cat(groups, dim=1)                                      # causal time groups [3, 1+m, h, w]
        return torch.einsum("dc,cthw->dthw", self.enc_w, g) + self.enc_b[:, None, None, None]

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        frames = [z[:, :1]]
        for n in range(1, z.shape[1]):
            frames += [((3 - k) * z[:, n - 1:n] + (k + 1) * z[:, n:n + 1]) / 4 for k in range(4)]
        v = torch.einsum("cd,dthw->cthw", self.dec_w, torch.cat(frames, dim=1)) + self.dec_b[:, None, None, None]
        v = v.clamp(-1, 1)                                                # [3, F, h, w]
        self.decoded[self.finished_window] = v
        full = v.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        return ((full + 1) / 2).permute(1, 2, 3, 0)                       # [F, H, W, 3] 0..1

    def clip_encode(self, frame: torch.Tensor) -> torch.Tensor:
        mean = (frame * 2 - 1).mean(dim=(0, 1))                           # [3]
        self.current_mean = mean
        return self.clip_base + (mean @ self.proj)[None, None, :]


class Recorder:
    """The DiT, recording what each call received (and the CLIP mean of the window's keyframe)."""

    def __init__(self, model, stubs: Stubs):
        self.model, self.stubs, self.calls = model, stubs, []

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks=None):
        self.calls.append(dict(window=self.stubs.window, context_len=context.shape[1], audio=audio, y=y,
                               masks=ref_target_masks))
        self.stubs.clip_mean.setdefault(self.stubs.window, self.stubs.current_mean)
        return self.model(x, t, context, clip_fea, y, audio, ref_target_masks)


def _lowres(frames01: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> [3, F, H/8, W/8] in -1..1, after checking every 8x8 block is constant."""
    v = frames01.permute(3, 0, 1, 2) * 2 - 1
    low = v[..., ::8, ::8]
    assert torch.equal(v, low.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)), "frames are not blocky"
    return low


def _run(case, monkeypatch):
    c, inp = case.case, case.inputs()
    s = c["sampling"]
    stubs = Stubs(inp, s["steps"])
    corrected = {}

    def match_colors(frames, reference, strength):
        out = real_match(frames, reference, strength)
        corrected[stubs.finished_window] = out
        return out

    real_match = loop.match_colors
    monkeypatch.setattr(loop, "match_colors", match_colors)
    reference = inp["cond_video_u8"] if "cond_video_u8" in inp else inp["cond_image_u8"]
    reference = reference.float() / 255
    audio = [inp[f"audio_emb_person{i + 1}"] for i in range(s["human_num"])]
    if len({len(a) for a in audio}) != 1:
        pytest.skip("our sampler takes speakers of one length (the Audio Encode node pads them)")
    settings = Settings(steps=s["steps"], shift=s["shift"], text_scale=s["text_guide_scale"],
                        audio_scale=s["audio_guide_scale"], seed=s["seed"], frame_num=s["frame_num"],
                        motion_frames=s["motion_frame"], max_frames=s["max_frames_num"],
                        size=(s["pixel_h"], s["pixel_w"]), color_strength=s["color_correction_strength"])
    traced, emitted = {}, []

    def trace(key, value):
        window = stubs.finished_window if key == "x0" else stubs.window
        traced[f"w{window}.{key}"] = value

    def on_step(done, total):
        stubs.done = done

    dit = Recorder(golden_dit(case), stubs)
    result = generate(dit, stubs.vae_encode, stubs.vae_decode, stubs.clip_encode, reference,
                      torch.stack(audio), (inp["context"], inp["context_null"]), settings, sink=emitted.append,
                      on_step=on_step, trace=trace)
    return dict(result=result, traced=traced, emitted=emitted, dit=dit, stubs=stubs, corrected=corrected,
                inp=inp, out=case.outputs())


@pytest.fixture(scope="module")
def runs():
    return {}


@pytest.fixture
def run(case, runs, monkeypatch):
    key = (case.root, case.family)
    if key not in runs:
        runs[key] = _run(case, monkeypatch)
    return runs[key]


@pytest.mark.parametrize("case", CASES)
def test_stream_frames_and_windows(case, run):
    c = case.case
    result, emitted = run["result"], run["emitted"]
    assert len(result.plan) == c["n_windows"]
    assert result.frames == sum(len(f) for f in emitted) == c["final_frames"]
    assert [len(f) for f in emitted] == [min(b, c["final_frames"]) - a for a, b in
                                         (w["emitted_global_frames"] for w in c["windows"])]
    video = _lowres(torch.cat(emitted))
    assert list(video.shape) == [3, c["final_frames"], c["sampling"]["lat_h"], c["sampling"]["lat_w"]]
    assert_close(video, run["out"]["video_lowres"], ATOL, "video_lowres")


@pytest.mark.parametrize("case", CASES)
def test_stream_dit_calls(case, run):
    c, inp, out, calls = case.case, run["inp"], run["out"], run["dit"].calls
    expected = c["dit_calls_in_order"]
    assert len(calls) == len(expected)
    for call, want in zip(calls, expected):
        assert call["window"] == want["window"]
        assert call["context_len"] == want["context_len"] and call["audio"].shape[0] == want["audio_batch"]
        assert bool((call["audio"] == 0).all()) == want["audio_all_zero"]
        assert_close(call["y"], out[f"w{want['window']}.y"], ATOL, f"w{want['window']}.y")
        assert torch.equal(call["masks"], inp["dit_ref_target_masks"])
    for k in range(c["n_windows"]):
        assert_close(run["stubs"].clip_mean[k], out[f"w{k}.clip_mean_rgb"], CLIP_MEAN_ATOL, f"w{k}.clip_mean_rgb")


@pytest.mark.parametrize("case", CASES)
def test_stream_sampling_per_window(case, run):
    c, inp, out, traced = case.case, run["inp"], run["out"], run["traced"]
    checked = 0
    for key, ref in out.items():
        if ".step" in key or key.endswith(".x0"):
            assert key in traced, f"missing trace {key}"
            assert_close(traced[key].reshape(ref.shape), ref, ATOL, key)
            checked += 1
    s = c["sampling"]
    per_step = 2 + len(pass_names(s["text_guide_scale"], s["audio_guide_scale"]))  # latent_in, t, predictions
    assert checked == c["n_windows"] * (1 + s["steps"] * per_step)
    for k, window in enumerate(c["windows"]):
        motion = out[f"w{k}.motion_latent"]
        assert motion.shape[1] == window["motion_frames_latents"]
        latent_in = traced[f"w{k}.step0.latent_in"]
        assert_close(latent_in[:, :motion.shape[1]], motion, ATOL, f"w{k}.motion_latent")
        noise = inp[f"w{k}.noise"]  # our one CPU generator gives the reference's stream
        assert torch.equal(latent_in[:, motion.shape[1]:], noise[:, motion.shape[1]:])


@pytest.mark.parametrize("case", CASES)
def test_stream_decode_and_colour_correction(case, run):
    out = run["out"]
    for k in range(case.case["n_windows"]):
        assert_close(run["stubs"].decoded[k], out[f"w{k}.video_decoded_lowres"], ATOL, f"w{k} decoded")
        assert_close(_lowres(run["corrected"][k]), out[f"w{k}.video_corrected_lowres"], ATOL, f"w{k} corrected")
