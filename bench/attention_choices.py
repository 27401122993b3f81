"""Every attention choice of the Model Loader at the DiT's self-attention shapes (one GPU).

    python bench/attention_choices.py --out $OUT/attention-choices-<card>.json   # on the GPU machine
    python bench/attention_choices.py --smoke --out X                            # CPU: tiny shapes (tests)

For each choice (models.attention.USER_CHOICES but auto) that resolves here
(models.attention_backends.resolve: installed, and its test call matches SDPA), the backend the
loader would run — adapter, layout conversion and any quantization pre-pass included — at the
Wan2.1-14B self-attention shapes, 40 heads x 128, q/k/v as the model passes them (transposed views
of [B, L, H, D]) in bf16:

* 480p, 81 frames: L = 21*30*52 = 32,760 tokens; 720p, 81 frames: L = 21*45*80 = 75,600 tokens;
* ``s`` (median, CUDA events) and ``tflops`` = 4·L²·D·H / s;
* ``rel_l2`` / ``max_abs`` against fp32 SDPA on the first 2,048 queries (all keys).

A choice that does not resolve is recorded with its error message (what to install). ``auto``
records which choice it picks here: the order in models/attention_backends.AUTO_ORDER should follow
these numbers. ``comfy`` is measured when ComfyUI's ``comfy`` package is importable (its default
attention, i.e. what the host runs without --use-*-attention flags).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
from dit_forward import _guard  # noqa: E402  (one failing part must not lose the others)
from infinitetalk.models import attention as attn  # noqa: E402
from infinitetalk.models import attention_backends as ab  # noqa: E402

HEADS, HEAD_DIM = 40, 128
SHAPES = {"480p": 21 * 30 * 52, "720p": 21 * 45 * 80}
SMOKE_SHAPES = {"480p": 300, "720p": 520}
CHECK_QUERIES = 2048


def _qkv(tokens: int, heads: int, d: int, device, dtype, seed: int = 0):
    """q, k, v as [B, H, L, D] views of [B, L, H, D]; keys share an offset as trained keys do."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(1, tokens, heads, d, generator=g) for _ in range(3))
    k = k + 0.5 * torch.randn(1, 1, heads, d, generator=g)
    return [t.to(device=device, dtype=dtype).transpose(1, 2) for t in (q, k, v)]


def _time(fn, reps: int, device) -> float:
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return bl.time_cuda(fn, reps, warmup=2)[0]


def _host_attention() -> bool:
    """Offer ComfyUI's default attention as ``comfy`` where the host package imports."""
    try:
        import comfy.ldm.modules.attention as host_attention
    except Exception:  # noqa: BLE001 - no host here (or it fails to import): comfy is not measured
        return False
    ab.set_host_attention(lambda: host_attention.optimized_attention)
    return True


def measure(res: dict, choice: str, device, shapes: dict, reps: int, heads: int, d: int) -> None:
    try:
        resolved = ab.resolve(choice, device)
    except ValueError as err:
        res["choices"][choice] = {"unavailable": str(err)}
        print(f"  {choice}: unavailable ({str(err)[:120]})", flush=True)
        return
    fn = attn._BACKENDS[resolved.backend]
    row = res["choices"][choice] = {"label": resolved.label, "backend": resolved.backend}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name, tokens in shapes.items():
        q, k, v = _qkv(tokens, heads, d, device, dtype)
        flops = 4 * tokens * tokens * d * heads
        s = _time(lambda: fn(q, k, v, None), reps, device)
        n = min(CHECK_QUERIES, tokens)
        out = fn(q, k, v, None)[:, :, :n].float()
        ref = F.scaled_dot_product_attention(q[:, :, :n].float(), k.float(), v.float())
        row[name] = {"tokens": tokens, "s": s, "tflops": flops / s / 1e12,
                     "rel_l2": ((out - ref).norm() / ref.norm()).item(), "max_abs": (out - ref).abs().max().item()}
        del q, k, v, out, ref
        print(f"  {choice} {name}: {row[name]['tflops']:.0f} TFLOP/s, rel L2 {row[name]['rel_l2']:.2e}", flush=True)


def run(args) -> dict:
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    card = "cpu-smoke" if smoke else torch.cuda.get_device_name(device)
    res = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "command": " ".join(sys.argv),
           "heads": HEADS, "head_dim": HEAD_DIM, "choices": {}, "_partial": args.partial,
           "auto_order": list(ab.AUTO_ORDER)}
    shapes = SMOKE_SHAPES if smoke else SHAPES
    heads, d = (2, 32) if smoke else (HEADS, HEAD_DIM)
    reps = 1 if smoke else args.reps
    if not _host_attention():
        res["comfy"] = "ComfyUI's comfy package does not import here: comfy not measured"
    for choice in args.choices:
        _guard(res, choice, lambda c=choice: measure(res, c, device, shapes, reps, heads, d))
    def pick_auto():
        found = ab.resolve("auto", device)
        res["auto"] = {"backend": found.backend, "label": found.label}
    _guard(res, "auto", pick_auto)
    attn.set_backend("sdpa")
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 1 repetition")
    p.add_argument("--out", type=Path)
    p.add_argument("--partial", type=Path, help="rewrite this JSON after every choice")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--choices", nargs="*", default=[c for c in attn.USER_CHOICES if c != "auto"])
    args = p.parse_args(argv)
    res = run(args)
    out = bl.write_results(res, args.out, "attention-choices-")
    print(f"{'choice':20s} {'480p TFLOP/s':>13s} {'720p TFLOP/s':>13s} {'rel L2 480p':>12s}  label")
    for choice, row in res["choices"].items():
        if "unavailable" in row:
            print(f"{choice:20s} unavailable: {row['unavailable'][:100]}")
            continue
        r480, r720 = row.get("480p", {}), row.get("720p", {})
        print(f"{choice:20s} {r480.get('tflops', 0):13.0f} {r720.get('tflops', 0):13.0f} "
              f"{r480.get('rel_l2', float('nan')):12.2e}  {row['label']}")
    print(f"auto picks: {res.get('auto')}")
    for name, err in res.get("errors", {}).items():
        print(f"ERROR {name}: {err[:200]}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
