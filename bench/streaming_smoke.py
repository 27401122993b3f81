"""GPU smoke test of memory_budget_gb streaming: streamed DiT == resident DiT, unload frees the GPU.

Needs CUDA. Run on the device, from the repository root (``.host`` carried for part 2):

    python3 bench/streaming_smoke.py            # exit status 0 = every check passed

1. ``loaders.streaming.StreamedDiT`` with the real ``BlockStreamer``, for the golden ``dit_single``
   tiny DiT (2 blocks) and a 6-block tiny DiT, in fp32 (TF32 off) and bf16: three cycles of
   load -> forward -> offload. Every streamed forward must equal the resident model's output
   (same kernels on the same weights: expected bit-equal; pass at max abs <= 1e-6 fp32 / 1e-3 bf16
   in case a kernel picks another algorithm for other addresses). After each offload: no GPU memory
   left (allocated back to the baseline), block tensors on pinned CPU memory, and the offloaded
   model still runs on the CPU (fp32 only; compared with the GPU output at rel L2 <= 1e-4).
   The golden case is also compared with its fp32 reference output (bar of bench/golden_check.py).
2. If ``.host/ComfyUI`` is here: the same through the host — ``loaders.managed_dit.wrap_model(host, ...,
   streaming=True)``, ``load_for_sampling`` (the host's ``load_models_gpu``), forward, then
   ``comfy.model_management.unload_all_models()`` (what /free does) and load again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lib import ROOT, TINY_CONFIG, WanModel  # noqa: E402  (imports the pack as 'infinitetalk')
import golden_check as gc  # noqa: E402

from infinitetalk.loaders.streaming import StreamedDiT, streamed_gpu_bytes, weight_bytes  # noqa: E402

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3}
MIB = 2**20


def _golden_model():
    case, inputs, outputs = gc._case("dit_single")
    from safetensors.torch import load_file
    model = WanModel(**case["config"]).eval().requires_grad_(False)
    sd = load_file(str(gc.GOLDEN / "dit_single" / case.get("weights_file", "weights.safetensors")))
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    call = case["calls"][0]
    return model, inputs, call, outputs[call["output"]]


def _random_model(layers: int):
    """A tiny DiT with more blocks than slots, fed the golden inputs (same dims as dit_single)."""
    torch.manual_seed(0)
    model, inputs, call, _ref = _golden_model()
    cfg = {**model.config, "num_layers": layers}
    big = WanModel(**cfg).eval().requires_grad_(False)
    sd = model.state_dict()
    for k, v in big.state_dict().items():
        src = sd.get(k if not k.startswith("blocks.") else "blocks.%d.%s" % (
            int(k.split(".")[1]) % len(model.blocks), k.split(".", 2)[2]))
        with torch.no_grad():
            v.copy_(src + 0.01 * torch.randn_like(src) if src.is_floating_point() else src)
    return big, inputs, call


def _forward(model, inputs, call, device, dtype):
    with torch.inference_mode():
        out = gc._run(model, inputs, call, device, dtype)
    torch.cuda.synchronize() if device.type == "cuda" else None
    return out.float().cpu()


def _diff(a, b):
    d = (a - b).abs().max().item()
    return d, ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_streamed(name, model, inputs, call, dtype, device, reference=None) -> dict:
    res = {"case": name, "dtype": str(dtype), "blocks": len(model.blocks), "pass": True, "cycles": []}
    model.to(dtype=dtype)
    res["weights_mib"] = weight_bytes(model) / MIB
    res["streamed_gpu_mib_estimate"] = streamed_gpu_bytes(model) / MIB
    resident = _forward(model.to(device), inputs, call, device, dtype)
    if reference is not None:
        res["resident_vs_golden"] = gc._compare(resident, reference)
    model.to("cpu")
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    streamed = StreamedDiT(model, torch.device("cpu"))
    for cycle in range(3):
        torch.cuda.reset_peak_memory_stats(device)
        streamed.load(device)
        loaded = torch.cuda.memory_allocated(device) - baseline
        out = _forward(model, inputs, call, device, dtype)
        max_abs, rel = _diff(out, resident)
        ok = bool(max_abs <= TOL[dtype])
        streamed.offload()
        left = torch.cuda.memory_allocated(device) - baseline
        blocks_pinned = all(t.device.type == "cpu" and t.is_pinned()
                            for t in list(model.blocks.parameters()) + list(model.blocks.buffers()))
        rest_cpu = all(p.device.type == "cpu" for p in model.parameters())
        c = {"cycle": cycle, "equal": bool(torch.equal(out, resident)), "max_abs": max_abs, "rel_l2": rel,
             "gpu_mib_loaded": loaded / MIB, "gpu_mib_left_after_offload": left / MIB,
             "blocks_pinned_after_offload": blocks_pinned, "all_on_cpu_after_offload": rest_cpu}
        ok = ok and left <= MIB and blocks_pinned and rest_cpu
        if dtype == torch.float32 and cycle == 0:
            cpu_out = _forward(model, inputs, call, torch.device("cpu"), dtype)
            c["cpu_after_offload_rel_l2"] = _diff(cpu_out, resident)[1]
            ok = ok and c["cpu_after_offload_rel_l2"] <= 1e-4
        c["pass"] = ok
        res["cycles"].append(c)
        res["pass"] = res["pass"] and ok
    return res


def check_host(device) -> dict:
    host_root = ROOT / ".host" / "ComfyUI"
    if not (host_root / "comfy" / "model_management.py").exists():
        return {"skipped": ".host/ComfyUI not here (carry .host to run this part)"}
    sys.path.insert(0, str(host_root))
    import comfy.model_management as mm              # default args: the GPU, smart memory
    from infinitetalk.loaders import host, managed_dit
    model, inputs, call = _random_model(6)
    resident = _forward(model.to(device), inputs, call, device, torch.float32)
    model.to("cpu")
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    wrapped = managed_dit.wrap_model(host, model, "InfiniteTalk", torch.float32, 1e-3, streaming=True)
    res = {"patcher": type(wrapped.patcher).__name__, "model_size_mib": wrapped.patcher.model_size() / MIB,
           "runs": []}
    ok = True
    for cycle in range(2):
        dit = managed_dit.load_for_sampling(wrapped)
        out = _forward(dit, inputs, call, device, torch.float32)
        max_abs, _ = _diff(out, resident)
        mm.unload_all_models()                      # what /free does (and another model needing VRAM)
        left = torch.cuda.memory_allocated(device) - baseline
        run = {"max_abs": max_abs, "gpu_mib_left_after_unload": left / MIB,
               "streaming_loaded_after_unload": wrapped.patcher.streamed.loaded}
        run["pass"] = max_abs <= TOL[torch.float32] and left <= MIB and not run["streaming_loaded_after_unload"]
        ok = ok and run["pass"]
        res["runs"].append(run)
    res["pass"] = ok
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("streaming_smoke: needs a CUDA GPU")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda", torch.cuda.current_device())
    results = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__, "checks": []}
    for dtype in (torch.float32, torch.bfloat16):
        model, inputs, call, ref = _golden_model()
        results["checks"].append(check_streamed("dit_single", model, inputs, call, dtype, device,
                                                ref if dtype == torch.float32 else None))
        model, inputs, call = _random_model(6)
        results["checks"].append(check_streamed("tiny_6_blocks", model, inputs, call, dtype, device))
    results["host"] = check_host(device)
    ok = all(c["pass"] for c in results["checks"]) and results["host"].get("pass", True)
    results["pass"] = ok
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print("STREAMING SMOKE:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
