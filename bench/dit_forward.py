"""DiT forward benchmark: full-size Wan2.1-I2V-14B + InfiniteTalk adapter, random weights, one GPU.

    python bench/dit_forward.py                 # on the GPU machine: writes bench/results/<card>.json
    python bench/dit_forward.py --smoke --out X # tiny config on the CPU, 1 repetition (tests)

Measures, in one process: the bf16 (and fp8 / int8) matmul rate, the SDPA kernels at the 480p
shape (the fastest is selected for the runs), the golden parity of every fast path on the device,
then one forward (CUDA events, median of --reps after a warm-up that includes compilation) for
bf16 480p 1 and 2 speakers, 720p, bf16 block streaming under 16 / 8 GiB memory caps, and the fp8 /
int8 (official quanto layout) models. Also (bench/passes_bench.py): the two-speaker routing map of
one block alone (fused kernel vs the fp32 reference), cond + drop_text as one B=2 forward
(``bf16_480p_1spk_b2``) and the per-step times of 3- and 2-pass guidance derived from the forwards.
Prints a table; FLOPs are counted by bench_lib.dit_flops.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
import golden_check as gc_check  # noqa: E402
import passes_bench as pb  # noqa: E402

LATENT_480P, LATENT_720P = (21, 60, 104), (21, 90, 160)
FORWARD_KEYS = ("bf16_480p_1spk", "bf16_480p_2spk", "bf16_720p_1spk", "fp8_480p_1spk", "int8_480p_1spk")


def _grid(latent):
    return latent[0], latent[1] // 2, latent[2] // 2


def _guard(res: dict, label: str, fn):
    """``bench_lib.guard``, rewriting ``res["_partial"]`` (when set) after every part."""
    def keep():
        if res.get("_partial"):
            Path(res["_partial"]).write_text(json.dumps({k: v for k, v in res.items() if k != "_partial"}, indent=1))
    return bl.guard(res, label, fn, keep, limit=500)


def _forward(res, key, model, cfg, latent, speakers, dtype, reps, device, flops_rate=None):
    """Time one configuration; record s/forward, peak GiB, FLOPs, floor, MFU."""
    inp = bl.make_inputs(cfg, latent, speakers, device, dtype)
    flops = bl.dit_flops(cfg, _grid(latent), speakers)
    last = {}

    def fn():
        last["out"] = bl.call(model, inp)
    if device.type == "cuda":
        med, times, first = bl.time_cuda(fn, reps)
        peak = torch.cuda.max_memory_allocated() / bl.GIB
    else:
        t0 = time.perf_counter()
        fn()
        med = first = time.perf_counter() - t0
        times, peak = [med], 0.0
    finite = bool(torch.isfinite(last.pop("out")).all())
    total = flops["linear"] + flops["attention"]
    rate = res.get("matmul_tflops") or 0.0
    res["dit_forward_s"][key] = med
    res["peak_gib"][key] = peak
    res["detail"][key] = {"times_s": times, "first_call_s": first, "pflop": total / 1e15,
                          "linear_pflop": flops["linear"] / 1e15, "attention_pflop": flops["attention"] / 1e15,
                          "tokens": _grid(latent)[0] * _grid(latent)[1] * _grid(latent)[2]}
    res["detail"][key]["finite"] = finite
    if rate:
        lin_rate = (flops_rate or rate) * 1e12
        floor = flops["linear"] / lin_rate + flops["attention"] / (rate * 1e12)
        res["floor_s"][key] = floor
        res["mfu"][key] = total / med / (rate * 1e12)
    print(f"  {key}: {med:.3f} s (first {first:.1f} s), peak {peak:.1f} GiB", flush=True)


def _attention_kernels(res, reps):
    """Time SDPA's kernels at the 480p self-attention shape; enable only the fastest (+ math fallback)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    tokens = 21 * 30 * 52
    q, k, v = (torch.randn(1, 40, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * tokens * tokens * 128 * 40
    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}
    timing = {}
    for name, backend in kernels.items():
        try:
            with sdpa_kernel(backend):
                med, _, _ = bl.time_cuda(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), reps, 2)
            timing[name] = {"s": med, "tflops": flops / med / 1e12}
        except RuntimeError as err:
            timing[name] = {"error": str(err)[:200]}
    best = min((n for n in timing if "s" in timing[n]), key=lambda n: timing[n]["s"])
    torch.backends.cuda.enable_flash_sdp(best == "flash")
    torch.backends.cuda.enable_cudnn_sdp(best == "cudnn")
    torch.backends.cuda.enable_mem_efficient_sdp(best == "efficient")
    torch.backends.cuda.enable_math_sdp(True)
    res["attention"] = {"kernels": timing, "selected": best}
    print(f"  attention kernels: { {n: round(t.get('tflops', 0)) for n, t in timing.items()} } -> {best}")


def _golden(res, device, dtype, compiled):
    g = res["golden"]
    g["bf16_dit_single"] = gc_check.check_float("dit_single", device, dtype, compiled)
    # Compiling costs ~0.5 min per graph: the other checks run the same kernels eagerly.
    g["bf16_dit_multi"] = gc_check.check_float("dit_multi", device, dtype, False)
    g["fp8_quant_fp8"] = gc_check.check_quant("quant_fp8", device, dtype, False)
    g["int8_quant_int8"] = gc_check.check_quant("quant_int8", device, dtype, False)
    for name, r in g.items():
        print(f"  golden {name}: {json.dumps(r)}")


def _streaming(res, model, cfg, reps, device, caps_gib):
    from infinitetalk.loaders.streaming import BlockStreamer
    streamer = BlockStreamer(model.blocks, device)
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        for cap in caps_gib:
            bl.free_cuda()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap * bl.GIB / total), device)
            key = f"bf16_480p_1spk_stream_{cap}gib"
            _guard(res, key, lambda: _forward(res, key, model, cfg, LATENT_480P, 1, torch.bfloat16, reps, device))
            base = res["dit_forward_s"].get("bf16_480p_1spk")
            if base and key in res["dit_forward_s"]:
                res["detail"][key]["extra_vs_resident"] = res["dit_forward_s"][key] / base - 1
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        res["streaming_slot_gib"] = streamer.slot_bytes / bl.GIB


def run(args) -> dict:
    smoke = args.smoke
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float32 if smoke else torch.bfloat16
    reps = 1 if smoke else args.reps
    cfg = dict(bl.WanModel(**bl.TINY_CONFIG, device="meta").config if smoke else bl.WanModel(device="meta").config)
    card = "cpu-smoke" if smoke else torch.cuda.get_device_name(device)
    res = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "command": " ".join(sys.argv),
           "matmul_tflops": None, "dit_forward_s": {}, "peak_gib": {}, "floor_s": {}, "mfu": {},
           "golden": {}, "detail": {}, "_partial": str(args.partial) if args.partial else None}
    lat480, lat720 = ((3, 8, 12), (3, 12, 16)) if smoke else (LATENT_480P, LATENT_720P)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (routing map, golden references)
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        if not smoke:
            res["matmul_tflops"] = bl.matmul_rate("bf16")
            res["fp8_matmul_tflops"] = _guard(res, "fp8_rate", lambda: bl.matmul_rate("fp8"))
            res["int8_matmul_tops"] = _guard(res, "int8_rate", lambda: bl.matmul_rate("int8"))
            print(f"  matmul: bf16 {res['matmul_tflops']:.0f} TFLOP/s, fp8 {res['fp8_matmul_tflops'] or 0:.0f}, "
                  f"int8 {res['int8_matmul_tops'] or 0:.0f} TOP/s", flush=True)
            _guard(res, "attention", lambda: _attention_kernels(res, 3))
            if "routing_map" not in args.skip:
                _guard(res, "routing_map", lambda: pb.routing_map_part(res, reps, device))
        if not args.skip_golden:
            _guard(res, "golden", lambda: _golden(res, device, dtype, compiled=not smoke and not args.eager))
        fp8_rate = res.get("fp8_matmul_tflops")
        int8_rate = res.get("int8_matmul_tops")
        # bf16 model: eager reference, compiled 1 / 2 speakers, 720p, streaming.
        model = bl.build_model(cfg, device, dtype)
        if not smoke and args.eager_baseline:
            _guard(res, "bf16_480p_1spk_eager", lambda: _forward(res, "bf16_480p_1spk_eager", model, cfg, lat480, 1,
                                                                 dtype, 2, device))
        if not smoke and not args.eager:
            bl.compile_blocks(model)
        for key, lat, spk in (("bf16_480p_1spk", lat480, 1), ("bf16_480p_2spk", lat480, 2),
                              ("bf16_720p_1spk", lat720, 1)):
            if key in args.skip:
                continue
            _guard(res, key, lambda: _forward(res, key, model, cfg, lat, spk, dtype, reps, device))
            if key == "bf16_480p_1spk" and not smoke and "bf16_480p_1spk_b2" not in args.skip:
                _guard(res, "bf16_480p_1spk_b2", lambda: pb.batched_part(res, model, cfg, lat480, reps, device, dtype))
        if not smoke and args.stream_caps:
            _guard(res, "streaming", lambda: _streaming(res, model, cfg, reps, device, args.stream_caps))
        del model
        bl.free_cuda()
        # Quantized models (official quanto layout: per-row int8 / fp8 weights).
        for key, qdtype, rate in (("fp8_480p_1spk", torch.float8_e4m3fn, fp8_rate),
                                  ("int8_480p_1spk", torch.int8, int8_rate)):
            if key in args.skip:
                continue

            def quant_part(key=key, qdtype=qdtype, rate=rate):
                model = bl.build_model(cfg, device, torch.bfloat16 if not smoke else dtype)
                bl.quantize_model(model, qdtype)
                bl.free_cuda()
                if not smoke and not args.eager:
                    bl.compile_blocks(model)
                _forward(res, key, model, cfg, lat480, 1, dtype, reps, device, flops_rate=rate)
            _guard(res, key, quant_part)
    pb.step_times(res)
    return res


def _table(res: dict) -> str:
    lines = [f"card: {res['card']}  torch {res['torch']}  bf16 matmul {res['matmul_tflops'] or 0:.0f} TFLOP/s",
             f"{'config':34s} {'s/fwd':>8s} {'floor':>7s} {'MFU':>6s} {'peak GiB':>9s}"]
    for key, s in res["dit_forward_s"].items():
        floor, mfu = res["floor_s"].get(key), res["mfu"].get(key)
        lines.append(f"{key:34s} {s:8.3f} {floor or 0:7.3f} {100 * (mfu or 0):5.1f}% {res['peak_gib'].get(key, 0):9.1f}")
    for name, r in res["golden"].items():
        r = r.get("fast", r)
        lines.append(f"golden {name:27s} max_abs {r['max_abs']:.3g} rel_l2 {r['rel_l2']:.3g} pass={r['pass']}")
    r = res.get("routing_map")
    if r:
        lines.append(f"routing map per forward: fused {r['fused_s_per_forward']:.3f} s, fp32 reference "
                     f"{r['reference_s_per_forward']:.3f} s, max |dmap| {r['max_abs_map_diff']:.2e}, "
                     f"flips {r['argmax_flips']}, path {r['path']['last_path']}")
    for key, st in res.get("steps", {}).items():
        lines.append(f"step {key:29s} 3-pass {st['step_3pass_s']:.2f} s (unbatched {st['step_3pass_unbatched_s']:.2f}),"
                     f" 2-pass {st['step_2pass_s']:.2f} s")
    for name, err in res.get("errors", {}).items():
        lines.append(f"ERROR {name}: {err[:160]}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny config on the CPU, 1 repetition")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<card>.json)")
    p.add_argument("--reps", type=int, default=5, help="timed forwards per configuration (median)")
    p.add_argument("--eager", action="store_true", help="no torch.compile")
    p.add_argument("--eager-baseline", action="store_true", help="also time the eager bf16 480p forward")
    p.add_argument("--skip-golden", action="store_true")
    p.add_argument("--skip", nargs="*", default=[], help="configuration keys to leave out")
    p.add_argument("--partial", type=Path, help="rewrite this JSON after every part")
    p.add_argument("--stream-caps", type=int, nargs="*", default=[16, 8], help="GiB caps for block streaming")
    args = p.parse_args(argv)
    res = run(args)
    out = bl.write_results(res, args.out, "")
    print(_table(res))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
