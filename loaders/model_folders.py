"""ComfyUI model folders: what the node combos list and where a choice lives (imports ``folder_paths``).

* ``register_folders()`` adds ``models/infinitetalk`` and ``models/wav2vec2`` to ``folder_paths``
  (idempotent; called when the extension loads, after ``--base-directory`` was applied).
* ``list_models(kind)`` / ``resolve_model(kind, name)``: unlike ``folder_paths.get_filename_list``
  these list a sharded checkpoint once (its ``*.safetensors.index.json``, shards hidden) and Hugging
  Face style model *folders* (a directory with ``config.json``) as single entries.
* ``file_key`` / ``fingerprint``: cheap content identity (path + mtime + size) for caches and the
  nodes' input fingerprints.
"""
from __future__ import annotations

import os
import re

import folder_paths

WEIGHT_EXTS = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
INDEX_SUFFIX = ".safetensors.index.json"
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.safetensors$")

# combo kind -> host folder names searched, in order
KINDS = {
    "diffusion_models": ("diffusion_models",),
    "audio_adapter": ("infinitetalk", "model_patches"),
    "loras": ("loras",),
    "text_encoders": ("text_encoders",),
    "wav2vec": ("wav2vec2", "audio_encoders"),
}


def register_folders() -> None:
    """Register our model folders with the host (safe to call more than once)."""
    exts = set(folder_paths.supported_pt_extensions) - {".pkl"}
    for name in ("infinitetalk", "wav2vec2"):
        default = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([default], exts)
        elif default not in folder_paths.folder_names_and_paths[name][0]:
            folder_paths.add_model_folder_path(name, default)


def folders(kind: str) -> list[str]:
    paths = []
    for name in KINDS[kind]:
        try:
            paths += folder_paths.get_folder_paths(name)
        except KeyError:
            continue
    return paths


def _scan(base: str) -> list[str]:
    """Entries under ``base`` (relative, '/'-separated): weight files, shard indexes, HF folders."""
    out = []
    if not os.path.isdir(base):
        return out
    for root, dirs, files in os.walk(base, followlinks=True):
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


def list_models(kind: str) -> list[str]:
    seen = []
    for base in folders(kind):
        for entry in _scan(base):
            if entry not in seen:
                seen.append(entry)
    return sorted(seen, key=str.lower)


def resolve_model(kind: str, name: str) -> str | None:
    """Full path of a combo choice, or None when it is in none of the folders (no '..' escapes)."""
    if not name or name == "none":
        return None
    for base in folders(kind):
        full = os.path.realpath(os.path.join(base, name))
        root = os.path.realpath(base)
        if os.path.commonpath([full, root]) == root and os.path.exists(full):
            return full
    return None


def missing_file(node: str, input_name: str, kind: str, name: str) -> str | None:
    """The node's validation message when the chosen file is in none of the folders, else None."""
    if resolve_model(kind, name) is not None:
        return None
    return f"{node}: {input_name} file '{name}' not found in {folder_hint(kind)}"


def folder_hint(kind: str) -> str:
    return " or ".join(f"ComfyUI/models/{n}/" for n in KINDS[kind])


def file_key(path: str) -> tuple:
    """What identifies a model file's content cheaply: path + mtime + size (for a model folder, of
    every file directly in it). Used to cache between runs and as the nodes' input fingerprints."""
    if path is None or not os.path.exists(path):
        return (path,)
    if os.path.isdir(path):
        entries = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
        return (path,) + tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size)


def fingerprint(kind: str, name: str) -> tuple:
    """The node fingerprint of a combo choice: changes when the file behind it changes."""
    path = resolve_model(kind, name)
    if path is not None and path.endswith(INDEX_SUFFIX):       # a shard set: the shards count too
        folder = os.path.dirname(path)
        return file_key(folder)
    return file_key(path)
