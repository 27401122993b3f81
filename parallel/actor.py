"""The Ray actor class of a DiT worker.

Only the standard library and ``ray`` are imported at module level, so Ray can ship this class to a
fresh worker process by value (``pool.py`` registers the module for that). The worker then imports
the pack from its folder under a private package name; everything else (torch.distributed, the
loader, the model) lives in ``worker.py`` and runs inside that process.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import socket
import sys

PACKAGE = "infinitetalk_dit_worker"


def _import_pack(pack_root: str):
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(pack_root, "__init__.py"),
                                                      submodule_search_locations=[pack_root])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(PACKAGE + ".parallel.worker")


@contextlib.contextmanager
def _plain_errors():
    """Re-raise as a RuntimeError with the text: the driver cannot unpickle the pack's own exception
    classes (they live under this process's private package name)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure goes back to the driver, as text
        raise RuntimeError(f"{type(err).__name__}: {err}") from None


class DitActor:
    """One process: identity and a rendezvous address first, then ``start`` (join + load) and forwards."""

    def __init__(self, pack_root: str):
        self._worker_module = _import_pack(pack_root)
        self._rank = None

    def identity(self) -> dict:
        import ray
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def free_address(self) -> str:
        """host:port for the torch.distributed rendezvous, on this (rank 0's) node."""
        import ray
        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return f"{ip}:{s.getsockname()[1]}"

    def start(self, rank: int, world: int, address: str, load: dict, device: str, threads: int) -> dict:
        with _plain_errors():
            self._rank = self._worker_module.DitRank(rank, world, address, load, device, threads)
            return self._rank.describe()

    def forward(self, args, kwargs):
        with _plain_errors():
            return self._rank.forward(args, kwargs)

    def close(self) -> None:
        if self._rank is not None:
            self._rank.close()
            self._rank = None
