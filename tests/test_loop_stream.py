"""The long-video loop on the tiny golden DiT with a tiny fake VAE/CLIP: several windows, streaming, seed
determinism, interruption, video-to-video keyframes, MultiTalk context, flat memory as the audio grows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # measurement subprocess: register the pack like conftest does
    sys.path.insert(0, str(HERE))
    import conftest  # noqa: F401

from golden import BUILTIN_ROOT, GoldenCase, assert_close  # noqa: E402
from infinitetalk.models.wan_dit import WanModel  # noqa: E402
from infinitetalk.samplers.loop import Interrupted, Settings, generate  # noqa: E402

H, W = 32, 48
_MODEL = {}


def tiny_dit() -> WanModel:
    if "m" not in _MODEL:
        case = GoldenCase(BUILTIN_ROOT, "dit_single")
        model = WanModel(**case.config)
        model.load_state_dict(case.weights(), strict=True)
        _MODEL["m"] = model.eval()
    return _MODEL["m"]


def vae_encode(frames: torch.Tensor) -> torch.Tensor:
    """[n, H, W, 3] 0..1 -> [16, 1 + (n-1)//4, H/8, W/8]: 8x8 average, causal 1 + 4k frame groups."""
    x = F.avg_pool2d(frames.permute(0, 3, 1, 2), 8)  # [n, 3, h, w]
    groups = [x[:1]] + [x[i:i + 4].mean(0, keepdim=True) for i in range(1, x.shape[0], 4)]
    z = torch.cat(groups).permute(1, 0, 2, 3) * 2 - 1  # [3, T, h, w]
    return torch.cat([z, -z, z * 0.5, torch.zeros(16 - 9, *z.shape[1:])]).contiguous()


def vae_decode(latent: torch.Tensor) -> torch.Tensor:
    """[16, T, h, w] -> [4(T-1)+1, H, W, 3] 0..1."""
    z = latent[:3]
    z = torch.cat([z[:, :1], z[:, 1:].repeat_interleave(4, dim=1)], dim=1)  # [3, F, h, w]
    return torch.sigmoid(F.interpolate(z.permute(1, 0, 2, 3), scale_factor=8, mode="nearest")).permute(0, 2, 3, 1)


def clip_encode(frame: torch.Tensor) -> torch.Tensor:
    return frame.mean().expand(1, 257, 1280).contiguous()


def inputs(frames: int, speakers: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(H, W, 3, generator=g)
    audio = torch.randn(speakers, frames, 12, 768, generator=g)
    text = (torch.randn(7, 64, generator=g), torch.randn(5, 64, generator=g))
    return image, audio, text


def settings(**kw) -> Settings:
    base = dict(steps=1, text_scale=1.0, audio_scale=2.0, shift=2.0, seed=7, frame_num=17, motion_frames=9,
                size=(H, W), color_strength=0.5)
    base.update(kw)
    return Settings(**base)


def run(frames: int, speakers: int = 1, **kw):
    image, audio, text = inputs(frames, speakers)
    got = []
    result = generate(tiny_dit(), vae_encode, vae_decode, clip_encode, image, audio, text, settings(**kw),
                      sink=got.append)
    return result, got


def test_streams_every_frame_once_over_windows():
    progress = []
    image, audio, text = inputs(34)
    got = []
    result = generate(tiny_dit(), vae_encode, vae_decode, clip_encode, image, audio, text, settings(),
                      sink=got.append, on_step=lambda d, t: progress.append((d, t)))
    assert len(result.plan) == 4  # 17-frame windows advancing by 8
    assert [len(g) for g in got] == [w.emit_count for w in result.plan.windows]
    assert sum(len(g) for g in got) == result.frames == 34
    assert all(g.shape[1:] == (H, W, 3) and 0 <= g.min() and g.max() <= 1 for g in got)
    assert progress == [(i, 4) for i in range(1, 5)]


def test_same_seed_same_video_and_short_audio():
    _, a = run(20)
    _, b = run(20)
    _, c = run(20, seed=8)
    assert torch.equal(torch.cat(a), torch.cat(b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    result, short = run(5)  # shorter than one window: padded, then trimmed
    assert len(result.plan) == 1 and sum(len(s) for s in short) == 5


def test_context_pinned_clean_and_reference_noise_stream():
    image, audio, text = inputs(30)
    trace = []
    s = settings(color_strength=0.0, steps=2)
    generate(tiny_dit(), vae_encode, vae_decode, clip_encode, image, audio, text, s,
             trace=lambda k, v: trace.append((k, v)))
    latents = [v for k, v in trace if k.endswith("latent_in")]
    x0s = [v for k, v in trace if k == "x0"]
    # window 1, step 0: latents 0..2 = VAE(last 9 frames of window 0), the rest = noise of the reference stream
    history = vae_decode(x0s[0])[-9:]
    assert_close(latents[2][:, :3], vae_encode(history), 1e-6, "pinned context")
    g = torch.Generator().manual_seed(s.seed)
    shape = (16, 5, H // 8, W // 8)
    torch.randn(shape, generator=g)
    noise1 = torch.randn(shape, generator=g)
    assert torch.equal(latents[2][:, 3:], noise1[:, 3:])
    for _ in range(1 + s.steps):  # the reference's discarded context draws of window 1
        torch.randn((16, 3, H // 8, W // 8), generator=g)
    noise2 = torch.randn(shape, generator=g)
    assert torch.equal(latents[4][:, 3:], noise2[:, 3:])
    assert torch.equal(x0s[1][:, :3], latents[2][:, :3])  # clean after the last step too


def test_interrupt_between_steps_emits_only_whole_windows():
    image, audio, text = inputs(50)
    got, polls = [], []

    def should_stop():
        polls.append(1)
        return len(polls) > 4  # window 0: 3 polls (window, 2 steps); window 1: stop at its first step

    with pytest.raises(Interrupted):
        generate(tiny_dit(), vae_encode, vae_decode, clip_encode, image, audio, text, settings(steps=2),
                 sink=got.append, should_stop=should_stop)
    assert [len(g) for g in got] == [17]


def test_video_to_video_keyframes():
    frames = torch.rand(20, H, W, 3)
    _, audio, text = inputs(40)
    seen = []

    def clip(frame):
        seen.append(frame)
        return clip_encode(frame)

    result = generate(tiny_dit(), vae_encode, vae_decode, clip, frames, audio, text, settings(color_strength=0.0))
    starts = [w.start for w in result.plan.windows]
    assert starts == [0, 8, 16, 24]
    for frame, start in zip(seen, starts):
        assert torch.equal(frame, frames[min(start, 19)])


def test_multitalk_two_speakers_renoised_context():
    result, got = run(40, speakers=2, family="multitalk", motion_frames=5, text_scale=5.0, audio_scale=4.0)
    assert sum(len(g) for g in got) == 40 and [w.start for w in result.plan.windows][:2] == [0, 12]


def test_teacache_skips_block_stacks_per_pass():
    runs = []
    hook = tiny_dit().blocks[0].register_forward_hook(lambda *_: runs.append(1))
    try:
        result, got = run(10, steps=8, teacache_thresh=1e30)  # reuse whenever allowed
    finally:
        hook.remove()
    # 2 passes per step (text 1): 5 warm-up steps computed, steps 5..7 reuse each pass's own residual
    assert result.skipped_passes == 6 and len(runs) == 10 and sum(len(g) for g in got) == 10


@pytest.mark.parametrize("scales, passes", [((1.0, 1.0), 1), ((1.0, 2.0), 2), ((5.0, 1.0), 2), ((5.0, 4.0), 3)])
def test_dit_passes_per_step_follow_guidance(scales, passes):
    calls = []

    def dit(x, t, context, clip_fea, y, audio, ref_target_masks=None):
        calls.append((context.shape[1], bool(audio.any())))
        return tiny_dit()(x, t, context, clip_fea, y, audio, ref_target_masks)

    image, audio, text = inputs(10)
    generate(dit, vae_encode, vae_decode, clip_encode, image, audio, text,
             settings(steps=2, text_scale=scales[0], audio_scale=scales[1]))
    assert len(calls) == 2 * passes
    assert calls[0] == (7, True)  # cond: text + audio


def _measure(frames: int) -> dict:
    import resource
    with torch.inference_mode():
        tiny_dit()
        image, audio, text = inputs(frames)
        count = []
        generate(tiny_dit(), vae_encode, vae_decode, clip_encode, image, audio, text,
                 settings(frame_num=33, motion_frames=1, steps=1), sink=lambda f: count.append(len(f)))
    return {"frames": sum(count), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def test_peak_memory_flat_as_audio_grows():
    def measure(frames: int) -> dict:
        proc = subprocess.run([sys.executable, str(Path(__file__)), str(frames)], capture_output=True, text=True,
                              timeout=300, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    short, long = measure(40), measure(160)
    assert (short["frames"], long["frames"]) == (40, 160)
    assert long["maxrss_kb"] <= short["maxrss_kb"] * 1.04, (short, long)


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]))))
