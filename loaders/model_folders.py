"""ComfyUI model folders: what the node combos list and where a choice lives (imports ``folder_paths``).

* ``register_folders()`` adds ``models/infinitetalk`` and ``models/wav2vec2`` to ``folder_paths``
  (idempotent; called when the extension loads, after ``--base-directory`` was applied).
* ``list_models(kind)`` / ``resolve_model(kind, name)``: the folders of a combo kind scanned by
  ``loaders/folder_scan.py`` (shard sets and HF folders as one entry, links followed once).
* ``fingerprint(kind, name)``: the nodes' input fingerprint (``loaders/file_keys.py``).
* ``public_text``: ``loaders/public_text.py`` with the host's folders as the known roots.
"""
from __future__ import annotations

import os

import folder_paths

from . import public_text as _text
from .file_keys import file_key
from .folder_scan import INDEX_SUFFIX, relative_name, scan

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


def list_models(kind: str) -> list[str]:
    seen: dict[str, None] = {}                 # insertion-ordered set: linear, not quadratic
    for base in folders(kind):
        for entry in scan(base):
            seen.setdefault(entry, None)
    return sorted(seen, key=str.lower)


def resolve_model(kind: str, name: str) -> str | None:
    """Full path of a combo choice, or None when it is in none of the folders. The name may not climb
    out of the folder, but symbolic links inside it are followed wherever they point (as the host's
    own loaders do: users keep their weights on another disk and link them in)."""
    if not isinstance(name, str) or not name or name == "none":
        return None
    rel = relative_name(name)
    if rel is None:
        return None
    for base in folders(kind):
        full = os.path.join(base, rel)
        if os.path.exists(full):
            return full
    return None


def fingerprint(kind: str, name: str) -> tuple:
    """The node fingerprint of a combo choice: changes when the file behind it changes."""
    path = resolve_model(kind, name)
    if path is not None and path.endswith(INDEX_SUFFIX):       # a shard set: the shards count too
        return file_key(os.path.dirname(path))
    return file_key(path)


def _roots() -> list[tuple[str, str]]:
    """(absolute folder, what to show instead), longest first: model folders, output/input/temp, base."""
    pairs = []
    base = os.path.abspath(getattr(folder_paths, "base_path", "") or "/nonexistent")
    for name, entry in getattr(folder_paths, "folder_names_and_paths", {}).items():
        for path in entry[0]:
            inside = os.path.abspath(path).startswith(base + os.sep)
            # under ComfyUI: as the user sees it (models/loras); elsewhere (extra_model_paths): its role
            label = os.path.relpath(path, base).replace(os.sep, "/") if inside else f"models/{name}"
            pairs.append((path, label))
    for label, getter in (("output", "get_output_directory"), ("input", "get_input_directory"),
                          ("temp", "get_temp_directory")):
        try:
            pairs.append((getattr(folder_paths, getter)(), label))
        except (AttributeError, TypeError, OSError):
            continue
    for attr, label in (("models_dir", "models"), ("base_path", "ComfyUI")):
        if getattr(folder_paths, attr, None):
            pairs.append((getattr(folder_paths, attr), label))
    out = []
    for path, label in pairs:
        for variant in {os.path.abspath(path), os.path.realpath(path)}:
            out.append((variant.rstrip("/\\"), label))
    return sorted(set(out), key=lambda p: -len(p[0]))


def public_text(text: str) -> str:
    """An error text for API clients and the log: the host's folders shown by their role
    (models/loras/...), any other absolute path reduced to its file name, nothing unprintable."""
    return _text.public_text(text, _roots())
