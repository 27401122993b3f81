"""The official InfiniteTalk DiT beside ours: the same random weights, the same inputs, one run.

    # a snapshot of MeiGen-AI/InfiniteTalk in an ignored folder (never committed), carried to the GPU:
    python3 bench/official_side_by_side.py --official .official/InfiniteTalk --out $OUT/side.json
    python3 bench/official_side_by_side.py --official DIR --smoke   # tiny golden config, CPU, fp32

The official ``wan/modules/multitalk_model.py`` runs unmodified. Only what it imports but cannot
have here is stood in (the same substitutions as the golden fixtures, tests/fixtures/golden README
P1/P2/P5/P7): FlashAttention -> SDPA (keys past ``k_lens`` masked), xformers' memory-efficient
attention -> SDPA in its [B, M, H, K] layout, xfuser's sequence-parallel queries -> one rank,
diffusers' ModelMixin/ConfigMixin -> plain ``nn.Module``; the package ``__init__`` files are not run.

Both models share one set of parameter tensors: ours is built with random weights, then the official
model (built on the meta device) takes ours' state dict with ``assign=True`` and strict key
matching, which is also the check that our parameter names are the official ones. So a 14B pair
needs the memory of one model. Per configuration: the official forward (eager, as shipped), ours
eager and ours with compiled blocks; CUDA-event time (median of --reps after a warm-up) and the
max / relative-L2 difference of ours against the official output.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402

FULL_CONFIG: dict = {}                    # WanModel defaults are the 14B values
CASES = {"480p_1spk": ((21, 60, 104), 1), "480p_2spk": ((21, 60, 104), 2),
         "720p_1spk": ((21, 90, 160), 1)}
SMOKE_CASES = {"smoke_1spk": ((3, 8, 12), 1), "smoke_2spk": ((3, 8, 12), 2)}


# -- the official module, imported with stand-ins --------------------------------------------------
def _sdpa_flash(q, k, v, q_lens=None, k_lens=None, dropout_p=0., softmax_scale=None, q_scale=None,
                causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16,
                version=None):
    """FlashAttention's varlen call as SDPA: q/k/v [B, L, N, C]; keys at or past k_lens masked."""
    out_dtype = q.dtype
    if q.dtype not in (torch.float16, torch.bfloat16) and q.is_cuda:
        q, k, v = (t.to(dtype) for t in (q, k, v))   # what FlashAttention does on the GPU
    mask = None
    if k_lens is not None and int(k_lens.min()) < k.shape[1]:
        keep = torch.arange(k.shape[1], device=k.device)[None] < k_lens.to(k.device)[:, None]
        mask = keep[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, scale=softmax_scale or q.shape[-1] ** -0.5,
                                         is_causal=causal)
    return out.transpose(1, 2).to(out_dtype)


def _xformers_mea(q, k, v, attn_bias=None, op=None, **_):
    """xformers' memory_efficient_attention ([B, M, H, K], scale 1/sqrt(K)) as SDPA."""
    if attn_bias is not None:
        raise NotImplementedError("block-diagonal bias is only used with sequence parallel")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _stub_modules() -> None:
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    class ConfigMixin:                      # diffusers' config registry is not needed to run forward
        pass

    mod("diffusers", ModelMixin=nn.Module)
    mod("diffusers.configuration_utils", ConfigMixin=ConfigMixin, register_to_config=lambda f: f)
    mod("xfuser")
    mod("xfuser.core")
    mod("xfuser.core.distributed", get_sequence_parallel_rank=lambda: 0,
        get_sequence_parallel_world_size=lambda: 1, get_sp_group=lambda: None)
    xf = mod("xformers")
    ops = mod("xformers.ops", memory_efficient_attention=_xformers_mea,
              fmha=types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=None)))
    xf.ops = ops
    for name in ("imageio", "soundfile"):
        if importlib.util.find_spec(name) is None:
            mod(name)
    if importlib.util.find_spec("skimage") is None:
        sk = mod("skimage")
        sk.color = mod("skimage.color")
    if importlib.util.find_spec("torchvision") is None:
        mod("torchvision")


def load_official(root: Path):
    """``wan.modules.multitalk_model`` from the snapshot at ``root`` (package __init__s not run)."""
    _stub_modules()
    for pkg in ("wan", "wan.modules", "wan.utils"):
        m = types.ModuleType(pkg)
        m.__path__ = [str(root / pkg.replace(".", "/"))]
        sys.modules[pkg] = m
    for name in ("wan.utils.multitalk_utils", "wan.modules.attention", "wan.modules.multitalk_model"):
        path = root / (name.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    attention = sys.modules["wan.modules.attention"]
    official = sys.modules["wan.modules.multitalk_model"]
    attention.flash_attention = official.flash_attention = _sdpa_flash
    if not torch.cuda.is_available():       # P4: its CUDA cache housekeeping cannot run on the CPU
        sys.modules["wan.utils.multitalk_utils"].torch_gc = lambda: None
    return official


def official_twin(official_module, ours: nn.Module, config: dict) -> nn.Module:
    """The official WanModel holding ours' very parameter tensors (strict name match)."""
    with torch.device("meta"):
        twin = official_module.WanModel(weight_init=False, **config)
    state = ours.state_dict()
    missing, unexpected = twin.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"names differ from the official model: missing {missing[:5]} "
                           f"({len(missing)}), not official {unexpected[:5]} ({len(unexpected)})")
    twin.init_freqs()                       # a plain attribute, made on the meta device above
    twin.disable_teacache()
    return twin.eval().requires_grad_(False)


# -- one configuration ---------------------------------------------------------------------------
def _inputs(cfg, latent, speakers, device, dtype):
    inp = bl.make_inputs(cfg, latent, speakers, device, dtype)
    if inp["ref_target_masks"] is None:     # the official pipeline passes all-ones masks for one speaker
        inp["ref_target_masks"] = torch.ones(3, *latent[1:], device=device)
    return inp


def _official_call(twin, inp):
    t, h, w = inp["x"].shape[2:]
    seq_len = t * (h // 2) * (w // 2)
    return twin([inp["x"][0]], t=inp["t"], context=[inp["context"][0]], seq_len=seq_len,
                clip_fea=inp["clip_fea"], y=inp["y"], audio=inp["audio"],
                ref_target_masks=inp["ref_target_masks"])


def _diff(a, b) -> dict:
    a, b = a.float(), b.float()
    return {"max_abs": float((a - b).abs().max()), "rel_l2": float((a - b).norm() / b.norm()),
            "ref_rms": float(b.pow(2).mean().sqrt())}


def _timed(fn, reps, cuda):
    if not cuda:
        t0 = time.perf_counter()
        out = fn()
        return out, {"s": time.perf_counter() - t0}
    out = fn()                               # warm-up (compiles where compiled)
    med, times, _ = bl.time_cuda(fn, reps, warmup=0)
    return out, {"s": med, "all_s": times, "peak_gib": torch.cuda.max_memory_allocated() / bl.GIB}


def _with_attention(choice: str, device, fn):
    """``fn()`` with the loader's attention ``choice`` active (models/attention_backends.resolve)."""
    from infinitetalk.models import attention, attention_backends
    found = attention_backends.resolve(choice, device)
    attention.set_backend(found.backend)
    try:
        return found.label, fn()
    finally:
        attention.set_backend("sdpa")


def _fp32_reference(official_module, ours, inp, outs: dict) -> dict:
    """The bf16 outputs against both models in fp32 (the bf16 weights and inputs upcast, TF32 off):
    how far each bf16 run is from exact arithmetic, and ours vs the official code in fp32."""
    import gc
    torch._dynamo.reset()                          # compiled graphs hold the bf16 parameters
    gc.collect()
    torch.cuda.empty_cache()
    cfg = {k: v for k, v in ours.config.items() if k != "weight_init"}
    ours.float()                                   # new fp32 tensors; the bf16 twin is gone by now
    twin = official_twin(official_module, ours, cfg)
    inp32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in inp.items()}
    with torch.inference_mode():
        ref32 = _official_call(twin, inp32)
        ours32 = bl.call(ours, inp32)
    res = {"ours_fp32_vs_official_fp32": _diff(ours32, ref32)}
    for name, out in outs.items():
        res[f"{name}_vs_fp32"] = _diff(out, ref32)
    return res


def run_case(official_module, cfg_over, latent, speakers, device, dtype, reps, compiled,
             choices=(), fp32_reference=False) -> dict:
    ours = bl.build_model(cfg_over, device, dtype)
    cfg = ours.config
    twin = official_twin(official_module, ours, {k: v for k, v in cfg.items() if k != "weight_init"})
    inp = _inputs(cfg, latent, speakers, device, dtype)
    cuda = device.type == "cuda"
    res, outs = {}, {}
    with torch.inference_mode():
        ref, res["official"] = _timed(lambda: _official_call(twin, inp), reps, cuda)
        out, res["ours_eager"] = _timed(lambda: bl.call(ours, inp), reps, cuda)
        res["ours_eager"].update(_diff(out, ref))
        outs.update(official=ref, ours_eager=out)
        if compiled and cuda:
            ours.compile_blocks()
            out, res["ours_compiled"] = _timed(lambda: bl.call(ours, inp), reps, cuda)
            res["ours_compiled"].update(_diff(out, ref))
            outs["ours_compiled"] = out
            for choice in choices:          # the loader's attention choices, compiled blocks
                key = f"ours_compiled_{choice}"
                try:
                    label, (out, res[key]) = _with_attention(
                        choice, device, lambda: _timed(lambda: bl.call(ours, inp), reps, cuda))
                    res[key].update(_diff(out, ref), attention=label)
                except Exception as err:  # noqa: BLE001 - an unavailable choice is a result too
                    res[key] = {"error": f"{type(err).__name__}: {err}"[:300]}
            ours.uncompile_blocks()
    if fp32_reference:
        del twin
        try:
            res["fp32_reference"] = _fp32_reference(official_module, ours, inp, outs)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory on an 80 GB card
            res["fp32_reference"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        twin = None
    for key in [k for k in res if k.startswith("ours")]:
        if "s" in res[key]:
            res[key]["speedup_vs_official"] = res["official"]["s"] / res[key]["s"]
    del ours, twin, inp
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="snapshot root of MeiGen-AI/InfiniteTalk")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--attention", default="",
                   help="comma-separated loader attention choices to time with compiled blocks (auto,...)")
    p.add_argument("--fp32-reference", action="store_true",
                   help="also run both models in fp32 (needs ~3x the weights' memory: 14B fits an H200)")
    p.add_argument("--smoke", action="store_true", help="tiny golden config, CPU, fp32")
    args = p.parse_args(argv)
    official_module = load_official(args.official.resolve())
    if args.smoke:
        device, dtype, cfg, cases = torch.device("cpu"), torch.float32, bl.TINY_CONFIG, SMOKE_CASES
        names = list(cases)
    else:
        device, dtype, cfg, cases = torch.device("cuda"), torch.bfloat16, FULL_CONFIG, CASES
        names = args.cases.split(",")
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    res = {"card": card, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
           "command": " ".join(["python3", "bench/official_side_by_side.py"] + (argv or sys.argv[1:])),
           "cases": {}}
    for name in names:
        latent, speakers = cases[name]
        t0 = time.time()
        try:
            res["cases"][name] = run_case(official_module, cfg, latent, speakers, device, dtype,
                                          args.reps, not args.no_compile,
                                          [c for c in args.attention.split(",") if c], args.fp32_reference)
        except Exception as err:  # noqa: BLE001 - report every failing case and go on
            traceback.print_exc()
            res["cases"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(f"[{name}] {time.time() - t0:.1f}s {res['cases'][name]}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        path = bl.write_results(res, args.out, prefix="official_side_by_side-")   # each case kept
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
