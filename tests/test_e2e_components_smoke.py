"""bench/e2e_components.py runs in its tiny CPU smoke mode and measures every part: each time is a finite
positive number (no timing bounds), the VAE and CLIP are the host's real classes, nothing is "not measured"."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "e2e_components.py"
pytestmark = pytest.mark.host        # the VAE and CLIP are the host's own classes (tier: tests/conftest.py)


def _seconds(value, what: str) -> float:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what}: {value!r}"
    return float(value)


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
    for prec in ("bf16", "fp8"):
        _seconds(res["dit_forward_s"][prec], f"dit_forward_s.{prec}")
    for part in ("t5", "wav2vec", "clip"):
        assert "status" not in res[part], res[part]
        _seconds(res[part]["s"], part)
        assert len(res[part]["times"]) == res["reps"] and res[part]["params"] > 0
    assert res["wav2vec"]["frames"] == 25 * res["wav2vec"]["samples_16k"] // 16000
    for key in ("mono_resample_s", "loudness_norm_s"):
        _seconds(res["audio_prep"][key], f"audio_prep.{key}")
    vae = res["vae"]
    assert "status" not in vae, vae                     # the host's own WanVAE, not "not measured"
    assert vae["class"] == "comfy.ldm.wan.vae.WanVAE" and vae["params"] > 0
    for part in ("fp32_encode_5f", "fp32_encode_1f", "fp32_decode_2lat"):
        _seconds(vae[part]["s"], f"vae.{part}")
    assert res["totals"]["missing"] == []
    _seconds(res["totals"]["once_per_video_s"], "once_per_video_s")
    for prec in ("bf16", "fp8"):
        for mode in bench.MODES:
            row = res["totals"][f"{prec}_{mode}"]
            dit, still = _seconds(row["dit_s"], "dit_s"), _seconds(row["window_still_s"], "window_still_s")
            video, first = _seconds(row["window_video_s"], "window_video_s"), _seconds(row["first_window_s"], "first")
            assert dit < still <= video <= first, row       # a window adds the non-DiT parts to the DiT's time
            assert 0 < row["non_dit_share_still"] < 1, row
            steps, passes = bench.MODES[mode]
            assert math.isclose(dit, steps * passes * res["dit_forward_s"][prec], rel_tol=1e-6), row
