"""Attention choices (models/attention_backends.py) and the compile fallback, on the CPU.

The libraries (sageattention, flash-attn FA2/FA3/FA4, xformers, comfy-kitchen) are not installed in
CI: stand-in modules in ``sys.modules`` implement each library's call signature and layout with SDPA
math (and record their calls), the adapters are allowed on the CPU (``DEVICE_TYPES``), and a
``None`` entry in ``sys.modules`` stands for "not installed".
"""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from infinitetalk.models import attention
from infinitetalk.models import attention_backends as ab
from infinitetalk.models.compile_guard import CompileFallback
from infinitetalk.models.wan_dit import WanModel

LIBRARY_MODULES = ("sageattention", "flash_attn_interface", "flash_attn", "flash_attn.cute", "xformers",
                   "xformers.ops", "comfy_kitchen")
CALLS: list[str] = []


def _sdpa_hnd(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _sdpa_bld(q, k, v, scale):   # [B, L, H, D] libraries
    assert q.stride(-1) == 1
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          scale=scale).transpose(1, 2)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def sage(factor: float = 1.0):
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True, **kwargs):
        assert tensor_layout == "HND" and not is_causal and q.shape[-1] in (64, 96, 128)   # as sageattention 1.0.6
        CALLS.append("sageattention")
        if smooth_k:
            k -= k.mean(dim=2, keepdim=True)          # sageattention 1.0.6 does this in place
        return _sdpa_hnd(q, k, v, sm_scale) * factor      # factor != 1: a library with wrong numbers
    return _module("sageattention", sageattn=sageattn)


def flash(name: str, with_lse: bool):
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        CALLS.append(name)
        out = _sdpa_bld(q, k, v, softmax_scale)
        return (out, None) if with_lse else out              # FA3/FA4 versions that return the LSE
    return _module(name, flash_attn_func=flash_attn_func)


def xformers_ops():
    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        CALLS.append("xformers")
        return _sdpa_bld(query, key, value, scale)
    return _module("xformers.ops", memory_efficient_attention=memory_efficient_attention)


def kitchen():
    def int8_attention(q, k, v, *, scale=None, attn_mask=None):
        CALLS.append("comfy_kitchen")
        return _sdpa_hnd(q, k, v, scale)
    return _module("comfy_kitchen", int8_attention=int8_attention)


@pytest.fixture
def libs(monkeypatch):
    """No library installed, adapters allowed on the CPU; ``libs(name=module)`` installs stand-ins."""
    for name in LIBRARY_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(ab, "DEVICE_TYPES", ["cuda", "cpu"])
    monkeypatch.setattr(ab, "_host", {"get": None})
    ab.forget()
    CALLS.clear()

    def install(**modules):
        for name in LIBRARY_MODULES:
            monkeypatch.setitem(sys.modules, name, None)
        for name, mod in modules.items():
            monkeypatch.setitem(sys.modules, name.replace("__", "."), mod)
        if "xformers__ops" in modules:
            monkeypatch.setitem(sys.modules, "xformers", _module("xformers", ops=modules["xformers__ops"]))
        ab.forget()
    yield install
    ab.forget()
    attention.set_backend("sdpa")


def _qkv(lk: int = 40, d: int = 64):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 24, d, generator=g)
    k, v = (torch.randn(2, 3, lk, d, generator=g) + 1.0 for _ in range(2))
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def _run(choice: str):
    resolved = ab.resolve(choice, "cpu")
    attention.set_backend(resolved.backend)
    CALLS.clear()
    q, k, v = _qkv()
    before = [t.clone() for t in (q, k, v)]
    out = attention.attention(q, k, v)
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v).float(), atol=2e-2, rtol=2e-2)
    for t, b in zip((q, k, v), before):      # k also feeds the speaker-routing map: never changed
        assert torch.equal(t, b)
    return resolved


@pytest.mark.parametrize("choice, modules, called", [
    ("sageattention", {"sageattention": sage()}, "sageattention"),
    ("flash_attn", {"flash_attn": flash("flash_attn", with_lse=False)}, "flash_attn"),
    ("xformers", {"xformers__ops": xformers_ops()}, "xformers"),
    ("comfy_kitchen_int8", {"comfy_kitchen": kitchen()}, "comfy_kitchen"),
])
def test_named_library_runs_in_its_layout(libs, choice, modules, called):
    libs(**modules)
    resolved = _run(choice)
    assert resolved.backend == choice and CALLS == [called]
    if choice == "sageattention":                               # a head size it lacks: SDPA
        q, k, v = _qkv(d=32)
        assert attention.attention(q, k, v).shape == q.shape and CALLS == [called]
    q, k, v = _qkv()
    mask = torch.ones(24, 40, dtype=torch.bool)
    mask[:, 30:] = False
    CALLS.clear()
    out = attention.attention(q, k, v, mask)                # masked: SDPA, the library is not called
    assert CALLS == []
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_flash_attn_takes_fa3_then_fa4_then_fa2(libs):
    libs(flash_attn=flash("flash_attn", False), flash_attn_interface=flash("flash_attn_interface", True))
    assert "FA3" in _run("flash_attn").label and CALLS == ["flash_attn_interface"]
    libs(flash_attn=flash("flash_attn", False), flash_attn__cute=flash("flash_attn.cute", True))
    assert "FA4" in _run("flash_attn").label and CALLS == ["flash_attn.cute"]
    libs(flash_attn=flash("flash_attn", False))
    assert "FA2" in _run("flash_attn").label and CALLS == ["flash_attn"]


@pytest.mark.parametrize("choice, fix", [
    ("sageattention", "needs the sageattention package: pip install sageattention"),
    ("flash_attn", "needs the flash-attn package: pip install flash-attn"),
    ("xformers", "needs the xformers package: pip install xformers"),
    ("comfy_kitchen_int8", "needs the comfy-kitchen package: pip install comfy-kitchen"),
    ("comfy", "needs the ComfyUI host"),
    ("int8", "needs a CUDA GPU with the triton package"),
])
def test_named_choice_not_installed_is_one_clear_error(libs, choice, fix):
    with pytest.raises(ab.AttentionUnavailable, match=f"^attention '{choice}' .*") as err:
        ab.resolve(choice, "cpu")
    assert fix in str(err.value) and "pick auto or sdpa" in str(err.value)


def test_named_library_on_the_cpu_says_it_needs_a_gpu(libs, monkeypatch):
    libs(sageattention=sage())
    monkeypatch.setattr(ab, "DEVICE_TYPES", ["cuda"])
    with pytest.raises(ab.AttentionUnavailable, match="'sageattention' needs a CUDA GPU and ComfyUI runs on cpu"):
        ab.resolve("sageattention", "cpu")


def test_named_library_with_wrong_numbers_is_refused(libs):
    libs(sageattention=sage(factor=1.5))
    with pytest.raises(ab.AttentionUnavailable, match="cannot run here .*differs from SDPA by"):
        ab.resolve("sageattention", "cpu")


def test_a_call_the_library_refuses_is_served_by_sdpa_with_one_warning(libs, caplog):
    def flash_attn_func(q, k, v, softmax_scale=None):
        if k.shape[1] == 40:                      # a key count no test call had
            raise RuntimeError("unsupported sequence length")
        return _sdpa_bld(q, k, v, softmax_scale)
    libs(flash_attn=_module("flash_attn", flash_attn_func=flash_attn_func))
    attention.set_backend(ab.resolve("flash_attn", "cpu").backend)
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            torch.testing.assert_close(attention.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert sum("SDPA serves such calls" in r.getMessage() for r in caplog.records) == 1


def test_self_check_covers_short_key_sets(libs):
    def flash_attn_func(q, k, v, softmax_scale=None):
        out = _sdpa_bld(q, k, v, softmax_scale)
        return out * 2 if k.shape[1] < 100 else out     # wrong only for the audio tokens' key count
    libs(flash_attn=_module("flash_attn", flash_attn_func=flash_attn_func))
    with pytest.raises(ab.AttentionUnavailable, match="with 64 keys differs from SDPA"):
        ab.resolve("flash_attn", "cpu")


def test_unknown_value_names_its_source():
    with pytest.raises(ValueError, match="environment variable X='sage' is not one of auto, sdpa, comfy"):
        ab.resolve("sage", "cpu", "environment variable X")


def test_auto_is_sdpa_until_a_library_measures_faster():
    assert ab.AUTO_ORDER == ("sdpa",)    # docs/PERFORMANCE.md "Fourth round": sdpa beat every measured library


def test_auto_takes_the_first_library_that_passes_its_self_check(libs, monkeypatch):
    monkeypatch.setattr(ab, "AUTO_ORDER", ("flash_attn", "sageattention", "xformers", "comfy", "sdpa"))
    libs(sageattention=sage(factor=1.5), xformers__ops=xformers_ops())   # no flash_attn; sage is wrong
    resolved = _run("auto")
    assert resolved.backend == "xformers" and resolved.label.endswith("(auto)") and CALLS == ["xformers"]
    libs(sageattention=sage(), xformers__ops=xformers_ops())
    assert _run("auto").backend == "sageattention"
    libs(flash_attn=flash("flash_attn", False), sageattention=sage())
    assert _run("auto").backend == "flash_attn"


def test_auto_without_libraries_and_on_the_cpu_is_sdpa(libs, monkeypatch):
    assert ab.resolve("auto", "cpu").backend == "sdpa"                  # nothing installed
    libs(flash_attn=flash("flash_attn", False))
    monkeypatch.setattr(ab, "DEVICE_TYPES", ["cuda"])
    resolved = ab.resolve("auto", "cpu")                                # installed, but the CPU
    assert resolved.backend == "sdpa" and resolved.label == "sdpa (auto on cpu)"


def test_comfy_uses_the_host_function_in_its_own_layout(libs):
    def optimized_attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kw):
        assert skip_reshape and skip_output_reshape and q.shape[1] == heads
        CALLS.append("host")
        k -= k.mean(dim=2, keepdim=True)             # the host's sage path smooths k in place
        return F.scaled_dot_product_attention(q, k, v)
    ab.set_host_attention(lambda: optimized_attention)
    resolved = _run("comfy")
    assert resolved.label == "comfy (optimized_attention)" and CALLS == ["host"]


def test_own_kernels_keep_their_names():
    assert attention.backend_for_choice("int8_fp8") == "triton_int8_fp8"
    assert set(attention.OWN_CHOICES) < set(attention.USER_CHOICES) == set(ab.CHOICES)


# -- compile: a failure at the first call falls back to eager with one warning -------------------
def _failing_compile(monkeypatch, error=RuntimeError("inductor: no C compiler")):
    calls = []

    def fake_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise error
        return compiled
    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_compile_failure_at_first_call_falls_back_once(monkeypatch, caplog):
    calls = _failing_compile(monkeypatch)
    failed = []
    guard = CompileFallback(lambda: failed.append(1))
    f, g = guard.wrap(lambda x: x + 1), guard.wrap(lambda x: x * 2)
    with caplog.at_level(logging.WARNING):
        assert f(1) == 2 and g(3) == 6 and f(2) == 3
    assert calls == [1] and failed == [1] and "no C compiler" in guard.failed
    assert [r.levelname for r in caplog.records].count("WARNING") == 1


def test_compile_passes_interrupts_and_oom_through(monkeypatch):
    class Interrupted(Exception):
        pass
    _failing_compile(monkeypatch, Interrupted())
    guard = CompileFallback(passthrough=(Interrupted,))
    with pytest.raises(Interrupted):
        guard.wrap(lambda x: x)(1)
    assert guard.failed is None
    _failing_compile(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.OutOfMemoryError):
        guard.wrap(lambda x: x)(1)


def test_model_blocks_run_eagerly_after_a_compile_failure(monkeypatch, caplog):
    torch.manual_seed(0)
    model = WanModel(dim=64, ffn_dim=128, text_dim=32, num_heads=4, num_layers=2, intermediate_dim=4,
                     output_dim=32, weight_init=True).eval()
    t_, h, w = 2, 4, 4
    args = (torch.randn(1, 16, t_, h, w), torch.tensor([500.0]), torch.randn(1, 5, 32),
            torch.randn(1, 257, 1280), torch.randn(1, 20, t_, h, w), torch.randn(1, 5, 5, 12, 768))
    eager = model(*args)
    calls = _failing_compile(monkeypatch)
    model.compile_blocks(fallback=True)
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(model(*args), eager)
        torch.testing.assert_close(model(*args), eager)
    assert calls == [1] and "no C compiler" in model.compile_failed()
    assert all("forward" not in block.__dict__ for block in model.blocks)   # uncompiled again
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
