"""The DiT benchmark runs end to end in its tiny CPU smoke mode and writes the expected keys."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dit_forward.py"


def test_bench_smoke_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_dit_forward", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "smoke.json"
    with torch.inference_mode(False):
        bench.main(["--smoke", "--skip-golden", "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("card", "torch", "matmul_tflops", "dit_forward_s", "peak_gib"):
        assert key in res
    assert set(bench.FORWARD_KEYS) <= set(res["dit_forward_s"])
    assert not res.get("errors"), res.get("errors")
