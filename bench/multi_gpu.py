"""Multi-GPU benchmark (issue 16): the full-size DiT on 1, 2, 4 and 8 GPUs of one machine.

    python3 bench/multi_gpu.py --out $OUT/multi-gpu-measured.json   # on a machine with N GPUs
    python3 bench/multi_gpu.py --smoke --out X                      # tiny DiT, CPU, 1 vs 2 gloo workers

The Wan2.1-I2V-14B DiT + InfiniteTalk adapter with random weights is written ONCE to local disk as a bf16
safetensors file in the official key layout (``--cache``, reused by later runs); every run loads it with
``load_dit``: in this process for 1 GPU, in the workers of parallel/pool.py (Ray, NCCL, Ulysses) for N.
Measured for every GPU count ≤ torch.cuda.device_count(), 480p and 720p, 1 and 2 speakers: seconds per
DiT forward (median of --reps after one warm-up), per sampling step (3 passes: cond, drop text, drop
all), the speed-up over 1 GPU, the N-GPU output against the 1-GPU one (max abs, relative L2; the bf16
bar of bench/golden_check.py), worker start-up time and GPU memory per worker (asked in each worker). One
FusionX / lightx2v fast-mode window: 4 steps of one pass (cfg 1), 81 frames at 480p; its DiT seconds
and the video seconds made per wall second (72 new frames = 2.88 s at 25 fps). Times are wall clock as
the sampler sees them (the pool's input / output transfers included). Workers run eager (no compile).

Order: 480p 1 speaker (the record's speed-ups and the fast window) on every GPU count first, then the
rest. Progress (and the 1-GPU outputs) stay in --cache: a run cut off (e.g. by a 10-minute limit) is
continued by running the same command again; --fresh starts over.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
from golden_check import MAX_ABS, REL_L2  # noqa: E402 - the bf16 bar of the GPU golden checks
from infinitetalk.loaders.dit import load_dit  # noqa: E402
from infinitetalk.models import attention, attention_backends  # noqa: E402
from infinitetalk.parallel.pool import ParallelDiT, WorkerPool, import_ray  # noqa: E402

# NVLink multicast (NVLS) off for every process (workers inherit it through Ray's runtime env too).
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
SMOKE_LATENTS = {"480p": (3, 8, 12), "720p": (3, 10, 16)}
FIRST = [("480p", 1)]
REST = [("480p", 2), ("720p", 1), ("720p", 2)]
GPU_COUNTS = (1, 2, 4, 8)
FAST_STEPS, FAST_TIMESTEPS = 4, (1000.0, 750.0, 500.0, 250.0)
VIDEO_S = 72 / 25              # the new frames of one 81-frame window (9 are motion frames), 25 fps
WEIGHTS_NAME = "wan14b_infinitetalk_random_bf16.safetensors"
SMOKE_WEIGHTS_NAME = "tiny_dit_random_fp32.safetensors"
ST_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}


def key(res: str, speakers: int) -> str:
    return f"{res}_{speakers}spk"


# -- the weight file -----------------------------------------------------------------------------
def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Stream ``tensors`` (any device) into one safetensors file, one tensor in host memory at a time (a
    14B state dict copied whole would need twice its size in RAM). Written to a temp name, then renamed."""
    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name].detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    tmp.replace(path)
    return offset


def make_weights(path: Path, cfg: dict, device, dtype) -> dict:
    """The random DiT (made on ``device``) written to ``path``; {"write_s", "gib"}."""
    began = time.monotonic()
    model = bl.build_model(cfg, device, dtype)
    size = write_safetensors(path, model.state_dict(), {"config": json.dumps(cfg)})
    del model
    bl.free_cuda()
    return {"write_s": time.monotonic() - began, "gib": size / bl.GIB}


# -- inputs, runners, timing ---------------------------------------------------------------------
def passes(cfg: dict, latent, speakers: int, dtype) -> list[dict]:
    """The 3 passes of one step on CPU: cond, drop text (null context), drop all (null context, no audio)."""
    cond = bl.make_inputs(cfg, latent, speakers, "cpu", dtype, seed=0)
    null = bl.make_inputs(cfg, latent, speakers, "cpu", dtype, seed=1)["context"]
    return [cond, {**cond, "context": null}, {**cond, "context": null, "audio": torch.zeros_like(cond["audio"])}]


class Local:
    """1 GPU: the model in this process, inputs already on its device (as the single-GPU sampler has them)."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def prepare(self, inp: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inp.items()}

    def __call__(self, inp: dict) -> torch.Tensor:
        out = bl.call(self.model, inp)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out


class Pooled:
    """N GPUs: ParallelDiT (CPU tensors to the workers, rank 0's velocity back)."""

    def __init__(self, dit: ParallelDiT):
        self.dit = dit

    def prepare(self, inp: dict) -> dict:
        return inp

    def __call__(self, inp: dict) -> torch.Tensor:
        return bl.call(self.dit, inp)


def _wall(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(runner, steps: list[dict], reps: int) -> dict:
    """Warm-up forward (its output is the one compared), median of ``reps`` forwards, one 3-pass step."""
    cond = runner.prepare(steps[0])
    warm_began = time.perf_counter()
    out = runner(cond).float().cpu()
    first = time.perf_counter() - warm_began
    times = [_wall(lambda: runner(cond)) for _ in range(reps)]
    prepared = [runner.prepare(p) for p in steps]
    step = _wall(lambda: [runner(p) for p in prepared])
    return {"forward_s": statistics.median(times), "forward_all_s": times, "first_s": first, "step_s": step,
            "finite": bool(torch.isfinite(out).all()), "out": out}


def fast_window(runner, cfg: dict, latent, dtype) -> float:
    """DiT seconds of one fast-mode window: 4 steps, one cond pass each (guidance 1), 1 speaker."""
    inp = runner.prepare(bl.make_inputs(cfg, latent, 1, "cpu", dtype, seed=2))
    began = time.perf_counter()
    for t in FAST_TIMESTEPS[:FAST_STEPS]:
        inp["t"] = torch.tensor([t], device=inp["x"].device)
        v = runner(inp).reshape(inp["x"].shape).to(inp["x"])
        inp["x"] = inp["x"] - 0.25 * v        # the next step's input depends on this one, as in sampling
    return time.perf_counter() - began


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.float() - ref.float()
    rel = (diff.norm() / ref.float().norm().clamp_min(1e-30)).item()
    max_abs = diff.abs().max().item()
    return {"max_abs": max_abs, "rel_l2": rel, "within_bf16_bar": max_abs <= MAX_ABS and rel <= REL_L2}


# -- inside the workers (run through Ray's __ray_call__: no method added to the actor) ------------
def _worker_stats(actor) -> dict:
    """Runs in a worker: only the standard library and torch (this function travels by value)."""
    gib = 2 ** 30
    stats = {"pid": os.getpid(), "env": {k: os.environ.get(k) for k in NCCL_ENV},
             "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stats.update(allocated_gib=torch.cuda.memory_allocated() / gib,
                     peak_gib=torch.cuda.max_memory_allocated() / gib,
                     peak_reserved_gib=torch.cuda.max_memory_reserved() / gib)
    return stats


def worker_stats(pool: WorkerPool) -> list[dict]:
    ray = import_ray()
    if __name__ != "__main__" and __name__ in sys.modules:   # imported: the workers cannot import it by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.get([a.__ray_call__.remote(_worker_stats) for a in pool.actors])


# -- the run -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args, self.smoke = args, args.smoke
        self.device = torch.device("cpu") if self.smoke else torch.device("cuda", 0)
        self.dtype = torch.float32 if self.smoke else torch.bfloat16
        self.latents = SMOKE_LATENTS if self.smoke else LATENTS
        base = bl.WanModel(**bl.TINY_CONFIG, device="meta") if self.smoke else bl.WanModel(device="meta")
        self.cfg = dict(base.config)
        self.cache = Path(args.cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        have = 2 if self.smoke else torch.cuda.device_count()
        self.gpus = [n for n in (args.gpus or GPU_COUNTS) if n <= have and (not self.smoke or n <= 2)]
        self.progress = self.cache / ("progress-smoke.json" if self.smoke else "progress.json")
        self.res = self._resume(have)

    def _resume(self, have: int) -> dict:
        card = "cpu-smoke" if self.smoke else torch.cuda.get_device_name(0)
        if self.progress.exists() and not self.args.fresh:
            old = json.loads(self.progress.read_text())
            if old.get("card") == card and old.get("gpus_available") == have:
                print(f"continuing {self.progress}", flush=True)
                return old
        return {"card": card, "gpus_available": have, "torch": torch.__version__, "cuda": torch.version.cuda,
                "command": " ".join(sys.argv), "attention": self.args.attention, "dtype": str(self.dtype),
                "reps": self.args.reps, "bf16_bar": {"max_abs": MAX_ABS, "rel_l2": REL_L2}, "nccl_env": NCCL_ENV,
                "forward_s": {}, "step_s": {}, "first_s": {}, "vs_1gpu": {}, "finite": {}, "startup_s": {},
                "worker_memory": {}, "fast_window_dit_s": {}, "errors": {}}

    def save(self) -> None:
        self.progress.write_text(json.dumps(self.res, indent=1))
        if self.args.out:
            bl.write_results(summarize(dict(self.res)), self.args.out)

    def guard(self, label: str, fn):
        began = time.monotonic()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - record every failure, keep what was measured
            traceback.print_exc()
            self.res["errors"][label] = f"{type(err).__name__}: {err}"[:600]
        finally:
            print(f"[{label}] {time.monotonic() - began:.1f}s", flush=True)
            self.save()

    def weights(self) -> Path:
        path = self.cache / (SMOKE_WEIGHTS_NAME if self.smoke else WEIGHTS_NAME)
        if not path.exists():
            self.res["weights"] = {"path": str(path), **make_weights(path, self.cfg, self.device, self.dtype)}
        return path

    def load(self) -> dict:
        return {"model_path": str(self.weights()), "dtype": self.dtype, "config": self.cfg,
                "attention": self.args.attention}

    def todo(self, n: int, configs) -> list:
        return [(r, s) for r, s in configs if str(n) not in self.res["forward_s"].get(key(r, s), {})]

    def record(self, n: int, res: str, speakers: int, m: dict) -> None:
        k, g = key(res, speakers), str(n)
        for name in ("forward_s", "step_s", "first_s", "finite"):
            self.res[name].setdefault(k, {})[g] = m[name]
        ref = self.cache / f"ref_{'smoke_' if self.smoke else ''}{k}.pt"
        if n == 1:
            torch.save(m["out"], ref)
        elif ref.exists():
            self.res["vs_1gpu"].setdefault(k, {})[g] = compare(m["out"], torch.load(ref, weights_only=True))
        print(f"  {k} on {n} GPU(s): {m['forward_s']:.3f} s/forward, {m['step_s']:.3f} s/step", flush=True)

    def run_on(self, n: int, configs, with_fast: bool) -> None:
        todo = self.todo(n, configs)
        fast = with_fast and str(n) not in self.res["fast_window_dit_s"]
        if not todo and not fast:
            return
        runner, pool = (self._local() if n == 1 else self._pool(n))
        try:
            for res, speakers in todo:
                steps = passes(self.cfg, self.latents[res], speakers, self.dtype)
                self.guard(f"{key(res, speakers)}_{n}gpu",
                           lambda: self.record(n, res, speakers, measure(runner, steps, self.args.reps)))
            if fast:
                self.guard(f"fast_window_{n}gpu", lambda: self.res["fast_window_dit_s"].__setitem__(
                    str(n), fast_window(runner, self.cfg, self.latents["480p"], self.dtype)))
            if pool is not None:
                self.guard(f"worker_memory_{n}gpu", lambda: self.res["worker_memory"].setdefault(
                    str(n), []).append(worker_stats(pool)))
            elif self.device.type == "cuda":
                self.res["worker_memory"].setdefault("1", []).append(
                    [{"peak_gib": torch.cuda.max_memory_allocated(self.device) / bl.GIB}])
        finally:
            if pool is not None:
                pool.stop("benchmark done")
            del runner
            bl.free_cuda()

    def _local(self):
        resolved = attention_backends.resolve(self.args.attention, self.device, "--attention")
        if resolved.backend != attention.get_backend():
            attention.set_backend(resolved.backend)   # the same choice the workers make
        load = self.load()
        load.pop("attention")
        began = time.monotonic()
        model = load_dit(**load, device=self.device)
        self.res["startup_s"].setdefault("1", []).append(time.monotonic() - began)
        self.res["attention_label"] = resolved.label
        return Local(model, self.device), None

    def _pool(self, n: int):
        pool = WorkerPool(self.load(), n, device="cpu" if self.smoke else "cuda", idle_s=0)
        began = time.monotonic()
        pool.start()
        self.res["startup_s"].setdefault(str(n), []).append(time.monotonic() - began)
        self.save()
        return Pooled(ParallelDiT(pool, self.dtype)), pool

    def run(self) -> dict:
        phases = [(FIRST + REST, True)] if self.smoke else [(FIRST, True), (REST, False)]
        for configs, with_fast in phases:
            for n in self.gpus:
                self.guard(f"run_{n}gpu", lambda: self.run_on(n, configs, with_fast))
        return summarize(dict(self.res))


def summarize(res: dict) -> dict:
    """The issue's record keys from the details (null where a GPU count was not measured)."""
    res["gpus_measured"] = sorted({int(g) for per in res["forward_s"].values() for g in per})
    res["speedup_forward"], res["speedup_step"] = {}, {}
    for name, out in (("forward_s", "speedup_forward"), ("step_s", "speedup_step")):
        for k, per in res[name].items():
            if "1" in per:
                res[out][k] = {g: per["1"] / s for g, s in per.items() if g != "1"}
    base = res["speedup_step"].get(key("480p", 1), {})
    res["speedup"] = {g: base.get(g) for g in ("2", "4", "8")}
    diffs = [c["max_abs"] for per in res["vs_1gpu"].values() for c in per.values()]
    res["max_abs_vs_1gpu"] = max(diffs) if diffs else None
    rels = [c["rel_l2"] for per in res["vs_1gpu"].values() for c in per.values()]
    res["max_rel_l2_vs_1gpu"] = max(rels) if rels else None
    res["fast_window_s_8gpu"] = res["fast_window_dit_s"].get("8")
    res["video_s_per_wall_s"] = {g: VIDEO_S / s for g, s in res["fast_window_dit_s"].items()}
    return res


def _ray_init() -> bool:
    """Start Ray with the multicast-off variables in the job's env (every worker gets them)."""
    for k, v in NCCL_ENV.items():
        os.environ.setdefault(k, v)
    ray = import_ray()
    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in NCCL_ENV}})
    return True


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny golden-config DiT on the CPU, 1 vs 2 gloo workers")
    p.add_argument("--out", type=Path, help="the record (default bench/results/multi-gpu-measured-<card>.json)")
    p.add_argument("--cache", default=None if "--smoke" in (argv or sys.argv) else
                   os.path.join(tempfile.gettempdir(), "infinitetalk_multi_gpu"),
                   help="where the random weight file, the 1-GPU outputs and the progress live")
    p.add_argument("--gpus", type=int, nargs="*", help=f"GPU counts (default {GPU_COUNTS}, those present)")
    p.add_argument("--reps", type=int, default=None, help="timed forwards after the warm-up (default 3; smoke 1)")
    p.add_argument("--attention", default="auto", help="attention choice, in this process and every worker")
    p.add_argument("--fresh", action="store_true", help="forget the progress in --cache (the weights stay)")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.smoke else 3)
    if not args.smoke and not torch.cuda.is_available():
        p.error("needs CUDA GPUs (or --smoke)")
    owned = _ray_init()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with tempfile.TemporaryDirectory(prefix="multi_gpu_smoke_") as tmp, torch.inference_mode():
            args.cache = args.cache or tmp           # smoke without --cache: nothing left behind
            res = Bench(args).run()
    finally:
        if owned:
            import_ray().shutdown()
    path = bl.write_results(res, args.out, prefix="multi-gpu-measured-")
    print(json.dumps({k: res[k] for k in ("card", "gpus_measured", "speedup", "max_abs_vs_1gpu",
                                          "fast_window_s_8gpu", "errors")}, indent=1), flush=True)
    print(f"wrote {path}", flush=True)
    return res


if __name__ == "__main__":
    main()
