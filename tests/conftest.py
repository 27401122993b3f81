"""Shared test set-up: the pack is imported as the package ``infinitetalk`` without the host."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py
sys.path.insert(0, str(ROOT / "harness"))       # harness/tiny/*, harness/host_server.py (shared with .ci/)


def _register_pack(name: str = "infinitetalk") -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register_pack()


@pytest.fixture(autouse=True)
def _inference_mode(request):
    """The host runs nodes under inference_mode; model tests do the same (host tests opt out)."""
    if request.node.get_closest_marker("no_inference_mode"):
        yield
        return
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def wav2vec():
    """The tiny random wav2vec2 (harness/tiny/text_audio_files.py), seeded, one per test module."""
    from infinitetalk.models.wav2vec import Wav2Vec2At25fps
    from tiny import text_audio_files
    torch.manual_seed(0)
    return Wav2Vec2At25fps(text_audio_files.TINY_WAV2VEC)


# ---------------------------------------------------------------------------- test tiers
# Every test gets exactly one tier marker, so `pytest -m pure|golden|host` runs one tier:
#   host   - needs the real ComfyUI host: everything under tests/host/, or marked @pytest.mark.host;
#   golden - runs a model: a golden fixture case, the tiny wav2vec2 fixture, or a module that imports
#            the tiny model files (tiny.*) or the model code (infinitetalk.models.*), or marked;
#   pure   - the rest: functions of arrays, files and plans, seconds for the whole tier.
TIERS = ("pure", "golden", "host")
MODEL_HOMES = ("tiny", "infinitetalk.models")


def _home(value) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    return getattr(value, "__module__", None) or ""


def _runs_models(item) -> bool:
    from golden import GoldenCase
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(isinstance(v, GoldenCase) for v in params.values()) or "wav2vec" in item.fixturenames:
        return True
    module = getattr(item, "module", None)
    return module is not None and any(_home(v) == h or _home(v).startswith(h + ".")
                                      for v in vars(module).values() for h in MODEL_HOMES)


def _tier(item) -> str:
    parts = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests").parts
    if parts[0] == "host" or item.get_closest_marker("host"):
        return "host"
    if item.get_closest_marker("golden") or _runs_models(item):
        return "golden"
    return "pure"


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_configure(config):
    config.addinivalue_line("markers", "pure: the pure tier (no model, no host; seconds)")
    config.addinivalue_line("markers", "golden: the tiny-model / golden-fixture parity tier")
    config.addinivalue_line("markers", "host: runs a real ComfyUI server (or the host's own modules)")
    config.addinivalue_line("markers", "browser: drives headless Chromium against the real host")
    config.addinivalue_line("markers", "no_inference_mode: run outside torch.inference_mode")
