"""optimum-quanto weight-only int8 / fp8 Linear layers, read from the official files.

The official quantized models (``infinitetalk_*_{int8,fp8}``, MultiTalk ``dit_model_int8``,
``quant_model_*_FusionX``, T5 ``t5_{int8,fp8}``) store each quantized Linear ``X`` as
``X.weight._data`` (int8 or float8_e4m3fn, [out, in]), ``X.weight._scale`` (fp32, [out, 1], one
scale per output row), ``X.bias`` and the unused activation scalars ``X.input_scale`` /
``X.output_scale``, next to a JSON map ``{module: {"weights": qtype, "activations": "none"}}``.
Which modules are quantized is whatever the map says; this module never assumes it.

``QuantoLinear`` starts as a float Linear slot and becomes a quantized slot when the map names it
(``prepare_quantized``), so one model class serves both. Its forward dequantizes per row and calls
``F.linear`` in the input's dtype; a GPU fast path (``torch._int_mm`` / ``torch._scaled_mm``) belongs
in ``_quantized_linear``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.quant_matmul import quant_linear
from . import keymaps as km
from .files import LoaderError, read_json

log = logging.getLogger(__name__)

# W8A8 on the GPU's 8-bit tensor cores (models/quant_matmul.py): faster, but it also rounds the
# activations, so it is opt-in; the default keeps the official weight-only numerics.
FAST_MATMUL_ENV = "INFINITETALK_FAST_QUANT_MATMUL"

QTYPES = {"qint8": torch.int8, "qfloat8_e4m3fn": torch.float8_e4m3fn, "qfloat8": torch.float8_e4m3fn}
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def quantize_rows(w: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row quantization: (data [out, in] int8/fp8, scale [out, 1] fp32)."""
    dtype = QTYPES[qtype]
    w = w.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / QMAX[dtype]).clamp(min=1e-12)
    q = w / scale
    if dtype == torch.int8:
        data = q.round().clamp(-128, 127).to(torch.int8)
    else:
        data = q.clamp(-QMAX[dtype], QMAX[dtype]).to(dtype)
    return data, scale


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


class QuantoLinear(nn.Module):
    """A Linear that holds either a float weight or quanto int8/fp8 data + per-row fp32 scale.

    ``state_dict()`` uses the official quanto key names once quantized (``weight._data`` ...).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qtype: str | None = None
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False)
                     if bias else None)

    # -- becoming a quantized slot -----------------------------------------------------------------
    def quantize_slot(self, qtype: str) -> None:
        """Turn this layer into an (empty) quantized slot of ``qtype``; the loader then fills it."""
        if qtype not in QTYPES:
            raise LoaderError(f"quantization type {qtype!r} is not supported (expected one of {sorted(QTYPES)}).")
        device = self._parameters["weight"].device if "weight" in self._parameters else self.weight_data.device
        self._parameters.pop("weight", None)
        self.qtype = qtype
        shape = (self.out_features, self.in_features)
        self.register_buffer("weight_data", torch.empty(shape, device=device, dtype=QTYPES[qtype]))
        self.register_buffer("weight_scale", torch.empty(self.out_features, 1, device=device))
        self.register_buffer("input_scale", torch.ones((), device=device))
        self.register_buffer("output_scale", torch.ones((), device=device))

    @property
    def quantized(self) -> bool:
        return self.qtype is not None

    def __getattr__(self, name: str):
        # ``weight`` of a quantized slot: the dequantized fp32 tensor (inspection, LoRA; not forward).
        if name == "weight" and self.__dict__.get("qtype") is not None:
            return self.dequantized()
        return super().__getattr__(name)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_data.to(torch.float32) * self.weight_scale).to(dtype)

    def set_quantized(self, data: torch.Tensor, scale: torch.Tensor) -> None:
        self.weight_data, self.weight_scale = data, scale.to(torch.float32)

    def add_delta(self, delta: torch.Tensor) -> None:
        """weight += delta: dequantize in fp32, add, requantize per row in the same format."""
        data, scale = quantize_rows(self.dequantized() + delta.to(self.weight_data.device, torch.float32),
                                    self.qtype)
        self.set_quantized(data, scale)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qtype is None:
            return F.linear(x, self._parameters["weight"], self.bias)
        return self._quantized_linear(x)

    def _quantized_linear(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and fast_matmul_enabled():
            return quant_linear(x, self.weight_data, self.weight_scale, self.bias)
        # Reference numerics: W = _data · _scale (fp32), then a matmul in the compute dtype.
        w = self.dequantized(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    # -- official state-dict names -----------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.qtype is not None:
            for official, ours in km.QUANTO_SUFFIXES.items():
                destination[prefix + official] = destination.pop(prefix + ours)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.qtype is not None:
            for official, ours in km.QUANTO_SUFFIXES.items():
                if prefix + official in state_dict:
                    state_dict[prefix + ours] = state_dict.pop(prefix + official)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, qtype={self.qtype}"


def fast_matmul_enabled() -> bool:
    """True when ``INFINITETALK_FAST_QUANT_MATMUL=1``: int8/fp8 layers on CUDA use W8A8 kernels."""
    return os.environ.get(FAST_MATMUL_ENV, "0") == "1"


class QuantoOps:
    """``operations`` namespace whose Linear can become an optimum-quanto int8/fp8 slot."""

    Linear = QuantoLinear
    Conv3d = nn.Conv3d
    LayerNorm = nn.LayerNorm


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
        module.quantize_slot(spec["weights"])
