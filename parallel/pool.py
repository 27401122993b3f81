"""The DiT on N Ray actors (one per GPU, or N CPU processes) and their lifecycle.

* ``WorkerPool.run`` starts the actors on first use (one log line each way), sends every forward to all
  ranks and returns rank 0's velocity. Inputs go through Ray's object store once per call.
* A worker that dies or fails (killed, out of memory, a load error) is ONE ``WorkerError`` naming the
  worker and its GPU; the whole pool is stopped with it, so the next call starts a fresh one.
* ``stop`` kills every actor and waits until their processes are gone; it runs on the host's unload /
  free / interrupt (loaders/managed_dit.py), when the model is garbage collected, and after ``idle_s``
  seconds without a call. A Ray session this module started is shut down with its last pool.

No comfy here; ``ray`` is imported on first use only (an optional extra: ``pip install ray``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
PACK_ROOT = str(Path(__file__).resolve().parents[1])
STOP_WAIT_S = 20.0
CULPRIT_WAIT_S = 3.0   # after a failure, how long the other ranks may take to report theirs

_state = {"owned_ray": False}
_live: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()
_ray_lock = threading.RLock()


class WorkerError(RuntimeError):
    """A DiT worker died or failed; the pool was stopped (the next call starts it again)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("gpus > 1 needs Ray, which is not installed. Install it into ComfyUI's Python "
                           "(pip install ray) and restart ComfyUI, or set gpus to 1") from None
    return ray


def _ray_session(ray):
    with _ray_lock:
        if not ray.is_initialized():
            # An existing cluster (RAY_ADDRESS, e.g. another pack's) is joined; otherwise a local one starts.
            ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
            _state["owned_ray"] = True
            log.info("InfiniteTalk: started a local Ray session for the DiT workers")


def _end_ray_session_if_unused(ray):
    with _ray_lock:
        if _state["owned_ray"] and not any(p.actors for p in list(_live)) and ray.is_initialized():
            ray.shutdown()
            _state["owned_ray"] = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cause(err: BaseException) -> str:
    """The worker's own exception text (RayTaskError wraps it with a traceback), first lines only."""
    cause = getattr(err, "cause", None)
    text = str(cause if cause is not None else err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:3])[:600].rstrip(".") if lines else type(err).__name__


class WorkerPool:
    """``workers`` sequence-parallel DiT ranks loading ``load`` (``load_dit`` kwargs + ``attention``)."""

    def __init__(self, load: dict, workers: int, device: str = "cuda", idle_s: float = 300.0, threads: int = 1):
        if workers < 2:
            raise ValueError(f"a worker pool needs at least 2 workers; got {workers} (1 GPU: no pool)")
        self.load, self.workers, self.device = dict(load), int(workers), device
        self.idle_s, self.threads = float(idle_s), int(threads)
        self.actors: list = []
        self.identities: list[dict] = []
        self.config: dict = {}
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        _live.add(self)

    # -- lifecycle -------------------------------------------------------------------------------------
    def place(self, rank: int) -> str:
        ident = self.identities[rank] if rank < len(self.identities) else {}
        where = f"GPU {','.join(ident['gpus'])}" if ident.get("gpus") else "CPU"
        return f"DiT worker {rank} of {self.workers} ({where}, pid {ident.get('pid', '?')})"

    def start(self) -> None:
        with self._lock:
            if self.actors:
                return
            ray = import_ray()
            _ray_session(ray)
            self._check_resources(ray)
            began = time.monotonic()
            log.info("InfiniteTalk: starting %d DiT workers (%s); each loads the model", self.workers,
                     "one per GPU" if self.device == "cuda" else "CPU processes")
            from . import actor
            ray.cloudpickle.register_pickle_by_value(actor)   # the workers need no copy of the pack on sys.path
            remote = ray.remote(actor.DitActor).options(num_cpus=0, num_gpus=1 if self.device == "cuda" else 0,
                                                        max_restarts=0, max_concurrency=1)
            self.actors = [remote.remote(PACK_ROOT) for _ in range(self.workers)]
            self.identities = self._gather([a.identity.remote() for a in self.actors], "starting")
            address = self._gather([self.actors[0].free_address.remote()], "starting")[0]
            device = "cuda:0" if self.device == "cuda" else "cpu"   # Ray shows each actor only its GPU
            infos = self._gather([a.start.remote(rank, self.workers, address, self.load, device, self.threads)
                                  for rank, a in enumerate(self.actors)], "loading the model")
            self.config = infos[0]["config"]
            log.info("InfiniteTalk: %d DiT workers ready in %.1f s (attention %s): %s", self.workers,
                     time.monotonic() - began, infos[0]["attention"],
                     "; ".join(self.place(r) for r in range(self.workers)))

    def _check_resources(self, ray) -> None:
        if self.device != "cuda":
            return
        have = int(ray.cluster_resources().get("GPU", 0))
        if have < self.workers:
            raise WorkerError(f"InfiniteTalk Model Loader: gpus = {self.workers} but Ray sees {have} GPU(s); "
                              f"set gpus to at most {have} (or make the GPUs visible to ComfyUI)")

    def stop(self, reason: str = "") -> None:
        """Kill every worker and wait until its process is gone (same node only)."""
        with self._lock:
            self._cancel_timer()
            if not self.actors:
                return
            ray = import_ray()
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except (ray.exceptions.RayError, ValueError) as err:   # already dead: nothing to kill
                    log.debug("InfiniteTalk: killing a DiT worker: %s", err)
            pids = [i["pid"] for i in self.identities if i.get("node") == ray.util.get_node_ip_address()]
            deadline = time.monotonic() + STOP_WAIT_S
            while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [p for p in pids if _pid_alive(p)]
            if left:
                log.warning("InfiniteTalk: DiT worker processes %s still exist %.0f s after being killed",
                            left, STOP_WAIT_S)
            self.actors, self.identities = [], []
            log.info("InfiniteTalk: %d DiT workers stopped%s", self.workers, f" ({reason})" if reason else "")
            _end_ray_session_if_unused(ray)

    def pids(self) -> list[int]:
        return [i["pid"] for i in self.identities]

    # -- calls -----------------------------------------------------------------------------------------
    def run(self, args: tuple, kwargs: dict):
        """One forward on every rank; rank 0's result (CPU tensors in, CPU tensor out)."""
        with self._lock:
            self._cancel_timer()
            self.start()
            ray = import_ray()
            args_ref, kwargs_ref = ray.put(args), ray.put(kwargs)
            out = self._gather([a.forward.remote(args_ref, kwargs_ref) for a in self.actors], "sampling")[0]
            self._arm_timer()
            return out

    def _gather(self, refs: list, what: str) -> list:
        """Results of one call per rank; the first failure stops the pool and becomes one WorkerError
        (the other ranks may be blocked in a collective waiting for the failed one: never wait on them
        for long)."""
        ray = import_ray()
        rank_of = {ref: r for r, ref in enumerate(refs)}
        results, pending = {}, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[rank_of[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayError as err:
                rank, err = self._culprit(ray, rank_of, rank_of[done[0]], err, pending)
                name = self.place(rank if len(refs) > 1 else 0)
                self.stop(f"{name} failed")
                raise WorkerError(f"InfiniteTalk: {name} failed while {what}: {err}. All DiT workers were "
                                  f"stopped; run the prompt again to restart them.") from None
        return [results[r] for r in range(len(refs))]

    def _culprit(self, ray, rank_of: dict, rank: int, err, pending: list) -> tuple[int, str]:
        """The rank to blame: when one process dies, its peers' collectives fail too, often first; so
        look briefly at the other ranks and prefer one whose process died."""
        failed = {rank: err}
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=CULPRIT_WAIT_S) if pending else ([], [])
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as other:
                failed[rank_of[ref]] = other
        here = ray.util.get_node_ip_address()
        gone = [r for r, ident in enumerate(self.identities)
                if ident.get("node") == here and not _pid_alive(ident["pid"])]
        died = gone + [r for r, e in sorted(failed.items()) if isinstance(e, ray.exceptions.RayActorError)]
        if died:
            return died[0], "its process died (killed, out of memory or crashed)"
        return rank, _cause(err)

    # -- idle timeout ----------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self.idle_s <= 0:
            return
        self._timer = threading.Timer(self.idle_s, self._idle)
        self._timer.daemon = True
        self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> None:
        self.stop(f"idle for {self.idle_s:.0f} s")


class ParallelDiT(nn.Module):
    """What the sampler calls instead of the DiT: same signature, runs on the pool.

    It has no weights (they live in the workers), so the host's memory manager sees a model of size 0;
    ``close`` (the host's unload) and garbage collection stop the workers.
    """

    def __init__(self, pool: WorkerPool, dtype: torch.dtype):
        super().__init__()
        self.pool, self.dtype = pool, dtype
        weakref.finalize(self, pool.stop, "model released")

    @property
    def config(self) -> dict:
        return self.pool.config

    def close(self, reason: str = "") -> None:
        self.pool.stop(reason)

    def forward(self, x, t, context, clip_fea, y, audio, ref_target_masks=None, block_cache=None) -> torch.Tensor:
        if block_cache is not None:
            raise ValueError("InfiniteTalk Sampler: teacache_thresh > 0 does not work with gpus > 1 yet (its "
                             "cache would have to live in the workers); set teacache_thresh to 0, or gpus to 1")
        def cpu(v):
            return v.detach().cpu() if isinstance(v, torch.Tensor) else v
        args = tuple(cpu(a) for a in (x, t, context, clip_fea, y, audio))
        out = self.pool.run(args, {"ref_target_masks": cpu(ref_target_masks)})
        return out.to(x.device)
