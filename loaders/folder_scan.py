"""One model folder as the node combos list it (comfy-free; ``loaders/model_folders.py`` asks the host
which folders to scan).

Unlike the host's ``get_filename_list``, a sharded checkpoint is one entry (its
``*.safetensors.index.json``, shards hidden) and a Hugging Face style model *folder* (a directory with
``config.json``) is one entry. Scans follow symbolic links the way the host does (weights on another
disk, linked in) and visit every real folder once, so link loops (``a -> .``) cost nothing.
"""
from __future__ import annotations

import os
import re

WEIGHT_EXTS = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
INDEX_SUFFIX = ".safetensors.index.json"
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.safetensors$")


def _first_visit(path: str, seen: set) -> bool:
    """True the first time a real folder is reached (by device + inode); later links to it are skipped."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def scan(base: str) -> list[str]:
    """Entries under ``base`` (relative, '/'-separated): weight files, shard indexes, HF folders."""
    out = []
    if not os.path.isdir(base):
        return out
    seen: set = set()
    for root, dirs, files in os.walk(base, followlinks=True):
        if not _first_visit(root, seen):       # a link back to a folder already listed (a loop)
            dirs[:] = []
            continue
        rel_root = os.path.relpath(root, base)
        rel = (lambda f: f if rel_root == "." else f"{rel_root}/{f}".replace(os.sep, "/"))
        indexed = any(f.endswith(INDEX_SUFFIX) for f in files)
        if (not indexed and "config.json" in files and rel_root != "."
                and any(f.endswith(WEIGHT_EXTS) for f in files)):
            out.append(rel_root.replace(os.sep, "/"))   # a Hugging Face model folder: one entry
            dirs[:] = []
            continue
        for f in sorted(files):
            if f.endswith(INDEX_SUFFIX):
                out.append(rel(f))
            elif f.endswith(WEIGHT_EXTS) and not (indexed and _SHARD.match(f)):
                out.append(rel(f))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return out


def relative_name(name: str) -> str | None:
    """The choice as a path relative to a model folder, judged on the text like the host does
    (absolute names, drive letters and '..' that climb out are refused); links are then followed."""
    if "\0" in name or os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return None
    norm = os.path.normpath(name)
    if norm in (".", "..") or norm.startswith(".." + os.sep):
        return None
    return norm
