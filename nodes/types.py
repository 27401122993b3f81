"""Shared declarations for the pack's nodes: custom types, the category, small schema helpers."""
from __future__ import annotations

import inspect

from comfy_api.latest import io

from ..loaders.model_folders import public_text

CATEGORY = "InfiniteTalk"

Model = io.Custom("INFINITETALK_MODEL")   # loaders.managed_dit.HostModel
Lora = io.Custom("INFINITETALK_LORA")     # tuple of (path, strength)
Text = io.Custom("INFINITETALK_TEXT")     # {"context": [1, L, 4096], "context_null": [1, L', 4096]}
Audio = io.Custom("INFINITETALK_AUDIO")   # samplers' speech embeddings + soundtrack + frames

# ComfyUI 0.3.75's inputs have no ``advanced`` flag (newer hosts do): pass it only where accepted.
_ADVANCED_OK = "advanced" in inspect.signature(io.Int.Input.__init__).parameters


def adv() -> dict:
    """``**adv()`` marks an expert knob on hosts that support it."""
    return {"advanced": True} if _ADVANCED_OK else {}


def input_error(node: str, name: str, problem: str, fix: str = "") -> ValueError:
    """One clear message: which node, which input, what is wrong, how to fix it. The text goes to API
    clients and the host's log: server paths are shown relative to the ComfyUI folders and anything
    unprintable (a non-UTF-8 file name, control characters) is escaped (``public_text``)."""
    msg = f"{node}: input '{name}': {problem}"
    return ValueError(public_text(f"{msg}. {fix}" if fix else msg))


def blamed_error(node: str, err: BaseException, default: str) -> ValueError:
    """``input_error`` for an error that carries the input it blames (``err.input``, e.g. a
    ``LoaderError``), else ``default``."""
    return input_error(node, getattr(err, "input", None) or default, str(err))
