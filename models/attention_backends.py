"""Attention libraries as user choices of the pack's dispatch (models/attention.py).

Each choice is an adapter: our layout q/k/v [B, H, L, D] (scale 1/sqrt(D), optional bool mask) in,
the library's call, [B, H, Lq, D] out. A masked call, a device outside :data:`DEVICE_TYPES`, or a
dtype / head size the library does not take goes to SDPA instead (the masked calls are the short
speaker-routed ones; the video self-attention is mask-free). Libraries are imported only when a
choice is resolved; none of them is a requirement of the pack.

:func:`resolve` turns a choice into a registered backend name: a named choice that is not installed
or fails its test call here raises :class:`AttentionUnavailable` (one message naming what to
install); ``auto`` takes the first of :data:`AUTO_ORDER` that imports and passes the accuracy
self-check against SDPA on this device, else SDPA. Results are kept per (choice, device).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import attention

log = logging.getLogger(__name__)

CHOICES = attention.USER_CHOICES
# Preference of ``auto``, first usable wins; ordered by measurement only (bench/attention_choices.py,
# docs/PERFORMANCE.md "Fourth round"). On an H200 (torch 2.11) SDPA ran the 480p self-attention at
# 571 TFLOP/s, sageattention 1.0.6 (PyPI's) at 441, comfy-kitchen int8 at 464, with 6-7x SDPA's
# error: no measured library beat it, so auto is SDPA. flash_attn and xformers were not measured;
# a library enters this order (ahead of "sdpa") only with a measured win, and is otherwise named.
AUTO_ORDER = ("sdpa",)
# Device types on which a library adapter calls its library (elsewhere: SDPA). The CPU tests add
# "cpu" to run stand-in libraries.
DEVICE_TYPES = ["cuda"]
# Self-check bars: relative L2 error against fp32 SDPA on bf16 inputs. Exact kernels only round
# (~3e-3); 8-bit kernels measure 1-5 % (docs/PERFORMANCE.md).
EXACT_BAR, QUANTIZED_BAR = 2e-2, 8e-2
QUANTIZED = frozenset({"sageattention", "comfy_kitchen_int8", "int8", "int8_fp8"})
CHECK_SHAPE = (1, 4, 1536, 128)   # queries: Wan's head size
CHECK_KEYS = (1536, 257, 64)      # video self-attention (> our kernels' MIN_KEYS), CLIP image, 2-speaker audio


class AttentionUnavailable(ValueError):
    """A named attention choice cannot run here; the message says what to install or pick."""


@dataclass(frozen=True)
class Resolved:
    choice: str       # what was asked ("auto", "flash_attn", ...)
    backend: str      # the name registered in models/attention.py
    label: str        # what runs, in words, for the loader's info output


@dataclass(frozen=True)
class Library:
    module: str                               # import name
    label: str                                # for info: which library runs
    install: str                              # the fix when nothing of the choice is importable
    call: Callable                            # (module, q, k, v, scale) -> out, our layout
    dtypes: tuple = (torch.float16, torch.bfloat16)
    head_dims: tuple = tuple(range(1, 257))
    # Inside a compiled block: only libraries whose call is a torch custom op with a fake kernel stay
    # in the graph; the others are called outside it (torch.compiler.disable): a graph break costs
    # little beside a 32k-token attention, a failed trace would cost the whole compile.
    in_graph: bool = False


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out   # some versions also return the LSE


def _blhd(t: torch.Tensor) -> torch.Tensor:
    t = t.transpose(1, 2)               # [B, L, H, D]: a free view of the model's own layout
    return t if t.stride(-1) == 1 else t.contiguous()


def _flash(mod, q, k, v, scale):
    return _first(mod.flash_attn_func(_blhd(q), _blhd(k), _blhd(v), softmax_scale=scale)).transpose(1, 2)


def _sage(mod, q, k, v, scale):
    # sageattention smooths k (minus its mean over tokens: softmax-invariant) IN PLACE (1.0.6: k -= km);
    # our k also feeds the speaker-routing map, so it is smoothed here into a new tensor instead.
    k = k - k.mean(dim=2, keepdim=True)
    return _first(mod.sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=scale, smooth_k=False))


def _xformers(mod, q, k, v, scale):
    return mod.memory_efficient_attention(_blhd(q), _blhd(k), _blhd(v), scale=scale).transpose(1, 2)


def _kitchen(mod, q, k, v, scale):
    return mod.int8_attention(*(t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v)), scale=scale)


_FA_INSTALL = ("pip install flash-attn (FA2), or flash-attn-4 (FA4, Hopper/Blackwell), or FA3's "
               "flash_attn_interface built from the flash-attention repository's hopper/ folder")
LIBRARIES: dict[str, tuple[Library, ...]] = {
    "flash_attn": (Library("flash_attn_interface", "FA3 flash_attn_interface", _FA_INSTALL, _flash),
                   Library("flash_attn.cute", "FA4 flash_attn.cute", _FA_INSTALL, _flash),
                   Library("flash_attn", "FA2 flash_attn", _FA_INSTALL, _flash)),
    "sageattention": (Library("sageattention", "sageattention", "pip install sageattention", _sage,
                              head_dims=(64, 96, 128)),),
    "xformers": (Library("xformers.ops", "xformers", "pip install xformers (the build matching your torch)",
                         _xformers, (torch.float16, torch.bfloat16, torch.float32)),),
    "comfy_kitchen_int8": (Library("comfy_kitchen", "comfy_kitchen int8_attention", "pip install comfy-kitchen",
                                   _kitchen, (torch.float16, torch.bfloat16, torch.float32), in_graph=True),),
}
PACKAGES = {"flash_attn": "flash-attn", "sageattention": "sageattention", "xformers": "xformers",
            "comfy_kitchen_int8": "comfy-kitchen"}

_host: dict = {"get": None}      # loaders/run_choices.py injects the host's attention function getter
_resolved: dict[tuple[str, str], Resolved | AttentionUnavailable] = {}
_refused: dict[str, str] = {}    # library -> the first run-time refusal (logged once)


def set_host_attention(getter: Callable | None) -> None:
    """``getter()`` -> the host's attention function (ComfyUI's ``optimized_attention``), read at
    each call so the host's --use-*-attention flags and later overrides apply."""
    _host["get"] = getter


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)


def adapter(lib: Library, mod, safe: bool = True) -> Callable:
    """The backend function of ``lib`` (imported as ``mod``): the library where it applies, else SDPA.
    ``safe``: a call the library refuses at run time (a shape its checks did not foresee) is served
    by SDPA with one warning per library, never a failed prompt (the self-check runs unsafe)."""
    def guarded(mod, q, k, v, scale):
        try:
            return lib.call(mod, q, k, v, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the library raises: SDPA serves this call
            if lib.module not in _refused:
                _refused[lib.module] = f"{type(err).__name__}: {err}"[:300]
                log.warning("InfiniteTalk: %s refused q %s, k %s (%s); SDPA serves such calls",
                            lib.label, tuple(q.shape), tuple(k.shape), _refused[lib.module])
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    call = guarded if safe and not lib.in_graph else lib.call
    call = call if lib.in_graph else torch.compiler.disable(call)

    def fn(q, k, v, mask=None):
        if (mask is None and q.device.type in DEVICE_TYPES and q.dtype in lib.dtypes
                and q.dtype == k.dtype == v.dtype and q.shape[-1] in lib.head_dims
                and q.shape[-1] == k.shape[-1] == v.shape[-1]):
            return call(mod, q, k, v, q.shape[-1] ** -0.5).to(q.dtype)
        return _sdpa(q, k, v, mask)
    fn.__name__ = lib.module.replace(".", "_")
    return fn


def _host_fn(q, k, v, mask=None):
    """The host's attention on our layout (skip_reshape: [B, H, L, D] in and out); masks -> SDPA."""
    if mask is not None:
        return _sdpa(q, k, v, mask)
    # k is cloned: the host's sageattention path smooths k in place, and our k also feeds the
    # speaker-routing map (one copy of k costs well under 1 % of the attention it feeds).
    return _host["get"]()(q, k.clone(), v, q.shape[1], skip_reshape=True, skip_output_reshape=True)


def self_check(fn: Callable, device: torch.device, bar: float) -> float:
    """Largest relative L2 error of ``fn`` against fp32 SDPA on random bf16 inputs of
    :data:`CHECK_SHAPE` with the key counts of :data:`CHECK_KEYS` (offsets as real activations have
    them); raises RuntimeError above ``bar``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    worst = 0.0
    for keys in CHECK_KEYS:
        q = torch.randn(*CHECK_SHAPE, generator=g) * 2.0
        k, v = (torch.randn(*CHECK_SHAPE[:2], keys, CHECK_SHAPE[3], generator=g) for _ in range(2))
        k, v = k + 1.0, v + 0.5
        ref = F.scaled_dot_product_attention(q, k, v)
        out = fn(*(t.to(device, torch.bfloat16) for t in (q, k, v)), None)
        if tuple(out.shape) != CHECK_SHAPE:
            raise RuntimeError(f"test call returned shape {tuple(out.shape)}, expected {CHECK_SHAPE}")
        err = ((out.float().cpu() - ref).norm() / ref.norm()).item()
        if not err < bar:                  # NaN fails too
            raise RuntimeError(f"test call with {keys} keys differs from SDPA by {err:.3g} (relative L2, "
                               f"bar {bar:g})")
        worst = max(worst, err)
    return worst


def _unavailable(choice: str, why: str) -> AttentionUnavailable:
    return AttentionUnavailable(f"attention '{choice}' {why}; or pick auto or sdpa")


def _library(choice: str, device: torch.device) -> Resolved:
    bar = QUANTIZED_BAR if choice in QUANTIZED else EXACT_BAR
    failures = []
    for lib in LIBRARIES[choice]:
        try:
            mod = importlib.import_module(lib.module)
        except ImportError:
            continue
        except Exception as err:  # noqa: BLE001 - a broken install (missing CUDA libs, ABI): say why
            failures.append(f"{lib.label} does not import: {type(err).__name__}: {err}"[:200])
            continue
        if device.type not in DEVICE_TYPES:
            raise _unavailable(choice, f"needs a CUDA GPU and ComfyUI runs on {device.type}")
        try:
            err = self_check(adapter(lib, mod, safe=False), device, bar)
        except Exception as exc:  # noqa: BLE001 - any kernel/driver failure: this library can't run here
            failures.append(f"{lib.label}: {type(exc).__name__}: {exc}"[:300])
            continue
        attention.register_backend(choice, adapter(lib, mod))
        return Resolved(choice, choice, f"{lib.label} (self-check error {err:.1e})")
    if failures:
        raise _unavailable(choice, "cannot run here (" + "; ".join(failures) + ")")
    raise _unavailable(choice, f"needs the {PACKAGES[choice]} package: {LIBRARIES[choice][0].install}, "
                               f"then restart ComfyUI")


def _named(choice: str, device: torch.device) -> Resolved:
    if choice == "sdpa":
        return Resolved(choice, "sdpa", "sdpa")
    if choice in ("int8", "int8_fp8"):
        from . import flash_attention
        if device.type != "cuda" or not flash_attention.available(choice):
            why = flash_attention.status()["failed"] or f"ComfyUI runs on {device.type}"
            raise _unavailable(choice, f"is the pack's Triton kernel and needs a CUDA GPU with the triton "
                                       f"package (pip install triton); here: {why}")
        return Resolved(choice, f"triton_{choice}", f"our Triton {choice} kernel")
    if choice == "comfy":
        if _host["get"] is None:
            raise _unavailable(choice, "is ComfyUI's own attention and needs the ComfyUI host")
        attention.register_backend("comfy", _host_fn)
        if device.type in DEVICE_TYPES:
            try:
                self_check(_host_fn, device, QUANTIZED_BAR)   # the host may run sage: 8-bit bar
            except Exception as exc:  # noqa: BLE001 - whatever the host's function raises here
                raise _unavailable(choice, f"fails its test call here ({type(exc).__name__}: {exc})"[:300]) from None
        return Resolved(choice, "comfy", f"comfy ({getattr(_host['get'](), '__name__', 'host attention')})")
    return _library(choice, device)


def resolve(choice: str, device, source: str = "attention") -> Resolved:
    """The backend for ``choice`` on ``device`` (registered in models/attention.py); ``source`` names
    where the choice came from in the error for an unknown value."""
    value = (choice or "auto").strip().lower()
    if value not in CHOICES:
        raise ValueError(f"{source}={choice!r} is not one of {', '.join(CHOICES)}: set one of them")
    device = torch.device(device)
    key = (value, str(device))
    if key not in _resolved:
        try:
            _resolved[key] = _auto(device) if value == "auto" else _named(value, device)
        except AttentionUnavailable as err:
            _resolved[key] = err
    found = _resolved[key]
    if isinstance(found, AttentionUnavailable):
        raise AttentionUnavailable(str(found))
    return found


def _auto(device: torch.device) -> Resolved:
    if device.type not in DEVICE_TYPES:
        return Resolved("auto", "sdpa", f"sdpa (auto on {device.type})")
    skipped = []
    for choice in AUTO_ORDER:
        try:
            found = _named(choice, device)
        except AttentionUnavailable as err:
            skipped.append(str(err))
            continue
        if skipped:
            log.info("InfiniteTalk: attention auto skipped: %s", " | ".join(skipped))
        return Resolved("auto", found.backend, f"{found.label} (auto)")
    return Resolved("auto", "sdpa", "sdpa (auto)")


def forget() -> None:
    """Drop the kept resolutions (tests; a library installed while running needs a restart anyway)."""
    _resolved.clear()
    _refused.clear()
