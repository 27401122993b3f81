"""One loading core for every model: plan each model key to one source tensor, then stream.

Each loader (DiT, umT5, wav2vec2) builds its model on the ``meta`` device (layers through
``operations``, quantized slots already prepared) and hands it here with its files and its
``KeyMap``, the only per-model data: how a file's names become the model's names, which model keys
a file may lack, and what to tell the user when the keys do not fit. The core then

1. names every tensor of the files in the model's terms (``KeyedFiles``); the quant formats are
   known here once: optimum-quanto ``X.weight._data`` / ``X.weight._scale`` / ``X.input_scale`` /
   ``X.output_scale``, ComfyUI / Kijai scaled fp8 ``X.scale_weight`` (+ ``scaled_fp8`` marker and
   ``X.scale_input``, ignored);
2. plans every model key to exactly one source tensor (``plan_keys``): a quantized slot gets the
   file's int8/fp8 bytes as stored and a per-row fp32 scale (the quanto scale, the fp8 file's
   ``scale_weight`` broadcast, or 1); a float slot gets the file's tensor cast to ``dtype``, or
   ``w · scale`` in fp32 first when the file holds a scaled or quantized weight (the upcast path).
   Keys that are missing, unexpected or provided twice are ONE ``LoaderError`` before any data is
   read;
3. streams (``stream_into``): read one tensor, cast it, place it on ``device``, assign it, then the
   next, file by file; each file's memory map is dropped after its last tensor. Peak host memory is
   the result (or nothing, when ``device`` is a GPU) plus one tensor in flight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..models.quant_ops import QuantoLinear
from . import keymaps as km
from .files import LoaderError
from .quanto import row_scale

QUANTO_SCALE = ".weight._scale"
ACTIVATION_SCALES = (".input_scale", ".output_scale")   # quanto scalars, unused (weight-only): 1 if absent
EXAMPLES = 6                                             # keys quoted per list in an error


def _same(name: str) -> str:
    return name


def _no_hint(missing: set, unexpected: set, twice: set) -> str:
    return ""


@dataclass(frozen=True)
class KeyMap:
    """The per-model data of a load.

    what: the model in messages ("the InfiniteTalk DiT", "the umT5 encoder").
    rename: a file's tensor name -> the model key (None: a tensor the model does not use); it sees
        plain names (``X.weight``), never the quant suffixes, which the core splits off first.
    fill: model keys a file may lack -> the value they are filled with (in ``dtype``).
    hint: (missing model keys, unexpected file keys, model keys provided twice) -> the sentence that
        says how to fix a mismatch.
    shape_fix: how to fix a tensor whose shape does not fit (the model was built from a config).
    error: the ``LoaderError`` subclass raised.
    """

    what: str
    rename: Callable[[str], str | None] = _same
    fill: Mapping[str, float] = field(default_factory=dict)
    hint: Callable[[set, set, set], str] = _no_hint
    shape_fix: str = "The file does not fit this model configuration."
    error: type = LoaderError


@dataclass
class Found:
    """What the files hold for one model name: a plain tensor (+ its fp8 ``scale_weight``) or quanto
    data + per-row scale. Keys are as the source names them."""

    source: object
    value: str | None = None
    scale: str | None = None
    data: str | None = None
    data_scale: str | None = None

    def tensor_key(self) -> str | None:
        return self.value or self.data

    def any_key(self) -> str | None:
        return self.value or self.data or self.scale or self.data_scale


@dataclass(frozen=True)
class Entry:
    """How one model key is made: read ``key`` from ``source`` (None: the constant ``fill``) as
    ``kind``: 'cast' (to dtype, × ``scale`` in fp32 first if set), 'keep' (the stored bytes),
    'fp32', or 'row_scale' (quanto's [rows, 1] fp32 scale of the weight ``key``, from ``scale``)."""

    source: object
    key: str | None
    kind: str = "cast"
    scale: str | None = None
    fill: float = 0.0


def _split(key: str) -> tuple[str, str] | None:
    """file key -> (plain weight name, role), or None for format markers the model never holds."""
    if key == km.SCALED_FP8_MARKER or key.endswith(("." + km.SCALED_FP8_MARKER, *km.SCALED_FP8_IGNORED_SUFFIXES)):
        return None
    if key.endswith(km.QUANTO_DATA):
        return key[: -len("._data")], "data"
    if key.endswith(QUANTO_SCALE):
        return key[: -len("._scale")], "data_scale"
    if key.endswith(km.SCALED_FP8_SUFFIX):
        return key[: -len(km.SCALED_FP8_SUFFIX)] + ".weight", "scale"
    for suffix in ACTIVATION_SCALES:
        if key.endswith(suffix):
            return key[: -len(suffix)] + ".weight", suffix
    return key, "value"


class KeyedFiles:
    """The tensors of several files under the model's names (the key map applied once).

    ``found``: model name -> ``Found``; ``scalars``: model key of a quanto activation scalar -> (source,
    key); ``duplicates``: model names two file keys claim. ``shape`` / ``dtype`` / ``in`` answer for
    the plain tensor or the quanto data of a name, from the headers (no data read).
    """

    def __init__(self, sources: list, rename: Callable[[str], str | None] = _same):
        self.sources = list(sources)
        self.found: dict[str, Found] = {}
        self.scalars: dict[str, tuple[object, str]] = {}
        self.duplicates: dict[str, list[str]] = {}
        for src in self.sources:
            for key in src.keys():
                self._add(src, key, rename)

    def _add(self, src, key: str, rename) -> None:
        split = _split(key)
        name = None if split is None else rename(split[0])
        if name is None:
            return
        role = split[1]
        if role in ACTIVATION_SCALES:
            self.scalars[name[: -len(".weight")] + role] = (src, key)
            return
        entry = self.found.setdefault(name, Found(src))
        other = {"value": entry.data, "data": entry.value}.get(role)   # a weight both plain and quantized
        if entry.source is not src or getattr(entry, role) is not None or other is not None:
            self.duplicates.setdefault(name, [_where(entry.source, entry.any_key())]).append(_where(src, key))
            return
        setattr(entry, role, key)

    def __contains__(self, name: str) -> bool:
        return name in self.found and self.found[name].tensor_key() is not None

    def shape(self, name: str) -> tuple[int, ...]:
        f = self.found[name]
        return tuple(f.source.shape(f.tensor_key()))

    def dtype(self, name: str) -> torch.dtype:
        f = self.found[name]
        return f.source.dtype(f.tensor_key())


def _where(src, key: str) -> str:
    return f"{key} ({Path(src.path).name})"


# -- the plan ----------------------------------------------------------------------------------------
def _plan_one(key: str, files: KeyedFiles, keymap: KeyMap, used: set) -> Entry | None:
    """The entry for one model key, or None when the files do not provide it."""
    if key.endswith(km.QUANTO_DATA) or key.endswith(QUANTO_SCALE):       # a quantized slot
        name = key[: -len("._data")] if key.endswith(km.QUANTO_DATA) else key[: -len("._scale")]
        f = files.found.get(name)
        if f is None or f.tensor_key() is None or (f.data and not f.data_scale):
            return None
        used.add(name)
        if key.endswith(km.QUANTO_DATA):
            return Entry(f.source, f.tensor_key(), "keep")
        return Entry(f.source, f.tensor_key(), "row_scale", scale=f.data_scale if f.data else f.scale)
    if key.endswith(ACTIVATION_SCALES):
        src, file_key = files.scalars.get(key, (None, None))
        return Entry(src, file_key, "fp32", fill=1.0)
    f = files.found.get(key)
    if f is not None and f.value is not None:                              # plain (× fp8 scale)
        used.add(key)
        return Entry(f.source, f.value, "cast", scale=f.scale)
    if f is not None and f.data is not None and f.data_scale is not None:  # quanto, dequantised
        used.add(key)
        return Entry(f.source, f.data, "cast", scale=f.data_scale)
    if key in keymap.fill:
        return Entry(None, None, "cast", fill=keymap.fill[key])
    return None


def plan_keys(model: nn.Module, sources, keymap: KeyMap) -> dict[str, Entry]:
    """model key -> ``Entry``; every key exactly once, or one error listing what does not fit.
    ``sources``: a list of ``WeightFile`` (``keymap.rename`` is applied here) or a ``KeyedFiles``."""
    files = sources if isinstance(sources, KeyedFiles) else KeyedFiles(sources, keymap.rename)
    plan, missing, used = {}, set(), set()
    for key in model.state_dict(keep_vars=True):
        entry = _plan_one(key, files, keymap, used)
        if entry is None:
            missing.add(key)
        else:
            plan[key] = entry
    unexpected = {f.any_key() for name, f in files.found.items() if name not in used}
    if missing or unexpected or files.duplicates:
        raise key_error(keymap, files, missing, unexpected)
    return plan


def key_error(keymap: KeyMap, files: KeyedFiles, missing: set, unexpected: set) -> LoaderError:
    names = " + ".join(str(s.path) for s in files.sources)
    parts = [f"{len(keys)} {what} (e.g. {sorted(keys)[:EXAMPLES]})"
             for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
    if files.duplicates:
        twice = [" and ".join(v) for _, v in sorted(files.duplicates.items())[:3]]
        parts.append(f"{len(files.duplicates)} provided twice (e.g. {twice})")
    hint = keymap.hint(missing, unexpected, set(files.duplicates))
    return keymap.error(f"{names}: the keys do not match {keymap.what}: {', '.join(parts)}."
                        + (f" {hint}" if hint else ""))


# -- streaming ---------------------------------------------------------------------------------------
def _read(entry: Entry, slot: torch.Tensor, dtype: torch.dtype, device, keymap: KeyMap) -> torch.Tensor:
    src, kind = entry.source, entry.kind
    if entry.key is None:                                   # a key the files may lack
        fill_dtype = torch.float32 if kind == "fp32" else dtype
        return torch.full(tuple(slot.shape), entry.fill, dtype=fill_dtype, device=device)
    if kind == "row_scale":
        scale = None if entry.scale is None else src.get(entry.scale)
        rows = src.shape(entry.key)[0]
        return row_scale(rows, scale, f"{src.file_of(entry.key)}: {entry.scale}").to(device)
    t = src.get(entry.key)
    if kind == "keep":
        if t.dtype != slot.dtype:
            raise keymap.error(f"{src.file_of(entry.key)}: {entry.key} is stored as {t.dtype}, but its layer holds "
                               f"{slot.dtype} weights. The quantization map does not belong to this file.")
        return t.to(device)
    if kind == "fp32":
        return t.to(device=device, dtype=torch.float32)
    if entry.scale is not None:                             # scaled fp8 or quanto, upcast: w · scale
        t = t.to(torch.float32) * src.get(entry.scale).to(torch.float32)
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def _assign(modules: dict[str, nn.Module], key: str, value: torch.Tensor, entry: Entry, keymap: KeyMap) -> None:
    owner = km.module_of(key) if "." in key else ""          # "" = the model itself (masked_spec_embed)
    module, local = modules[owner], key[len(owner) + 1:] if owner else key
    if isinstance(module, QuantoLinear) and module.quantized:
        local = km.QUANTO_SUFFIXES.get(local, local)
    current = module._parameters.get(local, module._buffers.get(local))
    if current is None or tuple(current.shape) != tuple(value.shape):
        want = None if current is None else tuple(current.shape)
        where = entry.source.file_of(entry.key) if entry.key else "fill"
        raise keymap.error(f"{where}: shapes disagree for {key}: file {tuple(value.shape)}, model {want}. "
                           f"{keymap.shape_fix}")
    if local in module._parameters:
        module._parameters[local] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[local] = value


def _file_uses(plan: dict[str, Entry]) -> dict[tuple[int, Path], int]:
    """(source, file) -> how many planned reads touch it (a weight and its scale may sit in two shards)."""
    uses: dict[tuple[int, Path], int] = {}
    for entry in plan.values():
        for key in (entry.key, entry.scale):
            if key is not None:
                where = (id(entry.source), entry.source.file_of(key))
                uses[where] = uses.get(where, 0) + 1
    return uses


def stream_into(model: nn.Module, plan: dict[str, Entry], dtype: torch.dtype, device,
                keymap: KeyMap) -> None:
    """Read, cast, place and assign every planned tensor, file by file; release each file after its
    last read."""
    modules = dict(model.named_modules())
    slots = model.state_dict(keep_vars=True)
    order = sorted(plan, key=lambda k: (plan[k].key is None, _file_rank(plan[k])))
    uses = _file_uses(plan)
    for key in order:
        entry = plan[key]
        _assign(modules, key, _read(entry, slots[key], dtype, device, keymap), entry, keymap)
        for file_key in (entry.key, entry.scale):
            if file_key is None:
                continue
            where = (id(entry.source), entry.source.file_of(file_key))
            uses[where] -= 1
            if uses[where] == 0:
                entry.source.release(where[1])
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise LoaderError(f"internal: {len(left)} tensors were not loaded (e.g. {left[:3]}).")


def _file_rank(entry: Entry) -> tuple[str, str]:
    if entry.key is None:
        return ("", "")
    return (str(entry.source.path), str(entry.source.file_of(entry.key)))


def load_into(model: nn.Module, sources, keymap: KeyMap, dtype: torch.dtype, device) -> None:
    """``plan_keys`` then ``stream_into``: the whole load of a model built on ``meta``. ``sources``: a
    list of ``WeightFile`` (the key map is applied here) or a ``KeyedFiles`` already made with it."""
    stream_into(model, plan_keys(model, sources, keymap), dtype, device, keymap)
