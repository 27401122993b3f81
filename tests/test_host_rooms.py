"""The comfy-free rooms behind the host adapter, driven by a stand-in host: the kept encoders (reuse,
reload by file key), the idle-unload policy and timers, the DiT's dtype choice, its sampling / release
cycle and the node input each load error blames."""
from __future__ import annotations

import logging
import os
import threading
import types

import pytest
import torch
from torch import nn

from infinitetalk.loaders import idle_unload, kept_encoders, managed_dit
from infinitetalk.loaders.idle_unload import IDLE_ENV, IdleTimers, idle_unload_seconds

CPU = torch.device("cpu")
META = torch.device("meta")          # a second "device" that exists on every machine


def fake_host(**over):
    calls = []
    host = types.SimpleNamespace(
        calls=calls,
        torch_device=lambda: CPU, offload_device=lambda: CPU,
        text_encoder_devices=lambda: (CPU, CPU),
        free_memory_on=lambda device: 10**12, is_device_cpu=lambda device: str(device) == "cpu",
        supports_bf16=lambda device, n: False, supports_fp16=lambda device, n: False,
        soft_empty_cache=lambda: calls.append("empty"),
        host_attention=None, interrupt_exception=KeyboardInterrupt,
        queue_busy=lambda: False,
        make_patcher=lambda module, dtype, streaming=False, make_streamer=None: types.SimpleNamespace(
            model=module, load_device=over.get("load_device", CPU)),
        load_patcher=lambda p: calls.append("load"), unload_patcher=lambda p: calls.append("unload"))
    for key, value in over.items():
        setattr(host, key, value)
    return host


# ------------------------------------------------------------------ kept encoders
def test_kept_model_is_reused_until_its_file_changes(tmp_path):
    path = tmp_path / "enc.safetensors"
    path.write_bytes(b"A" * 200_000)
    loads = []

    def load(p, **kw):
        assert kept.model is None              # the old model is dropped before the new one is read
        loads.append(kw)
        return object()

    kept = kept_encoders.KeptModel(load)
    first = kept.get(str(path), device="x")
    assert kept.get(str(path), device="y") is first and loads == [{"device": "x"}]
    st = path.stat()
    with open(path, "r+b") as f:                # same size, other bytes, mtime put back
        f.seek(100_000)
        f.write(b"B" * 8)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert kept.get(str(path)) is not first and len(loads) == 2


def test_a_failed_load_is_tried_again(tmp_path):
    path = tmp_path / "enc.pth"
    path.write_bytes(b"x")
    results = [ValueError("damaged"), "model"]

    def load(p):
        r = results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    kept = kept_encoders.KeptModel(load)
    with pytest.raises(ValueError):
        kept.get(str(path))
    assert kept.get(str(path)) == "model"


class _Encoder(nn.Linear):
    def encode_trimmed(self, ids, mask):
        return self.weight.new_ones(1, int(mask.sum()), 4) * ids.new_ones(()).float()


@pytest.fixture
def umt5(tmp_path, monkeypatch):
    path = tmp_path / "umt5.safetensors"
    path.write_bytes(b"u")
    model = _Encoder(2, 2)
    tokenizer = lambda text: (torch.ones(1, 8, dtype=torch.long),      # noqa: E731
                              (torch.arange(8) < len(text)).long()[None])
    monkeypatch.setattr(kept_encoders, "_text", kept_encoders.KeptModel(lambda p: (model, tokenizer)))
    return str(path), model


def test_text_encoder_runs_where_it_fits(umt5, caplog):
    path, model = umt5
    host = fake_host(text_encoder_devices=lambda: (META, CPU), is_device_cpu=lambda d: d.type == "cpu",
                     free_memory_on=lambda device: 10)          # no room now: the CPU
    with caplog.at_level(logging.INFO):
        got, _ = kept_encoders.text_encoder(path, host)
    assert next(got.parameters()).device == CPU and "does not fit" in caplog.text
    host.free_memory_on = lambda device: 10**12                 # room: the text-encoder device
    got, _ = kept_encoders.text_encoder(path, host)
    assert got is model and next(got.parameters()).device == META


def test_encode_texts_trims_and_gives_the_encoder_back(umt5):
    path, model = umt5
    host = fake_host()
    out = kept_encoders.encode_texts(path, ["abc", "hello"], host)
    assert [tuple(o.shape) for o in out] == [(1, 3, 4), (1, 5, 4)]
    assert all(o.dtype == torch.float32 and o.device == CPU for o in out) and host.calls == ["empty"]


def test_speech_model_goes_back_to_the_offload_device(tmp_path, monkeypatch):
    path = tmp_path / "w2v.safetensors"
    path.write_bytes(b"w")
    monkeypatch.setattr(kept_encoders, "_speech", kept_encoders.KeptModel(lambda p, device=None: nn.Linear(2, 2)))
    host = fake_host(text_encoder_devices=lambda: (CPU, META))
    model = kept_encoders.load_speech_model(str(path), host)
    assert next(model.parameters()).device == CPU
    kept_encoders.release_speech_model(host)
    assert next(kept_encoders._speech.model.parameters()).device == META and host.calls == ["empty"]
    kept_encoders.release_speech_model(host)              # already there: nothing to do
    assert host.calls == ["empty"]


# ------------------------------------------------------------------ idle unload
@pytest.mark.parametrize("value, seconds", [(None, 300.0), ("12.5", 12.5), ("0", 0.0), ("-1", -1.0),
                                            ("soon", 300.0)])
def test_idle_seconds_from_the_environment(value, seconds, caplog):
    environ = {} if value is None else {IDLE_ENV: value}
    with caplog.at_level(logging.WARNING):
        assert idle_unload_seconds(environ) == seconds
    assert (IDLE_ENV in caplog.text) == (value == "soon")


def test_idle_timers_fire_once_and_can_be_cancelled():
    timers, fired = IdleTimers(), threading.Event()
    timers.arm("a", 60, fired.set)
    assert timers.armed("a")
    timers.cancel("a")
    assert not timers.armed("a")
    timers.arm("b", 0.01, fired.set)
    assert fired.wait(30)


# ------------------------------------------------------------------ the DiT in the host
@pytest.mark.parametrize("precision, bf16, fp16, dtype", [
    ("bf16", False, False, torch.bfloat16), ("fp16", True, True, torch.float16),
    ("fp32", True, True, torch.float32), ("auto", True, True, torch.bfloat16),
    ("auto", False, True, torch.float16), ("auto", False, False, torch.float32)])
def test_pick_dtype(precision, bf16, fp16, dtype):
    host = fake_host(supports_bf16=lambda d, n: bf16, supports_fp16=lambda d, n: fp16)
    assert managed_dit.pick_dtype(precision, CPU, host) == dtype


@pytest.fixture
def timers(monkeypatch):
    fresh = IdleTimers()
    monkeypatch.setattr(managed_dit, "_idle", fresh)
    return fresh


def _model(host, gpus=1):
    return managed_dit.HostModel(host.make_patcher(nn.Linear(2, 2), torch.float32), "InfiniteTalk",
                                 gpus=gpus, host=host)


def test_sampling_then_release_arms_the_idle_timer(timers, monkeypatch):
    monkeypatch.setenv(IDLE_ENV, "600")
    host = fake_host(load_device=META)                    # not the CPU: the timer applies
    model = _model(host)
    assert managed_dit.load_for_sampling(model) is model.module and host.calls == ["load"]
    managed_dit.release_after_sampling(model)
    assert timers.armed(id(model.patcher))
    managed_dit.load_for_sampling(model)                  # the next run takes it back
    assert not timers.armed(id(model.patcher))
    managed_dit.release_after_sampling(model, interrupted=True)   # an interrupt: out of VRAM now
    assert host.calls == ["load", "load", "unload"] and not timers.armed(id(model.patcher))


@pytest.mark.parametrize("seconds, load_device", [("0", META), ("600", CPU)])
def test_no_idle_timer_when_off_or_on_the_cpu(timers, monkeypatch, seconds, load_device):
    monkeypatch.setenv(IDLE_ENV, seconds)
    model = _model(fake_host(load_device=load_device))
    managed_dit.release_after_sampling(model)
    assert not timers.armed(id(model.patcher))


def test_idle_fire_waits_for_a_running_prompt(timers, monkeypatch):
    monkeypatch.setenv(IDLE_ENV, "600")
    busy = [True]
    host = fake_host(load_device=META, queue_busy=lambda: busy[0])
    model = _model(host)
    managed_dit._idle_fire(model)
    assert timers.armed(id(model.patcher)) and "unload" not in host.calls
    busy[0] = False
    managed_dit._idle_fire(model)
    assert host.calls == ["unload"] and not timers.armed(id(model.patcher))


@pytest.mark.parametrize("over, blamed", [({"attention": "nonsense"}, "attention"),
                                          ({"compile": "maybe"}, "compile")])
def test_load_errors_carry_the_input_they_blame(monkeypatch, over, blamed):
    monkeypatch.delenv("INFINITETALK_ATTENTION", raising=False)
    monkeypatch.delenv("INFINITETALK_COMPILE", raising=False)
    with pytest.raises(ValueError) as err:
        managed_dit.load_model(fake_host(), "model.safetensors", None, "InfiniteTalk", "fp32", **over)
    assert err.value.input == blamed


def test_parallel_errors_blame_gpus():
    host = fake_host(torch_device=lambda: torch.device("cuda"))   # more GPUs asked than CUDA has
    with pytest.raises(RuntimeError) as err:
        managed_dit.load_model(host, "model.safetensors", None, "InfiniteTalk", "fp32", attention="sdpa",
                               compile="off", gpus=torch.cuda.device_count() + 2)
    assert err.value.input == "gpus"


def test_idle_unload_module_reads_the_environment_each_time(monkeypatch):
    monkeypatch.setenv(IDLE_ENV, "7")
    assert idle_unload.idle_unload_seconds() == 7.0
