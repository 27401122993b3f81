"""Could the host's casting layers replace our block streamer? (issue 13, step 7)

    python3 bench/host_casting.py --out X.json      # on the GPU machine, ``.host/ComfyUI`` carried
    python3 bench/host_casting.py --smoke --out X   # CPU: tiny DiT, equal outputs only (tests)

One full-size Wan2.1-I2V-14B + InfiniteTalk DiT (random bf16 weights), one 480p one-speaker forward
(CUDA events, median of --reps after a warm-up), in four set-ups:

1. ``resident``: every weight on the GPU (the reference output and the activation memory);
2. ``ours_<cap>gib``: our ``BlockStreamer`` (loaders/streaming.py: blocks in pinned RAM, two GPU
   slots, block i+1 copied on a side stream while block i runs) under a memory cap;
3. ``host_<cap>gib``: the same network built with the host's layers (``comfy.ops.disable_weight_init``,
   the layers the host gives bf16 weights on a bf16 device; the ``operations`` seam) and loaded by the
   host's ``ModelPatcher.load(lowvram_model_memory=...)``: as many layers resident as the budget holds,
   the rest cast to the GPU per call by the host (pinned weights, its async offload streams);
   the budget is the cap minus the activation memory measured in 1.;
4. each of those compiled (``WanModel.compile_blocks``) when ``--compile``.

The host's loader moves only its own layers: a module that holds raw parameters and children (our
blocks' ``modulation``, the head's) is skipped. Those parameters (and the RMSNorm weights, when the
budget does not reach them) are moved to the GPU by this script and their size recorded as
``stray_param_mib``: a real switch would have to cast them at use, as the host's own models do.

Writes JSON: seconds per forward, peak GiB, max |out - resident|, per set-up.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lib as bl  # noqa: E402  (imports the pack as 'infinitetalk')

LATENT_480P = (21, 60, 104)
HOST_DIR = bl.ROOT / ".host" / "ComfyUI"


def host_ops():
    """The host's layer namespace as an ``operations`` (Linear, Conv3d, LayerNorm)."""
    if str(HOST_DIR) not in sys.path:
        sys.path.insert(0, str(HOST_DIR))
    if not torch.cuda.is_available():
        from comfy.cli_args import args
        args.cpu = True  # read when comfy.model_management is first imported (by comfy.ops)
    import comfy.ops

    class HostOps:
        Linear = comfy.ops.disable_weight_init.Linear
        Conv3d = comfy.ops.disable_weight_init.Conv3d
        LayerNorm = comfy.ops.disable_weight_init.LayerNorm
    return HostOps


def host_model(cfg: dict, state: dict, dtype) -> torch.nn.Module:
    """The DiT built with the host's layers on the meta device, given ``state``'s tensors."""
    with torch.device("meta"):
        model = bl.WanModel(**cfg, operations=host_ops(), device="meta", dtype=dtype)
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


def _guard(res: dict, label: str, fn, partial: Path | None):
    return bl.guard(res, label, fn, partial and (lambda: partial.write_text(json.dumps(res, indent=1))))


def _time(res: dict, key: str, model, inp: dict, reps: int, ref: torch.Tensor | None) -> torch.Tensor:
    out = {}

    def fn():
        out["y"] = bl.call(model, inp)
    med, times, first = bl.time_cuda(fn, reps)
    y = out["y"]
    row = {"s": med, "times_s": times, "first_call_s": first,
           "peak_gib": torch.cuda.max_memory_allocated() / bl.GIB, "finite": bool(torch.isfinite(y).all())}
    if ref is not None:
        row["max_abs_vs_resident"] = float((y.float() - ref.float()).abs().max())
    base = res["runs"].get("resident_compiled" if key.endswith("_compiled") else "resident")
    if base:
        row["extra_vs_resident"] = med / base["s"] - 1
    res["runs"][key] = row
    print(f"  {key}: {med:.3f} s (first {first:.1f} s), peak {row['peak_gib']:.2f} GiB", flush=True)
    return y


def _capped(device, cap_gib: float):
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * bl.GIB / total), device)


def _stray_to(model, device) -> int:
    """Move parameters/buffers the host's loader left on the CPU to ``device``; their bytes."""
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            cast = getattr(module, "comfy_cast_weights", False)
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is None or t.device == device or cast:
                        continue
                    moved += t.numel() * t.element_size()
                    if isinstance(t, torch.nn.Parameter):
                        store[name] = torch.nn.Parameter(t.to(device), requires_grad=False)
                    else:
                        store[name] = t.to(device)
    return moved


def _ours(res, model, inp, reps, caps, device, ref, suffix):
    from infinitetalk.loaders.streaming import BlockStreamer
    streamer = BlockStreamer(model.blocks, device)
    res["streaming_slot_gib"] = streamer.slot_bytes / bl.GIB
    try:
        for cap in caps:
            bl.free_cuda()
            _capped(device, cap)
            _time(res, f"ours_{cap:g}gib{suffix}", model, inp, reps, ref)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        streamer.close()


def _host(res, cfg, state, inp, reps, cap, device, ref, compiled, activation_gib, margin):
    model = host_model(cfg, state, torch.bfloat16)   # host_ops() puts the host on sys.path
    import comfy.model_patcher
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    budget = max(0.0, cap - activation_gib - margin)
    suffix = "_compiled" if compiled else ""
    key = f"host_{cap:g}gib{suffix}"
    try:
        patcher.load(device, lowvram_model_memory=int(budget * bl.GIB))
        stray = _stray_to(model, device)
        cast_layers = sum(1 for m in model.modules() if getattr(m, "comfy_cast_weights", False))
        if compiled:
            model.compile_blocks()
        bl.free_cuda()
        _capped(device, cap)
        _time(res, key, model, inp, reps, ref)
        res["runs"][key].update(budget_gib=budget, stray_param_mib=stray / 2**20, cast_layers=cast_layers,
                                gpu_weight_gib=torch.cuda.memory_allocated(device) / bl.GIB)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        model.uncompile_blocks()
        patcher.detach(unpatch_all=True)
        del model, patcher


def run(args) -> dict:
    device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = dict(bl.WanModel(device="meta").config)
    res = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__, "command": " ".join(sys.argv),
           "latent": LATENT_480P, "caps_gib": args.caps, "runs": {}}
    partial = args.out.with_suffix(".partial.json") if args.out else None
    # no_grad, not inference_mode: the host's loader re-binds parameters (inference tensors refuse that).
    with torch.no_grad():
        model = bl.build_model(cfg, device, torch.bfloat16)
        inp = bl.make_inputs(cfg, LATENT_480P, 1, device, torch.bfloat16)
        weights = torch.cuda.memory_allocated(device)
        ref = _time(res, "resident", model, inp, args.reps, None)
        activation = res["runs"]["resident"]["peak_gib"] - weights / bl.GIB
        res["weights_gib"], res["activation_gib"] = weights / bl.GIB, activation
        if not args.skip_ours:
            _guard(res, "ours", lambda: _ours(res, model, inp, args.reps, args.caps, device, ref, ""), partial)
        if args.compile:
            model.compile_blocks()
            _guard(res, "resident_compiled",
                   lambda: _time(res, "resident_compiled", model, inp, args.reps, ref), partial)
            if not args.skip_ours:
                _guard(res, "ours_compiled",
                       lambda: _ours(res, model, inp, args.reps, args.caps, device, ref, "_compiled"), partial)
            model.uncompile_blocks()
        state = {k: v.to("cpu") for k, v in model.state_dict().items()}
        del model
        bl.free_cuda()
        for compiled in ((False, True) if args.compile else (False,)):
            for cap in args.caps:
                _guard(res, f"host_{cap:g}{'_compiled' if compiled else ''}",
                       lambda: _host(res, cfg, state, inp, args.reps, cap, device, ref, compiled, activation, args.margin),
                       partial)
    return res


def smoke(out: Path | None) -> dict:
    """CPU: the tiny DiT with our layers and with the host's layers gives the same output."""
    cfg = dict(bl.WanModel(**bl.TINY_CONFIG, device="meta").config)
    ours = bl.build_model(cfg, "cpu", torch.float32)
    state = ours.state_dict()
    theirs = host_model(cfg, {k: v.clone() for k, v in state.items()}, torch.float32)
    inp = bl.make_inputs(cfg, (3, 8, 12), 1, "cpu", torch.float32)
    with torch.inference_mode():
        a, b = bl.call(ours, inp), bl.call(theirs, inp)
    res = {"card": "cpu-smoke", "runs": {"host_cpu": {"max_abs_vs_resident": float((a - b).abs().max()),
                                                      "finite": bool(torch.isfinite(b).all())}}}
    if out:
        out.write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny DiT: equal outputs only")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/host_casting-<card>.json)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--caps", type=float, nargs="*", default=[16, 8], help="GPU memory caps in GiB")
    p.add_argument("--margin", type=float, default=0.5,
                   help="GiB kept free beside the activations when the host's budget is set")
    p.add_argument("--skip-ours", action="store_true", help="leave out our streamer's runs")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.smoke:
        return smoke(args.out)
    res = run(args)
    out = bl.write_results(res, args.out, "host_casting-")
    for key, row in res["runs"].items():
        extra = row.get("extra_vs_resident")
        print(f"{key:28s} {row['s']:7.3f} s  peak {row['peak_gib']:6.2f} GiB"
              + (f"  {100 * extra:+.1f} %" if extra is not None else "")
              + f"  max|d| {row.get('max_abs_vs_resident', 0):.3g}")
    for name, err in res.get("errors", {}).items():
        print(f"ERROR {name}: {err[:300]}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
