"""GPU smoke of the DiT exactly as the nodes load it: ``loaders.dit.load_dit`` on CUDA.

Needs CUDA. Run from the repository root: ``python3 bench/node_path_smoke.py [--out FILE]``.
Checks, against the golden fp32 reference ``out_t0`` (bars of bench/golden_check.py):
1. ``dit_single`` loaded by ``load_dit`` in bf16 on the GPU, eager and with ``compile_blocks()``
   (what ``INFINITETALK_COMPILE=1`` switches on);
2. the official quanto ``quant_int8`` / ``quant_fp8`` files loaded by ``load_dit`` (``QuantoLinear``),
   with the default weight-only path and with ``INFINITETALK_FAST_QUANT_MATMUL=1`` (W8A8 kernels),
   compared with the official quantized model's own output;
3. our Triton attention (``INFINITETALK_ATTENTION=int8`` / ``int8_fp8``, models/flash_attention.py)
   with its built-in launch options, forced on for every mask-free call (the fixtures are shorter
   than MIN_KEYS), compiled bf16 and with the W8A8 fp8 model.
Exit status 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_check as gc  # noqa: E402  (imports the pack as 'infinitetalk' through bench_lib)

from infinitetalk.models import quant_ops  # noqa: E402
from infinitetalk.loaders.dit import load_dit  # noqa: E402
from infinitetalk.models import attention as attn  # noqa: E402
from infinitetalk.models import flash_attention as fa  # noqa: E402


def _check(name: str, weights: str, compiled: bool = False, fast: bool = False, attention: str = "sdpa") -> dict:
    backend = attn.backend_for_choice(attention)
    fa.MIN_KEYS = 0 if backend != "sdpa" else 1024
    attn.set_backend(backend)
    torch._dynamo.reset()
    case, inputs, outputs = gc._case(name)
    os.environ[quant_ops.FAST_MATMUL_ENV] = "1" if fast else "0"
    model = load_dit(str(gc.GOLDEN / name / weights), dtype=torch.bfloat16, device="cuda",
                     config=case["config"]).eval()
    if compiled:
        model.compile_blocks()
    call = case.get("call") or case["calls"][0]
    call = {"t": call.get("t", "t0"), "context": call.get("context", "[context]"),
            "audio": call.get("audio", "audio")}
    with torch.inference_mode():
        out = gc._run(model, inputs, call, "cuda", torch.bfloat16)
    tol = (gc.FP8_MAX_ABS, gc.FP8_REL_L2) if (fast and name == "quant_fp8") else (gc.MAX_ABS, gc.REL_L2)
    result = gc._compare(out, outputs["out_t0"], *tol)
    result.update(case=name, compiled=compiled, fast_quant_matmul=fast, attention=backend, kernel=fa.status())
    attn.set_backend("sdpa")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [
        _check("dit_single", "weights.safetensors"),
        _check("dit_single", "weights.safetensors", compiled=True),
        _check("quant_int8", "weights.safetensors"),
        _check("quant_int8", "weights.safetensors", fast=True),
        _check("quant_fp8", "weights.safetensors"),
        _check("quant_fp8", "weights.safetensors", fast=True),
        _check("dit_single", "weights.safetensors", compiled=True, attention="int8"),
        _check("dit_single", "weights.safetensors", compiled=True, attention="int8_fp8"),
        _check("quant_fp8", "weights.safetensors", compiled=True, fast=True, attention="int8_fp8"),
    ]
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": results,
              "pass": all(r["pass"] for r in results)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    for r in results:
        print(f"{r['case']:12s} compiled={r['compiled']!s:5s} fast={r['fast_quant_matmul']!s:5s} {r['attention']:16s} "
              f"max_abs={r['max_abs']:.4f} rel_l2={r['rel_l2']:.2e} pass={r['pass']}")
    print("NODE PATH SMOKE:", "PASS" if report["pass"] else "FAIL")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
