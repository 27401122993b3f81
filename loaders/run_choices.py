"""The Model Loader's run choices, attention and compile, resolved against the device (no host imports).

An explicit choice on the node wins; ``auto`` (or none, from scripts) defers to the environment variable
when it is set, so scripts keep their switches. ``loaders/host.py`` passes the host's device and its
attention function in.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

from ..models.attention import USER_CHOICES as ATTENTION_CHOICES  # noqa: F401 - the node's options
from ..models.attention_backends import AUTO_ORDER as AUTO_ATTENTION  # noqa: F401 - its tooltip

log = logging.getLogger(__name__)

COMPILE_ENV = "INFINITETALK_COMPILE"  # auto | on (1) | off (0): the default where no choice is given
ATTENTION_ENV = "INFINITETALK_ATTENTION"  # models.attention.USER_CHOICES: the default where none is given
COMPILE_CHOICES = ("auto", "on", "off")


def _choice_or_env(choice: str | None, env: str, input_name: str) -> tuple[str, str]:
    """(value, where it came from): an explicit choice wins; ``auto`` or none defers to ``env`` if set."""
    value = os.environ.get(env, "").strip()
    if choice in (None, "", "auto") and value:
        return value, f"environment variable {env}"
    return choice or "auto", f"input '{input_name}'"


def select_attention(choice: str | None, device, host_attention: Callable | None = None):
    """Resolve the attention choice (``None``/``auto``: ``INFINITETALK_ATTENTION`` if set) on ``device``,
    make it the active backend and return models.attention_backends.Resolved. A value that is not a
    choice is a ValueError naming its source; a named choice that cannot run here is an
    AttentionUnavailable (a ValueError) naming what to install. ``host_attention()`` -> the host's
    attention function, for the ``comfy`` choice."""
    from ..models import attention, attention_backends
    attention_backends.set_host_attention(host_attention)
    value, source = _choice_or_env(choice, ATTENTION_ENV, "attention")
    resolved = attention_backends.resolve(value, device, source)
    if attention.get_backend() != resolved.backend:
        attention.set_backend(resolved.backend)
        log.info("InfiniteTalk: attention %s", resolved.label)
    return resolved


def select_compile(choice: str | None, device) -> tuple[bool, str]:
    """(compile the blocks?, in words). ``auto``: on CUDA where Triton works, else off; ``on``: any
    device (a failure falls back to eager at run time); ``None``/``auto`` defer to INFINITETALK_COMPILE."""
    value, source = _choice_or_env(choice, COMPILE_ENV, "compile")
    value = {"1": "on", "0": "off", "true": "on", "false": "off"}.get(value.lower(), value.lower())
    if value not in COMPILE_CHOICES:
        raise ValueError(f"{source}={value!r} is not one of {', '.join(COMPILE_CHOICES)} (or 1 / 0)")
    if value != "auto":
        return value == "on", f"{value} ({source})" if source.startswith("env") else value
    if getattr(device, "type", str(device)) != "cuda":
        return False, f"off (auto on {getattr(device, 'type', device)})"
    from torch.utils._triton import has_triton
    if not has_triton():
        return False, "off (auto: Triton does not run on this GPU)"
    return True, "blocks (auto)"
