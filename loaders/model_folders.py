"""ComfyUI model folders: what the node combos list and where a choice lives (imports ``folder_paths``).

* ``register_folders()`` adds ``models/infinitetalk`` and ``models/wav2vec2`` to ``folder_paths``
  (idempotent; called when the extension loads, after ``--base-directory`` was applied).
* ``list_models(kind)`` / ``resolve_model(kind, name)``: unlike ``folder_paths.get_filename_list``
  these list a sharded checkpoint once (its ``*.safetensors.index.json``, shards hidden) and Hugging
  Face style model *folders* (a directory with ``config.json``) as single entries.
* Scans follow symbolic links the way the host does (weights on another disk, linked in), and
  visit every real folder once, so link loops (``a -> .``) cost nothing: linear in the folder tree.
* ``file_key`` / ``fingerprint``: cheap content identity (path + size + mtime + ctime + a hash of
  the first, middle and last 64 KiB) for caches and the nodes' input fingerprints.
* ``public_text``: what an error may say to an API client and the host's log: no absolute server
  paths (shown relative to the models/output folders), nothing unprintable.
"""
from __future__ import annotations

import hashlib
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


def _scan(base: str) -> list[str]:
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


def list_models(kind: str) -> list[str]:
    seen: dict[str, None] = {}                 # insertion-ordered set: linear, not quadratic
    for base in folders(kind):
        for entry in _scan(base):
            seen.setdefault(entry, None)
    return sorted(seen, key=str.lower)


def _relative_name(name: str) -> str | None:
    """The choice as a path relative to a model folder, judged on the text like the host does
    (absolute names, drive letters and '..' that climb out are refused); links are then followed."""
    if "\0" in name or os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return None
    norm = os.path.normpath(name)
    if norm in (".", "..") or norm.startswith(".." + os.sep):
        return None
    return norm


def resolve_model(kind: str, name: str) -> str | None:
    """Full path of a combo choice, or None when it is in none of the folders. The name may not climb
    out of the folder, but symbolic links inside it are followed wherever they point (as the host's
    own loaders do: users keep their weights on another disk and link them in)."""
    if not isinstance(name, str) or not name or name == "none":
        return None
    rel = _relative_name(name)
    if rel is None:
        return None
    for base in folders(kind):
        full = os.path.join(base, rel)
        if os.path.exists(full):
            return full
    return None


def missing_file(node: str, input_name: str, kind: str, name: str) -> str | None:
    """The node's validation message when the chosen file is in none of the folders, else None."""
    if resolve_model(kind, name) is not None:
        return None
    return public_text(f"{node}: {input_name} file '{name}' not found in {folder_hint(kind)}")


# ------------------------------------------------------------------- texts for clients and logs
_ABS_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:[\\/]|/)(?:[^\s'\"/\\:]+[/\\])+([^\s'\",;:)\]]*)")


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


def safe_text(text: str) -> str:
    """Escape what cannot be printed or encoded (control characters, lone surrogates of non-UTF-8
    file names) so the host can log the text and send it as JSON."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in str(text))


def public_text(text: str) -> str:
    """An error text for API clients and the log: known folders shown by their role (models/loras/...),
    any other absolute path reduced to its file name, then ``safe_text``."""
    text = str(text)
    for path, label in _roots():
        if path:
            text = text.replace(path + "/", label + "/").replace(path + "\\", label + "/").replace(path, label)
    text = _ABS_PATH.sub(lambda m: ".../" + m.group(1), text)
    return safe_text(text)


def folder_hint(kind: str) -> str:
    return " or ".join(f"ComfyUI/models/{n}/" for n in KINDS[kind])


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


def file_key(path: str) -> tuple:
    """What identifies a model file's content cheaply: path + size + mtime + ctime + inode + a hash
    of samples of its bytes (``content_hash``); for a model folder, of every file directly in it.
    A file swapped for another of the same size with its mtime restored still changes the key.
    Used to cache between runs and as the nodes' input fingerprints."""
    if path is None or not os.path.exists(path):
        return (path,)
    if os.path.isdir(path):
        entries = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
        return (path,) + tuple((e.name,) + _one_file_key(e.path) for e in entries)
    return (path,) + _one_file_key(path)


def fingerprint(kind: str, name: str) -> tuple:
    """The node fingerprint of a combo choice: changes when the file behind it changes."""
    path = resolve_model(kind, name)
    if path is not None and path.endswith(INDEX_SUFFIX):       # a shard set: the shards count too
        folder = os.path.dirname(path)
        return file_key(folder)
    return file_key(path)
