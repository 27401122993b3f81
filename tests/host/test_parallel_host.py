"""gpus = 2 in the real host (``--cpu``: two CPU worker processes under Ray, gloo): the end-to-end graph
gives the same video as gpus = 1; an interrupt and the host's /free stop the workers, and no worker
process is left behind."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from infinitetalk.parallel.pool import _pid_alive

from .test_end_to_end import Listener, _decode, _video_path, build_prompt, e2e  # noqa: F401 (fixture)

pytest.importorskip("ray", reason="gpus > 1 needs Ray (pip install ray; in the CI lock)")
pytestmark = pytest.mark.host


def _prompt(names: dict, gpus: int, **kw) -> dict:
    prompt = build_prompt(names["model"], names["adapter"], **kw)
    prompt["5"]["inputs"]["gpus"] = gpus
    return prompt


def _worker_pids(log_text: str) -> list[int]:
    ready = [ln for ln in log_text.splitlines() if "DiT workers ready" in ln]
    assert ready, "no 'DiT workers ready' line in the host log"
    return [int(p) for p in re.findall(r"pid (\d+)", ready[-1])]


def _wait_gone(host, pids: list[int], marker: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while (host.log_text().count(marker) < count or any(map(_pid_alive, pids))) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert host.log_text().count(marker) >= count, host.log_tail()
    assert not [p for p in pids if _pid_alive(p)], f"worker processes left behind: {pids}"


def test_two_workers_same_video_then_free_stops_them(host, e2e):
    one = host.run(_prompt(e2e, 1, prefix="parallel/one"), timeout=300)
    two = host.run(_prompt(e2e, 2, prefix="parallel/two"), timeout=300)
    a, b = _decode(_video_path(host, one)), _decode(_video_path(host, two))
    assert a.shape == b.shape
    # 1e-5 in the latents; after the VAE and H.264 at most a rounding step per pixel
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1
    pids = _worker_pids(host.log_text())
    assert len(pids) == 2 and all(map(_pid_alive, pids))
    stopped = host.log_text().count("DiT workers stopped")
    host.free()
    _wait_gone(host, pids, "DiT workers stopped", stopped + 1)


def test_interrupt_stops_the_workers(host, e2e):
    prompt = _prompt(e2e, 2, seed=99, steps=12, prefix="parallel/stopped")
    stopped = host.log_text().count("DiT workers stopped")
    ready = host.log_text().count("DiT workers ready")
    with Listener(host) as ws:
        prompt_id = host.queue(prompt)
        deadline = time.monotonic() + 240
        # Progress starts with the first window's conditioning, before the workers exist: wait for
        # this prompt's workers, then for a progress event after them (sampling on the workers).
        while host.log_text().count("DiT workers ready") <= ready and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = len(ws.of("progress", prompt_id))
        while len(ws.of("progress", prompt_id)) <= seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ws.of("progress", prompt_id)) > seen, "sampling never started on the workers"
        pids = _worker_pids(host.log_text())
        host.interrupt()
        _wait_gone(host, pids, "DiT workers stopped", stopped + 1)
    assert not list(host.output_dir.rglob("stopped*"))
