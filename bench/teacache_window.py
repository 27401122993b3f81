"""TeaCache on one 40-step, 3-pass 81-frame window: calls skipped and the window's DiT time.

    python3 bench/teacache_window.py --out $OUT/teacache.json            # GPU: full-size DiT, random weights
    python3 bench/teacache_window.py --smoke --out X                      # CPU: tiny config

TeaCache decides from ``e0`` alone (the time embedding of the step's timestep), so the decisions of a whole
window follow from the schedule and the time-embedding weights: they are computed exactly here, through the
same ``samplers/teacache.py`` slots the loop uses, for thresholds 0.2 and 0.3 at 480p and 720p. Then one full
forward and one reused forward (blocks skipped) are timed, and the window's DiT time is
``computed calls x full forward + skipped calls x reused forward``.

Honest limits: the weights are random, and the official polynomial was fitted on the real time-embedding
weights; with real weights the same thresholds skip a different number of calls.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
from infinitetalk.samplers import schedule  # noqa: E402
from infinitetalk.samplers.teacache import TeaCache  # noqa: E402

PASSES = ("cond", "drop_text", "uncond")
LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
SHIFT = {"480p": 7.0, "720p": 11.0}


class _Decide:
    """Stands in for the block stack: only the slot's decision is needed, not its residual's values."""

    def __init__(self):
        self.x = torch.zeros(1, 1, 1)

    def run(self, slot, e0):
        if slot.reuse(e0, self.x) is None:
            slot.store(self.x, self.x)


def decisions(model, resolution: str, threshold: float, steps: int = 40) -> dict:
    cache, stub = TeaCache(threshold, resolution), _Decide()
    weight = model.patch_embedding.weight                # the forward's device and compute dtype
    dtype = model.compute_dtype or weight.dtype
    calls = 0
    for t in schedule.timesteps(steps, SHIFT[resolution])[:steps]:
        _, e0 = model.time_modulation(t.reshape(1).to(weight.device), dtype)
        for name in PASSES:
            stub.run(cache.slot(name), e0)
            calls += 1
    return {"calls": calls, "skipped": cache.skipped, "computed": calls - cache.skipped}


def _time_forward(model, inp, reps, cuda, cache=None):
    def fn():
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], inp["audio"],
                     ref_target_masks=inp["ref_target_masks"], block_cache=cache)
    if not cuda:
        import time
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    fn()
    return bl.time_cuda(fn, reps, warmup=0)[0]


class _AlwaysReuse:
    """A block cache that always reuses a stored residual (the cost of a skipped call)."""

    def __init__(self):
        self.residual = None

    def reuse(self, e0, x):
        if self.residual is None:
            self.residual = torch.zeros_like(x)
        return x + self.residual

    def store(self, x_in, x_out):
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--resolutions", default="480p,720p")
    args = p.parse_args(argv)
    cuda = not args.smoke
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    model = bl.build_model({} if cuda else bl.TINY_CONFIG, device, dtype)
    res = {"card": torch.cuda.get_device_name() if cuda else "cpu-smoke", "torch": torch.__version__,
           "command": " ".join(["python3", "bench/teacache_window.py"] + (argv or sys.argv[1:])),
           "weights": "random (official coefficients were fitted on the real weights)", "windows": {}}
    if cuda and not args.no_compile:
        model.compile_blocks()
    for resolution in args.resolutions.split(","):
        latent = LATENTS[resolution]
        latent = latent if cuda else (3, 8, 12)
        inp = bl.make_inputs(model.config, latent, 1, device, dtype)
        with torch.inference_mode():
            full = _time_forward(model, inp, args.reps, cuda)
            reused = _time_forward(model, inp, args.reps, cuda, cache=_AlwaysReuse())
            row = {"full_forward_s": full, "reused_forward_s": reused, "thresholds": {}}
            for threshold in (0.0, 0.2, 0.3):
                d = decisions(model, resolution, threshold) if threshold else {"calls": 120, "skipped": 0,
                                                                                "computed": 120}
                d["window_dit_s"] = d["computed"] * full + d["skipped"] * reused
                row["thresholds"][str(threshold)] = d
        res["windows"][resolution] = row
        print(f"[{resolution}] {row}", flush=True)
        del inp
        if cuda:
            torch.cuda.empty_cache()
    print(f"wrote {bl.write_results(res, args.out, prefix='teacache-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
