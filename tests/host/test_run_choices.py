"""The Model Loader's attention / compile choices on the real host (--cpu): listed with auto as the
default, auto in every bundled workflow, what runs in the info output, one clear error for a library
that is not installed."""
from __future__ import annotations

import json

import pytest

from host_server import ExecutionFailed

from tiny.dit_files import write_demo_models
from tiny.host_files import WORKFLOWS_API

pytestmark = pytest.mark.host

ATTENTION = ["auto", "sdpa", "comfy", "sageattention", "flash_attn", "xformers", "comfy_kitchen_int8",
             "int8", "int8_fp8"]


def _options(spec: list) -> list[str]:
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


@pytest.fixture(scope="module")
def model(host):
    roles = write_demo_models(host.models_dir)
    return (roles["model"].removeprefix("diffusion_models/"),
            roles["audio_adapter_single"].removeprefix("infinitetalk/"))


def _graph(model: tuple[str, str], **choices) -> dict:
    loader = {"model": model[0], "audio_adapter": model[1], "family": "InfiniteTalk", "precision": "fp32",
              "memory_budget_gb": 0.0, **choices}
    return {"1": {"class_type": "InfiniteTalkModelLoader", "inputs": loader},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}


def test_choices_are_listed_with_auto_default(host):
    optional = host.object_info("InfiniteTalkModelLoader")["InfiniteTalkModelLoader"]["input"]["optional"]
    assert _options(optional["attention"]) == ATTENTION and optional["attention"][1]["default"] == "auto"
    assert _options(optional["compile"]) == ["auto", "on", "off"] and optional["compile"][1]["default"] == "auto"


@pytest.mark.parametrize("path", sorted(WORKFLOWS_API.glob("*.json")), ids=lambda p: p.stem)
def test_bundled_workflows_use_auto(path):
    loaders = [n for n in json.loads(path.read_text()).values() if n["class_type"] == "InfiniteTalkModelLoader"]
    assert loaders and all(n["inputs"]["attention"] == n["inputs"]["compile"] == "auto" for n in loaders)


def test_info_says_what_runs_on_the_cpu(host, model):
    outputs = host.run(_graph(model), timeout=300)             # an old graph: neither input given
    info = outputs["2"]["text"][0]
    assert "attention sdpa (auto on cpu) | compile off (auto on cpu)" in info, info
    info = host.run(_graph(model, attention="comfy", compile="off"), timeout=300)["2"]["text"][0]
    assert "attention comfy (" in info and "compile off" in info, info


def test_missing_library_is_one_clear_error(host, model):
    with pytest.raises(ExecutionFailed) as err:
        host.run(_graph(model, attention="sageattention"), timeout=120)
    msg = err.value.exception_message
    assert err.value.node_type == "InfiniteTalkModelLoader"
    assert msg.startswith("InfiniteTalk Model Loader: input 'attention': attention 'sageattention' needs"), msg
    assert "pip install sageattention" in msg, msg
