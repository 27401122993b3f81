"""The GPU benchmarks run end to end in their tiny CPU smoke modes and write the expected keys
(no timing asserts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _smoke(script: str, out: Path, *args: str):
    """Run ``bench/<script>`` with ``--smoke --out out``; returns (module, results)."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCH / script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with torch.inference_mode(False):
        bench.main(["--smoke", *args, "--out", str(out)])
    return bench, json.loads(out.read_text())


def test_bench_smoke_writes_results(tmp_path):
    bench, res = _smoke("dit_forward.py", tmp_path / "smoke.json", "--skip-golden")
    for key in ("card", "torch", "matmul_tflops", "dit_forward_s", "peak_gib"):
        assert key in res
    assert set(bench.FORWARD_KEYS) <= set(res["dit_forward_s"])
    assert not res.get("errors"), res.get("errors")


def test_attention_bench_smoke(tmp_path):
    _, res = _smoke("attention_bench.py", tmp_path / "att.json")
    assert not res.get("errors"), res.get("errors")
    assert {"sdpa", "triton_int8_fp8"} <= set(res["golden"])   # our backends fall back to SDPA on the CPU
    assert {"bf16_480p_sdpa", "bf16_480p_triton_bf16"} <= set(res["dit_forward_s"])


def test_attention_choices_smoke(tmp_path):
    _, res = _smoke("attention_choices.py", tmp_path / "choices.json")
    assert not res.get("errors"), res.get("errors")
    from infinitetalk.models.attention import USER_CHOICES
    assert set(res["choices"]) == set(USER_CHOICES) - {"auto"}
    assert {"480p", "720p"} <= set(res["choices"]["sdpa"]) and res["choices"]["sdpa"]["480p"]["rel_l2"] < 1e-4
    assert "needs a CUDA GPU" in res["choices"]["int8"]["unavailable"]     # the CPU: a clear reason
    assert res["auto"]["backend"] == "sdpa"
