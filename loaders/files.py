"""Reading weight files without loading them whole: safetensors (memory-mapped), shard sets via
``*.index.json``, and ``.pth``/``.pt`` only through ``torch.load(weights_only=True)``.

Files are opened by their content, not their extension: the first bytes say whether a file is a
safetensors file, a torch zip archive or a raw pickle. Nothing here ever executes a pickle.
``WeightFile`` gives keys, shapes and dtypes from the header and reads one tensor at a time, so a
loader can cast and place each tensor before reading the next (peak RAM ≈ the result).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
INDEX_SUFFIX = ".index.json"

# safetensors header dtype names -> torch dtypes (read from the header, no tensor data touched).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class LoaderError(InputError):
    """A weight file cannot be used: the message says which file, what is wrong and how to fix it.

    The pack's one input error (``errors.InputError``) with the whole message as its problem:
    ``input`` names the node input whose file is at fault ("model", "audio_adapter", "lora", ...)
    when the loader knows it (else None, set later by ``blame``); the nodes use it instead of
    guessing from the message text."""

    def __init__(self, message: str, input: str | None = None):  # noqa: A002 - the node input's name
        super().__init__(input, message)


def blame(err: LoaderError, input_name: str) -> LoaderError:
    """Set the input to blame unless a deeper loader already did; returns ``err``."""
    if getattr(err, "input", None) is None:
        err.input = input_name
    return err


def sniff(path: Path) -> str:
    """The container format by content: 'safetensors', 'torch_zip', 'pickle', 'index' or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"
    # before the pickle test: a header length whose low byte is 0x80 starts with a pickle's opcode
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    if head.lstrip()[:1] == b"{":
        return "index"
    return "unknown"


def _check_safetensors_header(path: Path) -> dict:
    """Parse the header ourselves first, so a truncated or foreign file gets a clear message.

    Messages never quote the file's bytes (not even the length field as a number): the file may be
    anything a shard index pointed at."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise LoaderError(f"{path}: only {size} bytes; not a safetensors file (truncated or empty). "
                              "Download it again.")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise LoaderError(f"{path}: the safetensors header length is larger than the file ({size} bytes); "
                              "the file is truncated or not a safetensors file. Download it again.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LoaderError(f"{path}: the safetensors header is not valid JSON; "
                              "the file is damaged. Download it again.") from err
    _check_header_entries(path, header)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise LoaderError(f"{path}: tensor data runs to byte {8 + n + end} but the file has {size} bytes; "
                          "the download is incomplete (truncated file). Download it again.")
    return header


def _check_header_entries(path: Path, header) -> None:
    """Every tensor entry: {"dtype": str, "shape": [int...], "data_offsets": [begin, end]} (ints)."""
    def ints(v, n=None):
        return (isinstance(v, list) and (n is None or len(v) == n)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))
    if not isinstance(header, dict):
        raise LoaderError(f"{path}: the safetensors header is not a JSON object; the file is damaged. "
                          "Download it again.")
    for key, spec in header.items():
        if key == "__metadata__":
            if spec is not None and not (isinstance(spec, dict)
                                         and all(isinstance(v, str) for v in spec.values())):
                raise LoaderError(f"{path}: the safetensors header's __metadata__ is not a map of strings; "
                                  "the file is damaged. Download it again.")
            continue
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and ints(spec.get("shape"))
                and ints(spec.get("data_offsets"), 2) and spec["data_offsets"][0] <= spec["data_offsets"][1]):
            raise LoaderError(f"{path}: the safetensors header entry {str(key)[:80]!r} lacks a valid dtype, "
                              "shape or data_offsets; the file is damaged or was not written by a safetensors "
                              "library. Download it again.")


class WeightFile:
    """A read-only view of one weight file or shard set: keys, shapes, dtypes, one tensor at a time.

    ``prefix`` is stripped from every key (it is set by the caller once the layout is recognised).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.prefix = ""
        self.metadata: dict[str, str] = {}
        self._where: dict[str, Path] = {}        # key (with file prefix) -> file
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._handles: dict[Path, object] = {}
        self._tensors: dict[str, torch.Tensor] = {}  # only for torch files (already mmapped)
        self._open()

    # -- opening ---------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.path.exists():
            raise LoaderError(f"{self.path}: file not found.")
        if self.path.is_dir():
            self._open_dir()
            return
        kind = sniff(self.path)
        if kind == "safetensors":
            self._add_safetensors(self.path)
        elif kind in ("torch_zip", "pickle"):
            self._add_torch(self.path, mmap=kind == "torch_zip")
        elif kind == "index":
            self._add_index(self.path)
        else:
            raise LoaderError(f"{self.path}: not a weight file (neither safetensors, a shard index, nor a "
                              "torch checkpoint). Pick the .safetensors file or the *.index.json of a shard set.")

    def _open_dir(self) -> None:
        indexes = sorted(self.path.glob(f"*.safetensors{INDEX_SUFFIX}"))
        singles = sorted(self.path.glob("*.safetensors"))
        if len(indexes) == 1:
            self._add_index(indexes[0])
        elif len(singles) == 1:
            self._add_safetensors(singles[0])
        else:
            raise LoaderError(f"{self.path}: a folder must hold exactly one *.safetensors.index.json or one "
                              f".safetensors file (found {len(indexes)} indexes, {len(singles)} files). "
                              "Pick the file itself.")

    def _add_safetensors(self, path: Path) -> None:
        header = _check_safetensors_header(path)
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except SafetensorError as err:
            raise LoaderError(f"{path}: safetensors cannot open it ({err}). Download it again.") from err
        self._handles[path] = handle
        self.metadata.update(header.get("__metadata__") or {})
        for key, spec in header.items():
            if key == "__metadata__":
                continue
            if key in self._where:
                raise LoaderError(f"{path}: key {key!r} is also in {self._where[key]}; the shard set is "
                                  "inconsistent.")
            dtype = SAFETENSORS_DTYPES.get(spec["dtype"])
            if dtype is None:
                raise LoaderError(f"{path}: tensor {key!r} has unsupported dtype {spec['dtype']}.")
            self._where[key] = path
            self._info[key] = (tuple(spec["shape"]), dtype)

    def _add_index(self, path: Path) -> None:
        try:
            index = json.loads(path.read_text())
            weight_map = index["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise LoaderError(f"{path}: not a shard index (expected JSON with a 'weight_map').") from err
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
            raise LoaderError(f"{path}: the index's 'weight_map' must map tensor names to shard file names "
                              f"(found a {type(weight_map).__name__}). Download the index again.")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not _inside(path.parent, shard):
                raise LoaderError(f"{path}: the index names a shard {shard[:120]!r} outside its own folder; "
                                  "shards must be plain file names next to the index. The index is refused.")
        missing = [s for s in shards if not (path.parent / s).exists()]
        if missing:
            raise LoaderError(f"{path}: shard(s) {missing} listed in the index are not in {path.parent}. "
                              "Download every shard into the same folder as the index.")
        for shard in shards:
            if sniff(path.parent / shard) != "safetensors":
                raise LoaderError(f"{path.parent / shard}: listed as a shard but not a safetensors file. "
                                  "Download the shard again.")
            self._add_safetensors(path.parent / shard)
        listed, found = set(weight_map), set(self._where)
        if listed != found:
            diff = sorted(listed ^ found)[:5]
            raise LoaderError(f"{path}: the index and its shards disagree on {len(listed ^ found)} keys "
                              f"(e.g. {diff}). Re-download the shards or the index.")

    def _add_torch(self, path: Path, mmap: bool) -> None:
        # torch.load picks its reader by the name (.safetensors -> safetensors); ours is picked by
        # content, so a torch file with that name is handed over as an open file (read, not mmapped).
        by_name = path.name.endswith(".safetensors")
        try:
            if by_name:
                with open(path, "rb") as f:
                    obj = torch.load(f, map_location="cpu", weights_only=True)
            else:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise LoaderError(f"{path}: this checkpoint contains Python objects that need code execution to "
                              "load; it is refused for safety (weights_only). Convert it to .safetensors "
                              f"with a trusted tool. Detail: {str(err).splitlines()[0]}") from err
        except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as err:
            raise LoaderError(f"{path}: cannot read this torch checkpoint (a zip or pickle that is not a "
                              "torch state dict, or damaged/truncated). Download it again.") from err
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # the official --dit_path .pt layout
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LoaderError(f"{path}: the checkpoint is not a flat dict of tensors.")
        for key, value in obj.items():
            self._where[key] = path
            self._tensors[key] = value
            self._info[key] = (tuple(value.shape), value.dtype)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        return sorted(set(self._where.values()))

    def raw_keys(self) -> list[str]:
        return list(self._where)

    def keys(self) -> list[str]:
        n = len(self.prefix)
        return [k[n:] for k in self._where if k.startswith(self.prefix)]

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._info[self.prefix + key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._info[self.prefix + key][1]

    def get(self, key: str) -> torch.Tensor:
        """One tensor (a fresh CPU tensor; for torch files a view of the memory map)."""
        full = self.prefix + key
        if full in self._tensors:
            return self._tensors[full]
        path = self._where[full]
        try:
            return self._handles[path].get_tensor(full)
        except SafetensorError as err:
            raise LoaderError(f"{path}: reading {full!r} failed ({err}); the file is damaged.") from err

    def file_of(self, key: str) -> Path:
        return self._where[self.prefix + key]

    def keys_in(self, path: Path) -> list[str]:
        """Keys (prefix stripped) stored in one file of the set, in file order."""
        n = len(self.prefix)
        return [k[n:] for k, p in self._where.items() if p == path and k.startswith(self.prefix)]

    def release(self, path: Path) -> None:
        """Drop the memory map of one file (its touched pages stop counting towards RSS)."""
        self._handles.pop(path, None)
        for key in [k for k, p in self._where.items() if p == path and k in self._tensors]:
            del self._tensors[key]

    def close(self) -> None:
        self._handles.clear()
        self._tensors.clear()

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightFile({self.path}, {len(self._where)} tensors)"


def _inside(folder: Path, name: str) -> bool:
    """``name`` is a relative path that stays in ``folder`` (checked on the text: no '..', no root)."""
    if not name or "\0" in name or os.path.isabs(name) or (os.name == "nt" and ":" in name):
        return False
    norm = os.path.normpath(name)
    return not (norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("/"))


def open_weights(path: str | Path) -> WeightFile:
    """Open a weight file, shard index or folder by content (see ``WeightFile``)."""
    return WeightFile(path)


def read_json(path: str | Path, what: str) -> dict:
    """A small JSON file (config or quantization map), with a clear error naming ``what`` it is."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoaderError(f"{path}: cannot read the {what} ({err}).") from err
    if not isinstance(data, dict):
        raise LoaderError(f"{path}: the {what} must be a JSON object.")
    return data
