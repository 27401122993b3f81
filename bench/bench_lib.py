"""Pieces of the DiT benchmark: the pack import, FLOP count, inputs, models, quantized layers, timing."""
from __future__ import annotations

import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def import_pack(name: str = "infinitetalk"):
    """Import the repository as the package ``infinitetalk`` (as tests/conftest.py does)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


import_pack()
from infinitetalk.models.quant_ops import dequant_linear, quant_linear, quantize_rows  # noqa: E402
from infinitetalk.models.wan_dit import WanModel  # noqa: E402

# The smoke config: the golden fixtures' tiny DiT (2 blocks, dim 128).
TINY_CONFIG = {"dim": 128, "ffn_dim": 256, "text_dim": 64, "num_heads": 4, "num_layers": 2,
               "intermediate_dim": 4, "output_dim": 64}


# -- FLOPs ---------------------------------------------------------------------------------------
def dit_flops(cfg: dict, grid: tuple[int, int, int], speakers: int, text_tokens: int = 512,
              image_tokens: int = 257) -> dict[str, float]:
    """Multiply-adds ×2 of one forward: {"linear", "attention"} (blocks only; embeddings/head < 0.1 %).

    linear: self q,k,v,o; cross q,o on L rows, k,v on text rows, k_img,v_img on image rows; audio
    q, proj on L rows and kv on T·32·N rows; FFN. attention: QKᵀ and PV of self (L×L), text/image
    (L×(512+257)) and audio (per frame S×32·N). The two-speaker routing map (fp32, L×S per head)
    is not counted: it is overhead the reference adds, not model work.
    """
    t, h, w = grid
    tokens, dim, ffn = t * h * w, cfg["dim"], cfg["ffn_dim"]
    audio_tokens = cfg["context_tokens"] * speakers
    linear = 2 * (tokens * (4 * dim * dim + 2 * dim * dim + 2 * dim * dim + 2 * dim * ffn)
                  + 2 * text_tokens * dim * dim + 2 * image_tokens * dim * dim
                  + t * audio_tokens * cfg["output_dim"] * 2 * dim)
    attention = 4 * tokens * dim * (tokens + text_tokens + image_tokens + audio_tokens)
    n = cfg["num_layers"]
    return {"linear": float(n * linear), "attention": float(n * attention)}


# -- inputs --------------------------------------------------------------------------------------
def make_inputs(cfg: dict, latent: tuple[int, int, int], speakers: int, device, dtype, seed: int = 0) -> dict:
    """Random model inputs for a latent (T, H, W); speaker boxes left/right with a background gap."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    t, h, w = latent
    frames = cfg["vae_scale"] * (t - 1) + 1

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    masks = torch.zeros(3, h, w, device=device)
    masks[0, :, : w * 2 // 5] = 1
    masks[1, :, w * 3 // 5:] = 1
    masks[2] = 1 - masks[0] - masks[1]
    return {"x": rnd(1, 16, t, h, w), "t": torch.tensor([900.0], device=device),
            "context": rnd(1, 512, cfg["text_dim"]), "clip_fea": rnd(1, 257, 1280),
            "y": rnd(1, 20, t, h, w), "audio": rnd(speakers, frames, 5, 12, 768),
            "ref_target_masks": masks if speakers == 2 else None}


def call(model: nn.Module, inp: dict) -> torch.Tensor:
    return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], inp["audio"],
                 ref_target_masks=inp["ref_target_masks"])


# -- models --------------------------------------------------------------------------------------
def build_model(config: dict, device, dtype, seed: int = 0) -> WanModel:
    """Random-weight DiT made directly on ``device`` in ``dtype`` (no fp32 CPU copy)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = WanModel(**config, device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


class QuantLinear(nn.Module):
    """A Linear in the official quanto layout (``weight_data`` int8/fp8 [out, in], ``weight_scale``
    fp32 [out, 1]) that calls models/quant_ops.py; ``reference=True`` uses the dequantize path."""

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, reference=False):
        super().__init__()
        self.reference = reference
        self.register_buffer("weight_data", data)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = dequant_linear if self.reference else quant_linear
        return fn(x, self.weight_data, self.weight_scale, self.bias)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace every nn.Linear by a QuantLinear (per-row int8/fp8, as quanto does); returns the count."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    for name in names:
        lin = model.get_submodule(name)
        data, scale = quantize_rows(lin.weight.detach(), dtype)
        _swap(model, name, QuantLinear(data, scale, None if lin.bias is None else lin.bias.detach()))
        del lin
    return len(names)


def load_quanto(model: nn.Module, sd: dict, qmap: dict, device, reference=False) -> None:
    """Swap in QuantLinear layers from an official quanto state dict (``X.weight._data``/``._scale``)."""
    for name in qmap:
        bias = sd.get(name + ".bias")
        _swap(model, name, QuantLinear(sd[name + ".weight._data"].to(device), sd[name + ".weight._scale"].to(device),
                                       None if bias is None else bias.to(device, torch.bfloat16), reference))


def compile_blocks(model: WanModel) -> None:
    model.compile_blocks()


def uncompile_blocks(model: WanModel) -> None:
    model.uncompile_blocks()


def guard(res: dict, label: str, fn, after=None, limit: int = 600):
    """Run one bench part: on error record it in ``res["errors"][label]`` and go on (one failing part
    must not lose the others); then print its time, free the GPU and call ``after()`` (e.g. rewrite a
    partial results file, so a run cut off keeps what it measured)."""
    import time
    import traceback
    t0 = time.time()
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the bench reports every failure and continues
        traceback.print_exc()
        res.setdefault("errors", {})[label] = f"{type(err).__name__}: {err}"[:limit]
    finally:
        print(f"[{label}] {time.time() - t0:.1f}s", flush=True)
        free_cuda()
        if after:
            after()


def free_cuda() -> None:
    """Drop unreachable tensors and give cached GPU memory back (between bench parts)."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- timing --------------------------------------------------------------------------------------
def cuda_seconds(fn) -> float:
    """Seconds of GPU time one call of ``fn`` takes, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def time_cuda(fn, reps: int, warmup: int = 1) -> tuple[float, list[float], float]:
    """(median s, all s, first-call s incl. compile) with CUDA events; peak memory reset after warm-up."""
    warm = [cuda_seconds(fn) for _ in range(warmup)]
    first = warm[0] if warm else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = [cuda_seconds(fn) for _ in range(reps)]
    return statistics.median(times), times, first


def matmul_rate(dtype: str, n: int = 8192, reps: int = 20) -> float:
    """Measured dense matmul rate (TFLOP/s, or TOP/s for int8) on random n×n×n operands."""
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    if dtype == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
        fn = lambda: a @ b  # noqa: E731
    elif dtype == "fp8":
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        sa, sb = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")
        fn = lambda: torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)  # noqa: E731
    else:
        ai = a.clamp(-100, 100).to(torch.int8)
        bi = b.clamp(-100, 100).to(torch.int8).t().contiguous().t()
        fn = lambda: torch._int_mm(ai, bi)  # noqa: E731
    med, _, _ = time_cuda(fn, reps, warmup=3)
    return 2 * n ** 3 / med / 1e12


def write_results(res: dict, out: Path | None, prefix: str = "") -> Path:
    """Write ``res`` (minus its ``_partial`` bookkeeping) to ``out`` or results/<prefix><card slug>.json."""
    res.pop("_partial", None)
    slug = re.sub(r"[^a-z0-9]+", "-", res["card"].lower()).strip("-")
    out = out or ROOT / "bench" / "results" / f"{prefix}{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return out
