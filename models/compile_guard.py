"""torch.compile with an eager fallback: a compile failure costs a warning, never a failed run.

torch.compile fails lazily: tracing, Inductor and Triton run at the first call (and again for every
new input shape), so the guard sits around every call, not around ``torch.compile`` itself.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


class CompileFallback:
    """One shared state for a set of compiled functions (a model's blocks): the first failure logs
    ONE warning, calls ``on_failure`` (e.g. uncompile every block) and from then on every guarded
    call runs eagerly. ``passthrough``: exceptions that are not compile failures (the host's
    interrupt); out-of-memory is never treated as one either."""

    def __init__(self, on_failure: Callable[[], None] | None = None, passthrough: tuple = ()):
        self.failed: str | None = None
        self.on_failure = on_failure
        self.passthrough = (torch.OutOfMemoryError, *passthrough)

    def wrap(self, eager: Callable, **compile_kwargs) -> Callable:
        compiled = torch.compile(eager, **compile_kwargs)

        @functools.wraps(eager)
        def run(*args, **kwargs):
            if self.failed is None:
                try:
                    return compiled(*args, **kwargs)
                except self.passthrough:
                    raise
                except Exception as err:  # noqa: BLE001 - dynamo/inductor/triton/toolchain: run eagerly
                    self._fail(err)
            return eager(*args, **kwargs)
        return run

    def _fail(self, err: BaseException) -> None:
        self.failed = f"{type(err).__name__}: {err}"[:300]
        log.warning("InfiniteTalk: torch.compile failed (%s); the DiT runs without compiling "
                    "(set compile to off to skip the attempt)", self.failed)
        if self.on_failure is not None:
            self.on_failure()
