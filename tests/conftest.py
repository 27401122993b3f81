"""Shared test set-up: the pack is imported as the package ``infinitetalk`` without the host."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py, tests/tiny/*


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
    """The tiny random wav2vec2 (tests/tiny/text_audio_files.py), seeded, one per test module."""
    from infinitetalk.models.wav2vec import Wav2Vec2At25fps
    from tiny import text_audio_files
    torch.manual_seed(0)
    return Wav2Vec2At25fps(text_audio_files.TINY_WAV2VEC)


def pytest_configure(config):
    config.addinivalue_line("markers", "host: runs a real ComfyUI server")
    config.addinivalue_line("markers", "browser: drives headless Chromium against the real host")
    config.addinivalue_line("markers", "no_inference_mode: run outside torch.inference_mode")
