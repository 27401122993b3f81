"""Our Triton attention (models/flash_attention.py): the kernel's arithmetic on the CPU through
Triton's interpreter (every mode, pointer and TMA loads, partial and whole key tiles), the operand
preparation, the backend dispatch and the user's choice. GPU speed/accuracy: bench/attention_bench.py
(its CPU smoke: tests/test_bench_smoke.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from infinitetalk.models import attention
from infinitetalk.models import flash_attention as fa

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: TRITON_INTERPRET must be set before Triton compiles anything.
# The interpreter's bf16 dot is broken (numpy has no bf16), so the "bf16" mode runs on fp32 and fp16
# inputs, the int8 modes on fp16 (same kernel code; the dtype only changes the P·V operand).
_SCRIPT = r"""
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("infinitetalk", {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["infinitetalk"] = pack; spec.loader.exec_module(pack)
from infinitetalk.models import flash_attention as fa
g = torch.Generator().manual_seed(0)
out = []
for dtype, mode in ((torch.float32, "bf16"), (torch.float16, "bf16"), (torch.float16, "int8"),
                    (torch.float16, "int8_fp8")):
    # [B, L, H, D] transposed to [B, H, L, D], as the model passes them; a shared key offset.
    q, k, v = (torch.randn(2, 100, 2, 64, generator=g).transpose(1, 2) for _ in range(3))
    q, k, v = (q * 2).to(dtype), (k + 3).to(dtype), (v + 0.5).to(dtype)
    for lk in (90, 96):                         # a partial last key tile / whole tiles only (BLOCK_N 32)
        for tma in (False, True):
            o = fa.launch(q, k[:, :, :lk], v[:, :, :lk], mode, use_tma=tma, BLOCK_M=32, BLOCK_N=32,
                          num_warps=4, num_stages=2).float()
            exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k[:, :, :lk].float(), v[:, :, :lk].float())
            ref = fa.reference(q, k[:, :, :lk], v[:, :, :lk], mode).float()
            out.append({{"dtype": str(dtype), "mode": mode, "lk": lk, "tma": tma, "shape": list(o.shape),
                        "vs_exact": ((o - exact).norm() / exact.norm()).item(),
                        "vs_reference": ((o - ref).norm() / exact.norm()).item(),
                        "reference_vs_exact": ((ref - exact).norm() / exact.norm()).item()}})
print(json.dumps(out))
"""


def test_kernel_in_triton_interpreter():
    pytest.importorskip("triton")
    script = _SCRIPT.format(init=str(ROOT / "__init__.py"), root=str(ROOT))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 16
    for r in rows:
        assert r["shape"] == [2, 2, 100, 64]
        if r["mode"] == "bf16":     # exact up to the input dtype's rounding of P
            assert r["vs_exact"] < (1e-5 if "float32" in r["dtype"] else 1e-3), r
        elif r["mode"] == "int8":   # the kernel is the reference arithmetic; int8 q/k cost ~1 %
            assert r["vs_reference"] < 1e-3 and r["vs_exact"] < 3e-2, r
        else:                       # fp8 P·V: P rounded against the running max, so only close to the reference
            assert r["vs_exact"] < 6e-2 and r["reference_vs_exact"] < 6e-2, r


def test_prepare_int8_fp8_operands():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 3, 50, 32, generator=g) for _ in range(3))
    q_, qs, k_, ks, v_, vs = fa.prepare(q, k + 5.0, v + 2.0, "int8_fp8")
    assert q_.dtype == k_.dtype == torch.int8 and v_.dtype == torch.float8_e4m3fn
    assert qs.shape == (1, 3, 50) and ks.shape == (1, 3, 50)
    assert v_.shape == (1, 3, 32, 64)            # [B, H, D, Lk] with Lk padded to a multiple of 16
    assert v_[..., 50:].float().abs().max() == 0
    assert vs.shape == (1, 3, 2, 32)             # (scale, mean) per channel
    torch.testing.assert_close(vs[:, :, 1], (v + 2.0).mean(2))
    # the key offset is removed before quantizing (softmax-invariant): the int8 scores stay accurate
    exact = F.scaled_dot_product_attention(q, k + 5.0, v + 2.0)
    for mode, tol in (("int8", 2e-2), ("int8_fp8", 6e-2)):
        ref = fa.reference(q, k + 5.0, v + 2.0, mode)
        assert ((ref - exact).norm() / exact.norm()).item() < tol, mode


def test_backends_fall_back_to_sdpa_on_cpu():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 1500, 32, generator=g) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    try:
        for name in ("triton_bf16", "triton_int8", "triton_int8_fp8"):
            attention.set_backend(name)
            torch.testing.assert_close(attention.attention(q, k, v), exact)
    finally:
        attention.set_backend("sdpa")


def test_user_choice():
    assert attention.backend_for_choice(None) == "sdpa"
    assert attention.backend_for_choice(" INT8 ") == "triton_int8"
    assert attention.backend_for_choice("int8_fp8") == "triton_int8_fp8"
    with pytest.raises(ValueError, match="INFINITETALK_ATTENTION='sage'.*sdpa, int8, int8_fp8"):
        attention.backend_for_choice("sage")


def test_tma_reading_of_layouts():
    x = torch.zeros(2, 100, 4, 64)                        # the model's [B, L, H, D], seen as [B, H, L, D]
    assert fa._tma_ok(x.transpose(1, 2), 4 * 64, 64)
    assert fa._tma_ok(torch.zeros(2, 4, 100, 64), 64, 64)  # contiguous [B, H, L, D]
    padded = torch.zeros(2, 100, 4, 72)[..., :64].transpose(1, 2)  # heads inside a 288-wide row
    assert fa._tma_ok(padded, 4 * 72, 64)
    overlapping = torch.zeros(10000).as_strided((1, 4, 50, 64), (4000, 32, 64, 1))  # heads cross rows
    assert not fa._tma_ok(overlapping, 64, 64)
    unaligned = torch.zeros(2, 3, 64, 40, dtype=torch.float8_e4m3fn)  # 40-byte rows: not 16-byte aligned
    assert not fa._tma_ok(unaligned, 40, 40)
