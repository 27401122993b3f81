"""bench/e2e_components.py runs in its tiny CPU smoke mode and writes the expected keys (no timing asserts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "e2e_components.py"


def test_e2e_components_smoke_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_e2e_components", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "e2e.json"
    with torch.inference_mode(False):
        bench.main(["--smoke", "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("card", "torch", "dit_forward_s", "window", "t5", "audio_prep", "wav2vec", "vae", "clip", "totals"):
        assert key in res, key
    for part in ("t5", "wav2vec", "clip"):
        assert "s" in res[part], res[part]
    assert "mono_resample_s" in res["audio_prep"] and "loudness_norm_s" in res["audio_prep"]
    assert "status" in res["vae"] or "s" in res["vae"]["fp32_decode_2lat"]  # host VAE, or "not measured"
    for prec in ("bf16", "fp8"):
        for mode in bench.MODES:
            row = res["totals"][f"{prec}_{mode}"]
            assert {"dit_s", "window_still_s", "window_video_s", "first_window_s"} <= set(row)
