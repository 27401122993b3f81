"""optimum-quanto quantized files: the quantization map and the per-row scale of scaled files.

The official quantized models store each quantized Linear ``X`` as ``X.weight._data`` /
``X.weight._scale`` next to a JSON map ``{module: {"weights": qtype, "activations": "none"}}``.
Which modules are quantized is whatever the map says; this module never assumes it. The layer,
the quantizer and the W8A8 kernels live in ``models/quant_ops.py`` (the format as an ``operations``
namespace); here: finding and checking the map, and turning the named Linear layers into slots.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..models.quant_ops import QTYPES, QuantoLinear
from . import keymaps as km
from .files import LoaderError, read_json

log = logging.getLogger(__name__)


def row_scale(rows: int, scale: torch.Tensor | None, where: str = "") -> torch.Tensor:
    """A file's weight scale as quanto's per-row fp32 [rows, 1]: 1 when absent (plain fp8), a per-tensor
    scalar broadcast (ComfyUI / Kijai ``scale_weight``), or one value per row as is."""
    if scale is None:
        return torch.ones(rows, 1)
    scale = scale.to(torch.float32).reshape(-1, 1)
    if scale.shape[0] not in (1, rows):
        raise LoaderError(f"{where}: the weight scale has {scale.shape[0]} values for {rows} rows; expected "
                          "one per tensor or one per row. The file is damaged or not a scaled-fp8 file.")
    return scale.expand(rows, 1).clone()


# -- the quantization map ------------------------------------------------------------------------
def map_candidates(path: Path) -> list[Path]:
    """Where the map of ``path`` may be: same stem .json, the official 'safetensors'->'json'
    replacement of the whole path, and the known sibling names of MeiGen's releases."""
    path = Path(path)
    out = [path.with_suffix(".json"), Path(str(path).replace("safetensors", "json"))]
    for pattern, template in km.QUANT_MAP_SIBLINGS:
        m = pattern.match(path.stem)
        if m:
            out.append(path.parent / template.format(*m.groups()))
    return list(dict.fromkeys(out))


def find_quant_map(path: Path, keys, dtypes=None) -> tuple[Path, dict]:
    """The quantization map next to ``path`` that matches its keys; clear error if none does."""
    path = Path(path)
    tried = map_candidates(path)
    named = [p for p in tried if p.is_file()]
    others = sorted(p for p in path.parent.glob("*.json") if p not in named and p.stat().st_size < 2**24)
    problems = []
    for candidate in named + others:
        try:
            qmap = read_json(candidate, "quantization map")
        except LoaderError as err:
            if candidate in named:          # a file named like this file's map must be one
                raise
            log.debug("%s: not a quantization map (%s)", candidate.name, err)   # notes.json etc.
            continue
        try:
            validate_quant_map(qmap, keys, candidate, dtypes)
        except LoaderError as err:
            problems.append(str(err))
            continue
        log.info("quantization map for %s: %s", path.name, candidate.name)
        return candidate, qmap
    detail = f" Candidates that did not match: {problems[:2]}" if problems else ""
    raise LoaderError(f"{path}: this is an optimum-quanto quantized model, but no matching quantization map "
                      f"(.json) is next to it. Put the map that ships with it in the same folder (looked for "
                      f"{[p.name for p in tried]}).{detail}")


def validate_quant_map(qmap: dict, keys, where: Path | str = "quantization map", dtypes=None) -> None:
    """The map must name exactly the modules with ``.weight._data`` keys, each weight-only."""
    keys = set(keys)
    quantized = {km.module_of(k) for k in keys if k.endswith(km.QUANTO_DATA)}
    if not all(isinstance(v, dict) and "weights" in v for v in qmap.values()):
        raise LoaderError(f"{where}: not a quanto quantization map (entries need a 'weights' field).")
    listed = set(qmap)
    if listed != quantized:
        extra, missing = sorted(listed - quantized), sorted(quantized - listed)
        raise LoaderError(f"{where}: the map does not match the weights: {len(extra)} modules mapped but not "
                          f"quantized in the file (e.g. {extra[:3]}), {len(missing)} quantized but not mapped "
                          f"(e.g. {missing[:3]}). Use the map that was released with this file.")
    for name, spec in qmap.items():
        if spec["weights"] not in QTYPES:
            raise LoaderError(f"{where}: {name} uses {spec['weights']!r}; supported: {sorted(QTYPES)}.")
        if spec.get("activations", "none") not in ("none", None):
            raise LoaderError(f"{where}: {name} quantizes activations ({spec['activations']}); only "
                              "weight-only quantization is supported.")
        if name + ".weight._scale" not in keys:
            raise LoaderError(f"{where}: {name}.weight._scale is missing from the weights.")
        if dtypes is not None and dtypes(name + km.QUANTO_DATA) != QTYPES[spec["weights"]]:
            raise LoaderError(f"{where}: {name} is mapped as {spec['weights']} but stored as "
                              f"{dtypes(name + km.QUANTO_DATA)}.")


def prepare_quantized(model: nn.Module, qmap: dict) -> None:
    """Make every module named in ``qmap`` a quantized slot (plain nn.Linear layers are swapped)."""
    for name, spec in qmap.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise LoaderError(f"quantization map names {name!r}, which this model does not have.") from err
        if not isinstance(module, QuantoLinear):
            if not isinstance(module, nn.Linear):
                raise LoaderError(f"quantization map names {name!r}, which is a {type(module).__name__}, "
                                  "not a Linear layer.")
            swapped = QuantoLinear(module.in_features, module.out_features, module.bias is not None,
                                   device=module.weight.device, dtype=module.weight.dtype)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, swapped)
            module = swapped
        if spec["weights"] not in QTYPES:
            raise LoaderError(f"quantization type {spec['weights']!r} is not supported (expected one of "
                              f"{sorted(QTYPES)}).")
        module.quantize_slot(spec["weights"])
