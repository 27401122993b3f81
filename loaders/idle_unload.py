"""The idle-unload policy (comfy-free): how long a model may sit in VRAM unused, and the timers.

``INFINITETALK_IDLE_UNLOAD_S`` (seconds, default 300; 0 or less: never) is read at each arming, so
a changed environment applies to the next run. ``IdleTimers`` keeps one timer per key; what a timer
does when it fires (unload through the host, or wait while a prompt runs) is the caller's.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Mapping

log = logging.getLogger(__name__)

IDLE_ENV = "INFINITETALK_IDLE_UNLOAD_S"
DEFAULT_SECONDS = 300.0


def idle_unload_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds from ``INFINITETALK_IDLE_UNLOAD_S``; not a number: the default, with a warning."""
    try:
        return float(environ.get(IDLE_ENV, str(DEFAULT_SECONDS)))
    except ValueError:
        log.warning("%s must be a number of seconds; using %g", IDLE_ENV, DEFAULT_SECONDS)
        return DEFAULT_SECONDS


class IdleTimers:
    """One daemon timer per key. ``lock`` (re-entrant) also guards what the caller does around them."""

    def __init__(self):
        self.lock = threading.RLock()
        self._timers: dict = {}

    def arm(self, key, seconds: float, fire: Callable, *args) -> None:
        """(Re)start the key's timer: ``fire(*args)`` after ``seconds`` unless cancelled first."""
        with self.lock:
            self.cancel(key)
            timer = threading.Timer(seconds, fire, args=args)
            timer.daemon = True
            self._timers[key] = timer
            timer.start()

    def cancel(self, key) -> None:
        with self.lock:
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def armed(self, key) -> bool:
        with self.lock:
            return key in self._timers
