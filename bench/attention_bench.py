"""Attention kernels at the DiT's shapes, and the DiT forward with each (one GPU).

    python bench/attention_bench.py --out $OUT/attention-<card>.json   # on the GPU machine
    python bench/attention_bench.py --smoke --out X                    # CPU: tiny shapes, 1 rep (tests)

Parts (each guarded: one failure is recorded and the rest goes on):
1. ``kernels`` — self-attention at 480p (32,760 tokens) and 720p (75,600), 40 heads × 128, q/k/v as
   the model passes them (transposed views of [B, L, H, D]): SDPA cuDNN / flash, and our Triton
   kernels (models/flash_attention.py) bf16 / int8 / int8_fp8, autotuned; TFLOP/s with the
   quantization pre-pass included, and the pre-pass alone.
2. ``accuracy`` — each kernel against fp32 attention on the same inputs (a slice of 2,048 queries, all
   keys): relative L2 and max abs; inputs with spread-out and with peaked attention.
3. ``golden`` — the tiny golden DiT (dit_single, dit_multi, quant_fp8 W8A8) on the GPU in bf16 with
   each attention backend against the official fp32 outputs (the kernel forced on for every
   mask-free call: MIN_KEYS = 0).
4. ``forward`` — the full-size DiT (random weights, compiled blocks) at 480p (and 720p) with each
   backend; the fp8 W8A8 model with int8_fp8 attention; median s/forward (CUDA events).
5. ``gaps`` — torch.profiler over one compiled bf16 480p forward: summed GPU kernel time against wall
   time (the most CUDA graphs could save).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
import golden_check as gck  # noqa: E402
from dit_forward import _forward, _guard  # noqa: E402  (the main bench's timing and part guard)
from infinitetalk.models import attention as attn  # noqa: E402
from infinitetalk.models import flash_attention as fa  # noqa: E402

MODES = tuple(fa.MODES)  # bf16, int8, int8_fp8


def _qkv(tokens, heads, d, device, seed=0, peaked=False):
    """q, k, v as [B, H, L, D] views of [B, L, H, D] (the model's layout); ``peaked`` sharpens q."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(3):
        t = torch.randn(1, tokens, heads, d, generator=g)
        if i == 0 and peaked:
            t = t * 4.0
        if i == 1:
            t = t + 0.5 * torch.randn(1, 1, heads, d, generator=g)  # a shared key offset, as trained keys have
        out.append(t.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).transpose(1, 2))
    return out


def _time(fn, reps, device):
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    med, _, _ = bl.time_cuda(fn, reps, warmup=2)
    return med


def kernels(res, device, reps, shapes):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out = res["kernels"] = {}
    for label, tokens, heads, d in shapes:
        q, k, v = _qkv(tokens, heads, d, device)
        flops = 4 * tokens * tokens * d * heads
        row = out[label] = {"tokens": tokens, "pflop": flops / 1e15}
        if device.type == "cuda":
            for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
                try:
                    with sdpa_kernel(backend):
                        s = _time(lambda: F.scaled_dot_product_attention(q, k, v), reps, device)
                    row[name] = {"s": s, "tflops": flops / s / 1e12}
                except RuntimeError as err:
                    row[name] = {"error": str(err)[:200]}
        for mode in MODES:
            try:
                s = _time(lambda: fa.launch(q, k, v, mode), reps, device)
                pre = _time(lambda: fa.prepare(q, k, v, mode), reps, device) if mode != "bf16" else 0.0
                cfg = None
                kern = fa._kernels()[0]
                if getattr(kern, "cache", None):
                    cfg = {str(key): str(c) for key, c in kern.cache.items()}
                row[f"triton_{mode}"] = {"s": s, "tflops": flops / s / 1e12, "prepass_s": pre,
                                         "kernel_tflops": flops / max(s - pre, 1e-9) / 1e12, "autotune": cfg}
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                row[f"triton_{mode}"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(f"  {label}: " + ", ".join(f"{n} {r.get('tflops', 0):.0f}" for n, r in row.items() if isinstance(r, dict)),
              flush=True)
        del q, k, v


def sweep(res, device, reps, modes=MODES, tokens=32760, heads=40, d=128, n_configs=7, warp_spec=(False,)):
    """Every mode × (pointer / TMA loads) × (warp-specialized or not) × the first ``n_configs``
    autotuning candidates at the 480p shape, kernel only (operands prepared once); and the pre-pass
    eager and compiled."""
    from infinitetalk.models import flash_attention_kernel as fk
    out = res["sweep"] = {}
    q, k, v = _qkv(tokens, heads, d, device)
    flops = 4 * tokens * tokens * d * heads
    for mode in modes:
        prepared = fa.prepare(q, k, v, mode)
        row = out[mode] = {}
        if mode != "bf16":
            row["prepass_eager_s"] = _time(lambda: fa.prepare(q, k, v, mode), reps, device)
            compiled = torch.compile(fa.prepare, dynamic=False)
            row["prepass_compiled_s"] = _time(lambda: compiled(q, k, v, mode), reps, device)
        for tma in (False, True):
            for ws in warp_spec:
                for bm, bn, warps, stages in fk.CANDIDATES[:n_configs]:
                    name = f"{'tma' if tma else 'ptr'}{'_ws' if ws else ''}_{bm}x{bn}_w{warps}_s{stages}"
                    try:
                        s = _time(lambda: fa.run_prepared(*prepared, mode, q.dtype, use_tma=tma, warp_spec=ws,
                                                          BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
                                                          num_stages=stages), reps, device)
                        row[name] = round(flops / s / 1e12, 1)
                    except Exception as err:  # noqa: BLE001
                        row[name] = f"{type(err).__name__}: {err}"[:160]
        best = max((n for n, t in row.items() if isinstance(t, float) and not n.startswith("prepass")),
                   key=lambda n: row[n], default=None)
        print(f"  sweep {mode}: best {best} {row.get(best)} TFLOP/s; prepass {row.get('prepass_eager_s', 0):.4f} s eager, "
              f"{row.get('prepass_compiled_s', 0):.4f} s compiled", flush=True)
        print("   ", {n: t for n, t in row.items()}, flush=True)
        if best:  # pin the fastest for the later parts of this run (models/flash_attention.TUNING)
            cfg = re.match(r"(ptr|tma)(_ws)?_(\d+)x(\d+)_w(\d+)_s(\d+)", best).groups()
            fa.TUNING[mode] = {"use_tma": cfg[0] == "tma", "warp_spec": bool(cfg[1]), "BLOCK_M": int(cfg[2]),
                               "BLOCK_N": int(cfg[3]), "num_warps": int(cfg[4]), "num_stages": int(cfg[5])}
            res.setdefault("tuning", {})[mode] = {"name": best, "tflops": row[best], **fa.TUNING[mode]}
        del prepared


def accuracy(res, device, tokens, heads, d, nq):
    out = res["accuracy"] = {}
    for peaked in (False, True):
        q, k, v = _qkv(tokens, heads, d, device, seed=1, peaked=peaked)
        qs = q[:, :, :nq]
        ref = torch.cat([F.scaled_dot_product_attention(qs[:, h:h + 1].float(), k[:, h:h + 1].float(),
                                                        v[:, h:h + 1].float()) for h in range(heads)], 1)
        probs = torch.softmax(qs[:, :1].float() @ k[:, :1].float().transpose(-2, -1) * d ** -0.5, -1)
        row = out["peaked" if peaked else "spread"] = {"mean_max_prob_head0": probs.amax(-1).mean().item()}
        cands = {"sdpa_bf16": lambda: F.scaled_dot_product_attention(qs, k, v)}
        for mode in MODES:
            cands[f"triton_{mode}"] = lambda mode=mode: fa.launch(qs, k, v, mode)
        for name, fn in cands.items():
            try:
                o = fn().float()
                diff = o - ref
                row[name] = {"rel_l2": (diff.norm() / ref.norm()).item(), "max_abs": diff.abs().max().item(),
                             "cos": F.cosine_similarity(o.flatten(), ref.flatten(), 0).item()}
            except Exception as err:  # noqa: BLE001
                row[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(f"  accuracy {'peaked' if peaked else 'spread'}: " +
              ", ".join(f"{n} {r['rel_l2']:.2e}" for n, r in row.items() if isinstance(r, dict) and "rel_l2" in r),
              flush=True)


def golden(res, device):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = res["golden"] = {}
    saved = fa.MIN_KEYS
    fa.MIN_KEYS = 0
    try:
        for backend in ("sdpa",) + tuple(f"triton_{m}" for m in MODES):
            attn.set_backend(backend)
            r = out[backend] = {}
            for name in ("dit_single", "dit_multi"):
                r[name] = gck.check_float(name, device, dtype, False)
            r["quant_fp8_w8a8"] = gck.check_quant("quant_fp8", device, dtype, False)["fast"]
            r["path"] = fa.status()
            print(f"  golden {backend}: " + ", ".join(f"{n} {v['max_abs']:.3f}/{v['rel_l2']:.2e}"
                                                     for n, v in r.items() if n != "path"), flush=True)
    finally:
        attn.set_backend("sdpa")
        fa.MIN_KEYS = saved


def forward(res, device, reps, cfg, latents, configs):
    for key in ("dit_forward_s", "peak_gib", "floor_s", "mfu", "detail"):
        res.setdefault(key, {})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for model_kind in ("bf16", "fp8"):
        wanted = [c for c in configs if c[0] == model_kind]
        if not wanted:
            continue
        model = bl.build_model(cfg, device, dtype)
        if model_kind == "fp8":
            bl.quantize_model(model, torch.float8_e4m3fn)
        if device.type == "cuda":
            bl.compile_blocks(model)
        for _, backend, res_key in wanted:
            key = f"{model_kind}_{res_key}_{backend}"

            def part(backend=backend, res_key=res_key, key=key):
                attn.set_backend(backend)
                if device.type == "cuda":
                    torch._dynamo.reset()  # each backend compiles its own block graph
                try:
                    _forward(res, key, model, cfg, latents[res_key], 1, dtype, reps, device,
                             flops_rate=res.get("fp8_matmul_tflops") if model_kind == "fp8" else None)
                    res["detail"][key]["attention_path"] = fa.status()
                finally:
                    attn.set_backend("sdpa")
            _guard(res, key, part)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def gaps(res, device, cfg, latent):
    from torch.profiler import ProfilerActivity, profile
    model = bl.build_model(cfg, device, torch.bfloat16)
    bl.compile_blocks(model)
    inp = bl.make_inputs(cfg, latent, 1, device, torch.bfloat16)
    bl.call(model, inp)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = bl.cuda_seconds(lambda: bl.call(model, inp))
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in events) / 1e6  # µs -> s (kernels and copies; no overlap on one stream)
    top = {}
    for e in events:
        top[e.name[:60]] = top.get(e.name[:60], 0.0) + e.device_time / 1e6
    res["gaps"] = {"wall_s": wall, "gpu_busy_s": busy, "idle_s": wall - busy, "kernels": len(events),
                   "top": dict(sorted(top.items(), key=lambda kv: -kv[1])[:15])}
    print(f"  gaps: wall {wall:.3f} s, GPU busy {busy:.3f} s, idle {wall - busy:.3f} s, {len(events)} kernels", flush=True)


def run(args) -> dict:
    smoke = args.smoke
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    reps = 1 if smoke else args.reps
    card = "cpu-smoke" if smoke else torch.cuda.get_device_name(device)
    res = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "command": " ".join(sys.argv),
           "_partial": str(args.partial) if args.partial else None}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = dict(bl.WanModel(**bl.TINY_CONFIG, device="meta").config if smoke else bl.WanModel(device="meta").config)
    latents = {"480p": (3, 8, 12), "720p": (3, 12, 16)} if smoke else {"480p": (21, 60, 104), "720p": (21, 90, 160)}
    shapes = [("480p", 96, 2, 32)] if smoke else [("480p", 32760, 40, 128), ("720p", 75600, 40, 128)]
    with torch.inference_mode():
        if not smoke:
            res["matmul_tflops"] = bl.matmul_rate("bf16")
            res["fp8_matmul_tflops"] = bl.matmul_rate("fp8")
        if "sweep" in args.parts and not smoke:
            _guard(res, "sweep", lambda: sweep(res, device, reps, args.sweep_modes))
        if "kernels" in args.parts and not smoke:  # Triton needs a GPU (the CPU test uses the interpreter)
            _guard(res, "kernels", lambda: kernels(res, device, reps, shapes))
        if "accuracy" in args.parts and not smoke:
            _guard(res, "accuracy", lambda: accuracy(res, device, 32760, 40, 128, 2048))
        if "golden" in args.parts:
            _guard(res, "golden", lambda: golden(res, device))
        if "forward" in args.parts:
            configs = [(*pair.split(":"), "480p") for pair in args.forward_480p]
            configs += [("bf16", b, "720p") for b in args.backends_720p]
            if smoke:
                configs = [("bf16", "sdpa", "480p"), ("bf16", "triton_bf16", "480p")]
            _guard(res, "forward", lambda: forward(res, device, reps, cfg, latents, configs))
        if "gaps" in args.parts and not smoke:
            _guard(res, "gaps", lambda: gaps(res, device, cfg, latents["480p"]))
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 1 repetition")
    p.add_argument("--out", type=Path)
    p.add_argument("--partial", type=Path, help="rewrite this JSON after every part")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--parts", nargs="*", default=["sweep", "kernels", "accuracy", "golden", "forward", "gaps"])
    p.add_argument("--sweep-modes", nargs="*", default=list(MODES))
    p.add_argument("--forward-480p", nargs="*", default=["bf16:sdpa"] + [f"bf16:triton_{m}" for m in MODES]
                   + ["fp8:sdpa", "fp8:triton_int8", "fp8:triton_int8_fp8"], help="model:backend pairs")
    p.add_argument("--backends-720p", nargs="*", default=["sdpa", "triton_int8_fp8"])
    args = p.parse_args(argv)
    res = run(args)
    out = bl.write_results(res, args.out, "attention-")
    for key, s in res.get("dit_forward_s", {}).items():
        print(f"{key:40s} {s:8.3f} s")
    for name, err in res.get("errors", {}).items():
        print(f"ERROR {name}: {err[:200]}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
