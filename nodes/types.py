"""Shared declarations for the pack's nodes: custom types, the category, small schema helpers."""
from __future__ import annotations

import inspect
from contextlib import contextmanager

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


class NodeError(ValueError):
    """A message that already names the node and the input (``input_error``)."""


def input_error(node: str, name: str, problem: str, fix: str = "") -> NodeError:
    """One clear message: which node, which input, what is wrong, how to fix it. The text goes to API
    clients and the host's log: server paths are shown relative to the ComfyUI folders and anything
    unprintable (a non-UTF-8 file name, control characters) is escaped (``public_text``)."""
    msg = f"{node}: input '{name}': {problem}"
    return NodeError(public_text(f"{msg}. {fix}" if fix else msg))


@contextmanager
def blaming(node: str, default: str | None = None):
    """Around a node's one call: an error that names its input (``errors.InputError``, a loader's
    ``LoaderError``, a RuntimeError a room marked with ``.input``) becomes ``input_error(node, ...)``;
    another ValueError blames ``default`` (None: it passes unchanged), any other error passes."""
    try:
        yield
    except NodeError:
        raise
    except (ValueError, RuntimeError) as err:
        name = getattr(err, "input", None) or (default if isinstance(err, ValueError) else None)
        if name is None:
            raise
        raise input_error(node, name, str(err)) from None
