"""Bench parts of the second round: the routing map alone, batched guidance passes, per-step times.

* ``routing_map_part``: the two-speaker routing map of one block at the 480p shape, the fused kernel
  (models/routing_kernel.py) against the plain fp32 path on the same bf16 q/k: time, and how far the
  maps and the routing positions move.
* ``batched_part``: ``cond`` + ``drop_text`` (same audio) as one B=2 forward via
  models/batched_passes.py, against the B=1 forward timed before it.
* ``step_times``: per-step times of 3-pass (standard) and 2-pass (fast) guidance from the measured
  forwards (no VAE / T5 / wav2vec2: those are not measured here).
"""
from __future__ import annotations

import torch

import bench_lib as bl
from infinitetalk.models import audio_adapter as aa
from infinitetalk.models import routing_kernel as rk
from infinitetalk.models.batched_passes import shared_audio_passes


def _class_masks(grid_hw: tuple[int, int], device) -> torch.Tensor:
    """The bench's left / right speaker boxes with a background gap, at token resolution [3, h·w]."""
    h, w = grid_hw
    masks = torch.zeros(3, h, w, device=device)
    masks[0, :, : w * 2 // 5] = 1
    masks[1, :, w * 3 // 5:] = 1
    masks[2] = 1 - masks[0] - masks[1]
    return masks.flatten(1) > 0


def routing_map_part(res: dict, reps: int, device, blocks: int = 40, grid=(21, 30, 52), heads=40, head_dim=128):
    """Time one block's routing map (fused vs fp32 reference) and compare the two maps."""
    g = torch.Generator(device="cpu").manual_seed(1)
    seq, keys = grid[0] * grid[1] * grid[2], grid[1] * grid[2]
    # RMS-normed q/k after RoPE are O(1) per entry; scale 2 gives peaked softmaxes like trained heads.
    q = (2 * torch.randn(1, seq, heads, head_dim, generator=g)).to(device, torch.bfloat16)
    k = (2 * torch.randn(1, seq, heads, head_dim, generator=g)).to(device, torch.bfloat16)
    masks = _class_masks(grid[1:], device)
    k_frame = k[:, :keys]
    fused = lambda: aa.routing_map(q, k, masks, keys)  # noqa: E731
    reference = lambda: aa.routing_map(q.float(), k_frame.float(), masks, keys)  # noqa: E731 - exact fp32 path
    t_fused, _, first = bl.time_cuda(fused, reps, warmup=2)
    path = rk.status()
    t_ref, _, _ = bl.time_cuda(reference, reps, warmup=1)
    m_fused, m_ref = fused(), reference()
    pos_f, pos_r = aa.routing_positions(m_fused), aa.routing_positions(m_ref)
    flips = int((m_fused.argmax(1) != m_ref.argmax(1)).sum())
    res["routing_map"] = {
        "shape": {"queries": seq, "keys": keys, "heads": heads, "head_dim": head_dim},
        "fused_s_per_block": t_fused, "reference_s_per_block": t_ref,
        "fused_s_per_forward": t_fused * blocks, "reference_s_per_forward": t_ref * blocks,
        "speedup": t_ref / t_fused, "first_call_s": first, "path": path,
        "max_abs_map_diff": float((m_fused - m_ref).abs().max()),
        "max_rel_map_diff": float(((m_fused - m_ref).abs() / m_ref.abs().clamp_min(1e-30)).max()),
        "argmax_flips": flips, "tokens": seq,
        "max_abs_position_diff": float((pos_f - pos_r).abs().max()),
    }
    print(f"  routing map / block: fused {t_fused * 1e3:.1f} ms ({path['last_path']}), fp32 reference "
          f"{t_ref * 1e3:.1f} ms; max |Δmap| {res['routing_map']['max_abs_map_diff']:.2e}, "
          f"argmax flips {flips}/{seq}", flush=True)


def batched_part(res: dict, model, cfg: dict, latent, reps: int, device, dtype, key="bf16_480p_1spk_b2"):
    """cond + drop_text as one B=2 forward (same audio, two texts); per-pass time vs the B=1 forward."""
    inp = bl.make_inputs(cfg, latent, 1, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(5)
    negative = torch.randn(inp["context"].shape, generator=g).to(device=device, dtype=dtype)
    last = {}

    def fn():
        last["out"] = shared_audio_passes(model, inp["x"], inp["t"], [inp["context"], negative],
                                          inp["clip_fea"], inp["y"], inp["audio"], inp["ref_target_masks"])
    med, times, first = bl.time_cuda(fn, reps)
    peak = torch.cuda.max_memory_allocated() / bl.GIB
    res["dit_forward_s"][key] = med
    res["peak_gib"][key] = peak
    single = res["dit_forward_s"].get(key.replace("_b2", ""))
    res["detail"][key] = {"times_s": times, "first_call_s": first, "passes": 2, "per_pass_s": med / 2,
                          "finite": bool(all(torch.isfinite(o).all() for o in last.pop("out"))),
                          "per_pass_vs_b1": (med / 2 / single - 1) if single else None}
    flops = bl.dit_flops(cfg, (latent[0], latent[1] // 2, latent[2] // 2), 1)
    rate = res.get("matmul_tflops")
    if rate:
        res["mfu"][key] = 2 * (flops["linear"] + flops["attention"]) / med / (rate * 1e12)
    print(f"  {key}: {med:.3f} s for 2 passes ({med / 2:.3f} s/pass, first {first:.1f} s), peak {peak:.1f} GiB",
          flush=True)


def step_times(res: dict) -> dict:
    """Per-step and per-window DiT times from the measured forwards (DiT only; labelled estimates)."""
    fwd = res["dit_forward_s"]
    out = {}
    for prefix in ("bf16_480p_1spk", "bf16_480p_2spk", "fp8_480p_1spk", "int8_480p_1spk", "bf16_720p_1spk"):
        t1 = fwd.get(prefix)
        if t1 is None:
            continue
        b2 = fwd.get(prefix + "_b2")
        three = min(3 * t1, b2 + t1) if b2 else 3 * t1  # cond+drop_text batched (same audio) + uncond
        out[prefix] = {"step_3pass_s": three, "step_3pass_unbatched_s": 3 * t1,
                       "step_2pass_s": 2 * t1,  # cond + drop_audio: different audio, two B=1 forwards
                       "window_fusionx_4step_2pass_dit_s": 4 * 2 * t1,
                       "window_40step_3pass_dit_s": 40 * three}
    res["steps"] = out
    return out
