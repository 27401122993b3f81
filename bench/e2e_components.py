"""Everything around the DiT for one 81-frame 480p window: umT5, audio front end + wav2vec2, Wan 2.1 VAE, CLIP-H.

    python bench/e2e_components.py --out $OUT/e2e.json          # on the GPU: full sizes, random weights
    python bench/e2e_components.py --smoke --out X              # tiny sizes on the CPU in seconds (tests)

Models are built with random weights directly on the device. GPU parts: CUDA events, median of --reps
after one warm-up (bench_lib.time_cuda), peak = torch.cuda.max_memory_allocated (weights included).
The audio front end (mono, soxr resample 44.1 -> 16 kHz, pyloudnorm -23 LUFS) is CPU time
(perf_counter). VAE and CLIP are the host's own classes (comfy.ldm.wan.vae.WanVAE,
comfy.clip_model.CLIPVisionModelProjection) imported from .host/ComfyUI; on an import failure the
VAE is recorded "not measured: <reason>" and CLIP falls back to a plain ViT-H/14 of this file.
Window totals combine these with DiT forward times given on the command line (defaults: the H100
numbers of docs/PERFORMANCE.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import bench_lib as bl  # noqa: E402
from infinitetalk.models.umt5 import UMT5Encoder  # noqa: E402
from infinitetalk.models.wav2vec import Wav2Vec2At25fps  # noqa: E402
from infinitetalk.media import speech_features  # noqa: E402

COMFY = bl.ROOT / ".host" / "ComfyUI"
FULL = dict(t5=dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24),
            t5_len=512, w2v={}, audio_s=10.0, vae_dim=96, vae_dtypes="bf16,fp32", frames=81, ctx_frames=9, hw=(480, 832), clip={})
SMOKE = dict(t5=dict(vocab=1000, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2), t5_len=16,
             w2v=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
             audio_s=1.0, vae_dim=4, frames=5, ctx_frames=1, hw=(16, 16), vae_dtypes="fp32",
             clip=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                       projection_dim=32))
MODES = {"fusionx_4x2": (4, 2), "fusionx_8x2": (8, 2), "standard_40x3": (40, 3)}


def cpu_time(fn, reps) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def measure(fn, device, reps) -> dict:
    """{"s": median, "times", "peak_gib"}: CUDA events on the GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        med, times, _ = bl.time_cuda(fn, reps)
        return {"s": med, "times": times, "peak_gib": torch.cuda.max_memory_allocated() / bl.GIB}
    med, times = cpu_time(fn, reps)
    return {"s": med, "times": times, "peak_gib": None}


def randomize(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Fill every parameter (host ops skip init, leaving torch.empty memory) with N(0, std)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval().requires_grad_(False)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- parts -----------------------------------------------------------------------------------------
def bench_t5(cfg, device, reps) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        model = UMT5Encoder(**cfg["t5"], device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    ids = torch.randint(0, cfg["t5"]["vocab"], (1, cfg["t5_len"]), device=device)
    mask = torch.ones_like(ids)
    mask[:, cfg["t5_len"] // 4:] = 0  # a realistic prompt: padded to 512

    def fn():  # prompt and negative prompt: two B=1 encodes (as the node runs them)
        model(ids, mask), model(ids, mask)
    res = measure(fn, device, reps)
    res.update(params=n_params(model), dtype="bf16", tokens=f"2 x {cfg['t5_len']}")
    return res


def bench_audio_prep(cfg, reps) -> dict:
    """CPU front end on a 44.1 kHz stereo clip: mono + resample, then loudness normalisation."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((2, int(44100 * cfg["audio_s"])))).astype(np.float32)
    res = {"input": f"{cfg['audio_s']:g} s 44.1 kHz stereo"}
    try:
        import soxr  # noqa: F401
        resample, res["resampler"] = (lambda x: speech_features.resample(x, 44100)), "soxr HQ (the pack's)"
    except ImportError:  # not on the device image: scipy polyphase as a labelled stand-in
        from scipy.signal import resample_poly
        resample = lambda x: resample_poly(x, 160, 441).astype(np.float32)  # noqa: E731
        res["resampler"] = "scipy resample_poly 160/441 (stand-in: soxr not installed)"
    res["mono_resample_s"] = cpu_time(lambda: resample(speech_features.to_mono(wave)), reps)[0]
    wav16k = resample(speech_features.to_mono(wave))
    try:
        res["loudness_norm_s"] = cpu_time(lambda: speech_features.loudness_norm(wav16k), reps)[0]
    except ImportError as err:
        res["loudness_norm_s"] = f"not measured: {err}"
    res["_wav16k"] = wav16k
    return res


def bench_wav2vec(cfg, device, reps, wav16k) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        model = Wav2Vec2At25fps(dict(cfg["w2v"])).float().requires_grad_(False)
    model = model.to(device)  # transformers makes a few tensors on the CPU explicitly
    out = {}

    def fn():
        out["y"] = speech_features.embed_waveform(model, wav16k)
    res = measure(fn, device, reps)
    res.update(params=n_params(model), dtype="fp32", frames=int(out["y"].shape[0]),
               samples_16k=int(wav16k.shape[-1]))
    return res


def import_host(device):
    """The host modules the VAE / CLIP need (ComfyUI on sys.path; --cpu set when there is no GPU)."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.cli_args
    if device.type != "cuda":
        comfy.cli_args.args.cpu = True  # model_management otherwise asks CUDA for a device at import
    import comfy.ldm.wan.vae as wan_vae
    return wan_vae


def bench_vae(cfg, device, reps, dtypes) -> dict:
    try:
        wan_vae = import_host(device)
    except Exception as err:  # noqa: BLE001 - recorded, not fatal
        traceback.print_exc()
        return {"status": f"not measured: {type(err).__name__}: {err}"[:300]}
    res = {"class": "comfy.ldm.wan.vae.WanVAE", "dim": cfg["vae_dim"]}
    h, w = cfg["hw"]
    lat_t = 1 + (cfg["frames"] - 1) // 4
    for name in dtypes:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
        torch.manual_seed(0)
        with torch.device(device):
            vae = wan_vae.WanVAE(dim=cfg["vae_dim"], z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
        vae = randomize(vae.to(device=device, dtype=dtype))
        res["params"] = n_params(vae)
        clip81 = torch.rand(1, 3, cfg["frames"], h, w, device=device, dtype=dtype) * 2 - 1
        clip9 = clip81[:, :, :cfg["ctx_frames"]].contiguous()
        lat = torch.randn(1, 16, lat_t, h // 8, w // 8, device=device, dtype=dtype)
        jobs = {f"encode_{cfg['frames']}f": lambda: vae.encode(clip81),
                f"encode_{cfg['ctx_frames']}f": lambda: vae.encode(clip9),
                f"decode_{lat_t}lat": lambda: vae.decode(lat)}
        for job, fn in jobs.items():
            key = f"{name}_{job}"
            try:
                with torch.no_grad():
                    res[key] = measure(fn, device, reps)
            except torch.OutOfMemoryError as err:
                res[key] = {"status": f"not measured: OOM: {err}"[:300]}
            bl.free_cuda()
        del vae, clip81, clip9, lat
        bl.free_cuda()
    return res


class ViTH14(nn.Module):
    """Fallback only: a plain pre-LN ViT-H/14 (1280 wide, 32 layers, 16 heads, 5120 MLP), ~632M params."""

    def __init__(self, dim=1280, layers=32, heads=16, mlp=5120, image=224, patch=14):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch, bias=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.pre = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, 0.0, "gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.blocks(self.pre(x))


def bench_clip(cfg, device, reps) -> dict:
    dtype = torch.bfloat16
    h, w = cfg["hw"]
    frame = torch.rand(1, h, w, 3, device=device)  # the host's IMAGE layout
    try:
        import_host(device)
        import comfy.clip_model
        import comfy.ops
        config = json.loads((COMFY / "comfy" / "clip_vision_config_h.json").read_text()) | cfg["clip"]
        with torch.device(device):
            model = comfy.clip_model.CLIPVisionModelProjection(config, dtype, device, comfy.ops.manual_cast)
        model = randomize(model)
        which = "host comfy.clip_model.CLIPVisionModelProjection (clip_vision_config_h.json)"
        prec = "weights bf16, fp32 activations (host manual_cast + fp32 pixel_values, as encode_image)"

        def run(px):
            return model(pixel_values=px, intermediate_output=-2)[1]  # penultimate: what Wan uses
    except Exception as err:  # noqa: BLE001 - fall back to a same-size ViT
        traceback.print_exc()
        small = {"dim": 64, "layers": 2, "heads": 4, "mlp": 128} if cfg["clip"] else {}
        with torch.device(device):
            model = randomize(ViTH14(**small).to(dtype))
        prec = "bf16"
        which = f"own plain ViT-H/14 (host class not importable: {type(err).__name__}: {err})"[:300]

        def run(px):
            return model(px.to(dtype))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device).view(1, 3, 1, 1)

    def fn():  # encode_image(crop=False): bicubic resize to 224, quantise to 8 bit, normalise, encode
        px = nn.functional.interpolate(frame.movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True)
        px = ((torch.clip(255.0 * px, 0, 255).round() / 255.0) - mean) / std
        with torch.no_grad():
            return run(px)
    res = measure(fn, device, reps)
    res.update(model=which, params=n_params(model), dtype=prec)
    return res


# -- totals ----------------------------------------------------------------------------------------
def _s(res, *path):
    for key in path:
        res = res.get(key) if isinstance(res, dict) else None
    return res if isinstance(res, (int, float)) else None


def totals(res, dit: dict, cfg) -> dict:
    """Seconds per window: DiT (steps x passes x forward) + per-window VAE/CLIP; once per video apart."""
    lat_t = 1 + (cfg["frames"] - 1) // 4
    prep = res.get("audio_prep", {})
    once = [_s(res, "t5", "s"), _s(prep, "mono_resample_s"), _s(prep, "loudness_norm_s"), _s(res, "wav2vec", "s")]
    vae = res.get("vae", {})
    vd = "bf16" if _s(vae, f"bf16_decode_{lat_t}lat", "s") is not None else "fp32"  # bf16 as the host runs it
    enc81, enc9 = _s(vae, f"{vd}_encode_{cfg['frames']}f", "s"), _s(vae, f"{vd}_encode_{cfg['ctx_frames']}f", "s")
    dec, clip = _s(vae, f"{vd}_decode_{lat_t}lat", "s"), _s(res, "clip", "s")
    per_still = [enc9, dec]  # later windows of a still image: context frames in, frames out
    per_video = [enc81, clip, enc9, dec]  # video source: a new keyframe every window
    out = {"vae_dtype": vd, "once_per_video_s": sum(x for x in once if x is not None),
           "missing": [n for n, x in zip(("t5", "resample", "loudness", "wav2vec", "vae_enc81", "clip",
                                          "vae_enc9", "vae_dec"), once + [enc81, clip, enc9, dec]) if x is None]}
    for prec, fwd in dit.items():
        for mode, (steps, passes) in MODES.items():
            d = steps * passes * fwd
            still = d + sum(x or 0 for x in per_still)
            video = d + sum(x or 0 for x in per_video)
            out[f"{prec}_{mode}"] = {"dit_s": d, "window_still_s": still, "window_video_s": video,
                                     "first_window_s": video + out["once_per_video_s"],
                                     "non_dit_share_still": (still - d) / still}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, 1 repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dit-bf16", type=float, default=3.137, help="s / DiT forward, bf16 480p (H100)")
    ap.add_argument("--dit-fp8", type=float, default=2.764, help="s / DiT forward, fp8 480p (H100)")
    ap.add_argument("--vae-dtypes", help="default bf16,fp32 (smoke: fp32; CPU bf16 conv3d is slow)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    reps = 1 if args.smoke else args.reps
    res = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "smoke": args.smoke, "reps": reps, "dit_forward_s": {"bf16": args.dit_bf16, "fp8": args.dit_fp8},
           "window": {"frames": cfg["frames"], "hw": list(cfg["hw"]), "audio_s": cfg["audio_s"]}}
    parts = [("t5", lambda: bench_t5(cfg, device, reps)),
             ("audio_prep", lambda: bench_audio_prep(cfg, max(reps, 3))),
             ("wav2vec", lambda: bench_wav2vec(cfg, device, reps, res["audio_prep"].pop("_wav16k"))),
             ("vae", lambda: bench_vae(cfg, device, reps, (args.vae_dtypes or cfg["vae_dtypes"]).split(","))),
             ("clip", lambda: bench_clip(cfg, device, reps))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for name, fn in parts:
            t0 = time.time()
            try:
                res[name] = fn()
            except Exception as err:  # noqa: BLE001 - one failing part must not lose the others
                traceback.print_exc()
                res[name] = {"status": f"not measured: {type(err).__name__}: {err}"[:300]}
            print(f"[{name}] {time.time() - t0:.1f}s", flush=True)
            bl.free_cuda()
            args.out.write_text(json.dumps(res, indent=1, default=str))  # partial results survive a cut-off
    res["totals"] = totals(res, res["dit_forward_s"], cfg)
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print_table(res)
    return res


def print_table(res):
    print(f"\n{res['card']}  torch {res['torch']}  (median of {res['reps']})")
    print(f"{'component':34} {'s':>9} {'peak GiB':>9}")
    rows = [("umT5 encode 2x512 bf16", res.get("t5")), ("wav2vec2 fp32", res.get("wav2vec")),
            ("CLIP-H encode 1 frame", res.get("clip"))]
    rows += [(f"VAE {k}", v) for k, v in res.get("vae", {}).items() if isinstance(v, dict)]
    for label, r in rows:
        r = r or {}
        s, p = r.get("s"), r.get("peak_gib")
        print(f"{label:34} {'-' if s is None else f'{s:.3f}':>9} {'-' if p is None else f'{p:.1f}':>9}"
              + ("" if s is not None else f"  {r.get('status', '')}"))
    prep = res.get("audio_prep", {})
    print(f"audio CPU: mono+resample {prep.get('mono_resample_s')}  loudness {prep.get('loudness_norm_s')}"
          f"  ({prep.get('resampler')})")
    t = res["totals"]
    print(f"\nonce per video (t5 + audio + wav2vec): {t['once_per_video_s']:.3f} s; missing: {t['missing']}")
    print(f"{'mode':22} {'DiT s':>8} {'window still':>13} {'window video':>13} {'first win':>10} {'non-DiT':>8}")
    for k, v in t.items():
        if isinstance(v, dict):
            print(f"{k:22} {v['dit_s']:8.2f} {v['window_still_s']:13.2f} {v['window_video_s']:13.2f} "
                  f"{v['first_window_s']:10.2f} {100 * v['non_dit_share_still']:7.1f}%")


if __name__ == "__main__":
    main()
