"""memory_budget_gb -> whole DiT or streamed blocks: the decision, the byte counting, the streaming
state machine (CPU, with a stand-in for the CUDA-only BlockStreamer), and the host's own memory
manager driving our StreamingPatcher (a ``--cpu`` host in a subprocess).

The real BlockStreamer (pinned memory, CUDA streams) is checked by ``bench/streaming_smoke.py`` on
a GPU; it cannot run here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from infinitetalk.models.quant_ops import QuantoLinear
from infinitetalk.loaders.streaming import (GIB, StreamedDiT, choose_placement, packed_bytes,
                                            streamed_gpu_bytes, weight_bytes)
from infinitetalk.models.wan_dit import WanModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from tiny.dit_files import TINY  # noqa: E402


def _tiny_model(layers: int | None = None) -> WanModel:
    torch.manual_seed(0)
    return WanModel(**{**TINY, "num_layers": layers or TINY["num_layers"]}).eval()


# ------------------------------------------------------------------ bytes
def test_weight_bytes_counts_quantized_buffers():
    layer = QuantoLinear(64, 32, bias=True)
    layer.quantize_slot("qint8")
    params_only = sum(p.numel() * p.element_size() for p in layer.parameters())
    assert params_only == 32 * 4                                # only the fp32 bias is a parameter
    expected = 32 * 4 + 64 * 32 * 1 + 32 * 4 + 4 + 4           # bias, int8 data, scale, in/out scale
    assert weight_bytes(layer) == expected


def test_weight_bytes_counts_shared_tensors_once():
    a = nn.Linear(8, 8)
    b = nn.Sequential(a, a)
    assert weight_bytes(b) == weight_bytes(a) == (64 + 8) * 4


def test_streamed_gpu_bytes_is_non_block_part_plus_two_slots():
    model = _tiny_model(layers=4)
    blocks = list(model.blocks)
    non_block = weight_bytes(model) - sum(weight_bytes(b) for b in blocks)
    slot = max(packed_bytes(b) for b in blocks)
    assert slot >= weight_bytes(blocks[0])                      # 256-byte alignment only adds
    assert streamed_gpu_bytes(model) == non_block + 2 * slot
    assert streamed_gpu_bytes(model) < weight_bytes(model)      # 4 blocks, 2 slots


# ------------------------------------------------------------------ decision
@pytest.mark.parametrize("total_gib, budget, device, stream, words", [
    (30, 0.0, "cuda", False, "memory_budget_gb = 0"),
    (30, 16.0, "cpu", False, "ignored when ComfyUI runs on the CPU"),
    (30, 40.0, "cuda", False, "fit memory_budget_gb"),
    (16, 16.0, "cuda", False, "fit memory_budget_gb"),          # equal: fits
    (30, 16.0, "cuda", True, "streamed from pinned RAM"),
    (30, 8.0, "mps", False, "needs a CUDA GPU"),
])
def test_choose_placement(total_gib, budget, device, stream, words):
    plan = choose_placement(int(total_gib * GIB), budget, device)
    assert plan.stream is stream
    assert words in plan.reason


def test_quantized_bytes_decide_streaming():
    """An int8 model counts 1 byte a weight: a budget between int8 and bf16 size streams only bf16."""
    layer = QuantoLinear(1024, 1024, bias=False)
    bf16 = weight_bytes(layer.to(torch.bfloat16))
    layer.quantize_slot("qint8")
    int8 = weight_bytes(layer)
    budget = (int8 + bf16) / 2 / GIB
    assert choose_placement(bf16, budget, "cuda").stream
    assert not choose_placement(int8, budget, "cuda").stream


# ------------------------------------------------------------------ state machine (fake streamer)
class FakeStreamer:
    """Records what StreamedDiT asks of BlockStreamer (which needs CUDA)."""
    made = 0

    def __init__(self, blocks, device):
        FakeStreamer.made += 1
        self.blocks, self.device, self.calls = blocks, device, []

    def offload(self):
        self.calls.append("offload")

    def reload(self):
        self.calls.append("reload")


def test_streamed_dit_load_offload_reload_keeps_outputs():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FakeStreamer.made = 0
    streamed = StreamedDiT(model, torch.device("cpu"), FakeStreamer)
    assert not streamed.loaded
    streamed.load(torch.device("cpu"))
    streamed.load(torch.device("cpu"))                          # already loaded: nothing happens
    assert streamed.loaded and FakeStreamer.made == 1
    assert streamed.streamer.blocks is model.blocks
    streamed.offload()
    streamed.offload()
    assert not streamed.loaded
    streamed.load(torch.device("cpu"))                          # the pinned copy is reused
    assert FakeStreamer.made == 1
    assert streamed.streamer.calls == ["offload", "reload"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_streamed_dit_failed_load_gives_everything_back():
    class Broken(FakeStreamer):
        def __init__(self, blocks, device):
            raise torch.cuda.OutOfMemoryError("no room for two slots")

    streamed = StreamedDiT(_tiny_model(), torch.device("cpu"), Broken)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        streamed.load(torch.device("cpu"))
    assert not streamed.loaded and streamed.streamer is None


# ------------------------------------------------------------------ the real host's memory manager
HOST_SCRIPT = r"""
import importlib.util, logging, sys
sys.path.insert(0, {host!r})
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_management as mm
spec = importlib.util.spec_from_file_location("infinitetalk", {init!r},
                                              submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["infinitetalk"] = pack
spec.loader.exec_module(pack)
sys.path.insert(0, {tests!r})
import torch
from infinitetalk.loaders import host, managed_dit, run_choices
from infinitetalk.loaders.streaming import streamed_gpu_bytes
from infinitetalk.models.wan_dit import WanModel
from tiny.dit_files import TINY

class Fake:
    made = 0
    def __init__(self, blocks, device):
        Fake.made += 1; self.calls = []
    def offload(self): self.calls.append("offload")
    def reload(self): self.calls.append("reload")

assert mm.is_device_cpu(host.torch_device())
model = WanModel(**TINY).eval()
plan = managed_dit.plan_placement(host, model, 1e-6)
assert not plan.stream, plan                       # --cpu: the budget is ignored
wrapped = managed_dit.wrap_model(host, model, "InfiniteTalk", torch.float32, 1e-6, streaming=True,
                          make_streamer=Fake)
p = wrapped.patcher
assert p.model_size() == streamed_gpu_bytes(model)
assert managed_dit.load_for_sampling(wrapped) is model  # load_models_gpu -> our partially_load
assert p.streamed.loaded and p.loaded_size() == p.model_size() and Fake.made == 1
assert any(lm.model is p for lm in mm.current_loaded_models)
managed_dit.load_for_sampling(wrapped)             # loaded already: nothing new
assert Fake.made == 1 and p.streamed.streamer.calls == []
mm.unload_all_models()                             # what /free does
assert not p.streamed.loaded and p.loaded_size() == 0
assert not any(lm.model is p for lm in mm.current_loaded_models)
managed_dit.load_for_sampling(wrapped)             # the streaming state comes back
assert p.streamed.loaded and Fake.made == 1
managed_dit.unload(wrapped)                        # idle timer / interrupt path
assert not p.streamed.loaded
assert p.streamed.streamer.calls == ["offload", "reload", "offload"], p.streamed.streamer.calls
clone = p.clone()
assert clone.streamed is p.streamed
# INFINITETALK_ATTENTION through the host module (the Model Loader calls this first)
import os
from infinitetalk.models import attention
assert managed_dit.select_attention(host).backend == "sdpa"        # auto on the CPU
os.environ[run_choices.ATTENTION_ENV] = "int8_fp8"
try:                                        # --cpu: a named kernel that cannot run is an error
    managed_dit.select_attention(host); raise SystemExit("int8_fp8 was accepted on the CPU")
except ValueError as err:
    assert "attention 'int8_fp8'" in str(err) and "CUDA" in str(err), err
assert attention.get_backend() == "sdpa"
os.environ[run_choices.ATTENTION_ENV] = "sage"
try:
    managed_dit.select_attention(host); raise SystemExit("a bad value was accepted")
except ValueError as err:
    assert "environment variable INFINITETALK_ATTENTION='sage'" in str(err), err
assert managed_dit.select_attention(host, "sdpa").backend == "sdpa"  # a named input beats the variable
del os.environ[run_choices.ATTENTION_ENV]
# INFINITETALK_COMPILE stands in for the loader's compile = auto
assert managed_dit.select_compile(host) == (False, "off (auto on cpu)")
os.environ[run_choices.COMPILE_ENV] = "1"
assert managed_dit.select_compile(host, "auto")[0] is True
assert managed_dit.select_compile(host, "off") == (False, "off")
os.environ[run_choices.COMPILE_ENV] = "maybe"
try:
    managed_dit.select_compile(host); raise SystemExit("a bad compile value was accepted")
except ValueError as err:
    assert "environment variable INFINITETALK_COMPILE='maybe'" in str(err), err
del os.environ[run_choices.COMPILE_ENV]
print("HOST-STREAMING-OK")
"""


@pytest.mark.host
def test_host_memory_manager_drives_streaming_patcher():
    host_root = ROOT / ".host" / "ComfyUI"
    if not (host_root / "comfy" / "model_management.py").exists():
        pytest.skip("the unpacked host (.host/ComfyUI) is not here")
    script = HOST_SCRIPT.format(host=str(host_root), init=str(ROOT / "__init__.py"), root=str(ROOT),
                                tests=str(ROOT / "harness"))
    done = subprocess.run([sys.executable, "-c", script], cwd=str(host_root), capture_output=True,
                          text=True, timeout=300)
    assert "HOST-STREAMING-OK" in done.stdout, done.stdout[-3000:] + done.stderr[-5000:]
