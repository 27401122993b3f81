"""What identifies a model file's content cheaply, for caches and the nodes' input fingerprints (comfy-free).

``file_key(path)``: path + size + mtime + ctime + inode + a hash of samples of the bytes
(``content_hash``); for a model folder, the same for every file directly in it. A file swapped for
another of the same size with its mtime put back still changes the key.
"""
from __future__ import annotations

import hashlib
import os

SAMPLE_BYTES = 64 * 1024


def content_hash(path: str, size: int) -> str:
    """blake2b of the first, middle and last 64 KiB (the safetensors header and samples of the data):
    cheap on a 30 GB file, and a file swapped for another of the same size almost surely differs."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _one_file_key(path: str) -> tuple:
    st = os.stat(path)
    try:
        digest = content_hash(path, st.st_size)
    except OSError:
        digest = None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest)


def file_key(path: str | None) -> tuple:
    """The content identity of a file or model folder; ``(path,)`` when it does not exist."""
    if path is None or not os.path.exists(path):
        return (path,)
    if os.path.isdir(path):
        entries = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
        return (path,) + tuple((e.name,) + _one_file_key(e.path) for e in entries)
    return (path,) + _one_file_key(path)
