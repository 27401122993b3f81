"""The GPU benchmarks run end to end in their tiny CPU smoke modes and write real measurements: every
time a finite positive number, every configuration present (no timing bounds)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.golden      # the benchmarks run the tiny DiT (tier: tests/conftest.py)


def _seconds(table: dict, keys) -> None:
    """Each of ``keys`` is in ``table`` with a finite, positive time."""
    for key in keys:
        value = table[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{key}: {value!r}"


def _golden_row(row: dict) -> None:
    assert row["pass"] is True, row
    assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("max_abs", "rel_l2")), row
    assert row["max_abs"] <= row["tol"][0] and row["rel_l2"] <= row["tol"][1], row


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
    assert not res.get("errors"), res.get("errors")
    assert set(bench.FORWARD_KEYS) <= set(res["dit_forward_s"])
    _seconds(res["dit_forward_s"], bench.FORWARD_KEYS)
    assert set(res["peak_gib"]) == set(res["dit_forward_s"])
    assert all(math.isfinite(v) and v >= 0 for v in res["peak_gib"].values()), res["peak_gib"]


def test_attention_bench_smoke(tmp_path):
    _, res = _smoke("attention_bench.py", tmp_path / "att.json")
    assert not res.get("errors"), res.get("errors")
    assert {"sdpa", "triton_int8_fp8"} <= set(res["golden"])   # our backends fall back to SDPA on the CPU
    for backend, rows in res["golden"].items():
        for case in ("dit_single", "dit_multi", "quant_fp8_w8a8"):
            _golden_row(rows[case])
    _seconds(res["dit_forward_s"], ("bf16_480p_sdpa", "bf16_480p_triton_bf16"))


def test_attention_choices_smoke(tmp_path):
    _, res = _smoke("attention_choices.py", tmp_path / "choices.json")
    assert not res.get("errors"), res.get("errors")
    from infinitetalk.models.attention import USER_CHOICES
    assert set(res["choices"]) == set(USER_CHOICES) - {"auto"}
    assert {"480p", "720p"} <= set(res["choices"]["sdpa"]) and res["choices"]["sdpa"]["480p"]["rel_l2"] < 1e-4
    for size in ("480p", "720p"):
        row = res["choices"]["sdpa"][size]
        _seconds(row, ("s", "tflops"))
        assert row["tokens"] > 0 and math.isfinite(row["rel_l2"]) and math.isfinite(row["max_abs"]), row
    assert "needs a CUDA GPU" in res["choices"]["int8"]["unavailable"]     # the CPU: a clear reason
    assert res["auto"]["backend"] == "sdpa"


def test_multi_gpu_smoke(tmp_path):
    """1 vs 2 gloo workers on the tiny DiT: the record's keys, finite values, 2 workers == 1 device."""
    import pytest
    pytest.importorskip("ray", reason="the multi-GPU benchmark needs Ray (pip install ray; in the CI lock)")
    _, res = _smoke("multi_gpu.py", tmp_path / "multi.json", "--cache", str(tmp_path / "cache"))
    assert not res["errors"], res["errors"]
    assert res["gpus_measured"] == [1, 2]
    assert set(res["speedup"]) == {"2", "4", "8"} and res["speedup"]["4"] is None
    assert "fast_window_s_8gpu" in res and res["fast_window_s_8gpu"] is None   # no 8 workers in the smoke
    numbers = [res["speedup"]["2"], res["max_abs_vs_1gpu"], *res["fast_window_dit_s"].values(),
               *res["startup_s"]["2"], *(s for per in (*res["forward_s"].values(), *res["step_s"].values())
                                         for s in per.values())]
    assert all(math.isfinite(v) for v in numbers), numbers
    assert set(res["vs_1gpu"]) == {"480p_1spk", "480p_2spk", "720p_1spk", "720p_2spk"}
    for name, per in res["vs_1gpu"].items():
        assert per["2"]["max_abs"] <= 1e-5, (name, per)
    assert all(all(per.values()) for per in res["finite"].values())
    workers = res["worker_memory"]["2"][0]
    assert len(workers) == 2 and all(w["env"]["NCCL_NVLS_ENABLE"] == "0" for w in workers)
