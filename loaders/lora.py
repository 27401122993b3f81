"""LoRA for the Wan DiT: parse (kohya ``lora_down/lora_up`` + ``alpha``, PEFT ``lora_A/lora_B``,
``diff``, ``diff_b``; with or without ``diffusion_model.``) and merge into the loaded weights.

Choices (docs/LOADING.md):
* ``alpha`` is applied as ``alpha / rank`` when present (the kohya / ComfyUI convention the LoRAs
  were trained with). The official loader ignores alpha; for FusionX / lightx2v alpha == rank, so
  both agree.
* The math is done in fp32 and the result cast back to the parameter's dtype.
* Quantized (quanto int8/fp8) weights are dequantized, patched and requantized per row in the same
  format: memory and speed stay those of the quantized model, at the cost of one rounding step.
* Keys that match nothing are logged and returned; a LoRA that matches nothing is an error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from . import keymaps as km
from .files import LoaderError, open_weights
from ..models.quant_ops import QuantoLinear

log = logging.getLogger(__name__)


@dataclass
class LoraReport:
    """What one LoRA did: the parameters it changed and the LoRA keys that matched nothing."""

    source: str
    strength: float
    applied: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def read_lora(source) -> tuple[str, dict[str, torch.Tensor]]:
    """(name, tensors) from a path, or a ready dict of tensors (LoRA files are small)."""
    if isinstance(source, dict):
        return "<dict>", source
    with open_weights(source) as f:
        return str(Path(source).name), {k: f.get(k) for k in f.raw_keys()}


def model_targets(model: nn.Module) -> set[str]:
    """Parameter names a LoRA may patch (a quantized slot counts as ``X.weight``)."""
    names = set()
    for key in model.state_dict(keep_vars=True):
        if key.endswith(km.QUANTO_DATA):
            names.add(key[: -len("._data")])
        elif not key.endswith((".weight._scale", ".input_scale", ".output_scale")):
            names.add(key)
    return names


def _target(base: str, which: str, targets: set[str], underscored: dict[str, str]) -> str | None:
    for prefix in km.LORA_PREFIXES:
        if not base.startswith(prefix):
            continue
        name = base[len(prefix):]
        if f"{name}.{which}" in targets:
            return f"{name}.{which}"
        if name in underscored and f"{underscored[name]}.{which}" in targets:  # lora_unet_blocks_0_...
            return f"{underscored[name]}.{which}"
    return None


def group_lora(tensors: dict[str, torch.Tensor], targets: set[str]):
    """{target param: {role: tensor}} and the list of LoRA keys that matched no parameter."""
    underscored = {t.rsplit(".", 1)[0].replace(".", "_"): t.rsplit(".", 1)[0] for t in targets}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, value in tensors.items():
        suffix = next((s for s in km.LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            unmatched.append(key)
            continue
        role, which = km.LORA_SUFFIXES[suffix]
        target = _target(key[: -len(suffix)], which, targets, underscored)
        if target is None:
            unmatched.append(key)
            continue
        groups.setdefault(target, {})[role] = value
    return groups, unmatched


def lora_delta(target: str, parts: dict[str, torch.Tensor], shape: torch.Size, source: str) -> torch.Tensor:
    """The unscaled fp32 update of one parameter: diff + (alpha/rank)·up@down."""
    delta = torch.zeros(shape, dtype=torch.float32)
    if "diff" in parts:
        if parts["diff"].numel() != delta.numel():
            raise LoaderError(f"LoRA {source}: shapes disagree for {target}: diff {tuple(parts['diff'].shape)} "
                              f"vs weight {tuple(shape)}. This LoRA was made for a different model size.")
        delta += parts["diff"].float().reshape(shape)
    if ("up" in parts) != ("down" in parts):
        raise LoaderError(f"LoRA {source}: {target} has only one half of its up/down pair; the file is "
                          "incomplete.")
    if "up" in parts:
        up, down = parts["up"].float().flatten(1), parts["down"].float().flatten(1)
        rank = down.shape[0]
        if up.shape[1] != rank or up.shape[0] * down.shape[1] != delta.numel():
            raise LoaderError(f"LoRA {source}: shapes disagree for {target}: up {tuple(up.shape)} @ down "
                              f"{tuple(down.shape)} cannot update a {tuple(shape)} weight. This LoRA was made "
                              "for a different model size (e.g. Wan 1.3B vs 14B).")
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        delta += (up @ down).reshape(shape) * scale
    return delta


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    module._parameters[name] = nn.Parameter(value, requires_grad=False)


@torch.no_grad()
def apply_lora(model: nn.Module, source, strength: float = 1.0) -> LoraReport:
    """Merge one LoRA into ``model`` in place with ``strength``; returns what it did."""
    name, tensors = read_lora(source)
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise LoaderError(f"LoRA {name}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[:3]}); "
                          "merging it would break the model. Download the LoRA again.", input="lora")
    targets = model_targets(model)
    groups, unmatched = group_lora(tensors, targets)
    report = LoraReport(name, strength, unmatched=sorted(unmatched))
    if not groups:
        sample = sorted(tensors)[:3]
        raise LoaderError(f"LoRA {name}: none of its {len(tensors)} keys matches this Wan DiT (e.g. {sample}); "
                          "it is for another architecture. Pick a Wan2.1 14B LoRA (e.g. lightx2v, FusionX).")
    for target, parts in sorted(groups.items()):
        module_name, _, pname = target.rpartition(".")
        module = model.get_submodule(module_name)
        quant = isinstance(module, QuantoLinear) and module.quantized and pname == "weight"
        current = module.dequantized() if quant else getattr(module, pname)
        if list(parts) == ["alpha"]:
            report.unmatched.append(target + " (alpha without up/down)")
            continue
        delta = lora_delta(target, parts, current.shape, name) * strength
        if not bool(torch.isfinite(delta).all()):
            raise LoaderError(f"LoRA {name}: the update of {target} overflows at strength {strength:g}. "
                              "Lower the strength.", input="lora")
        if quant:
            module.add_delta(delta)
        else:
            _set_param(module, pname, (current.float() + delta.to(current.device)).to(current.dtype))
        report.applied.append(target)
    if report.unmatched:
        log.warning("LoRA %s: %d keys matched nothing in the model and were skipped (e.g. %s)",
                    name, len(report.unmatched), report.unmatched[:3])
    log.info("LoRA %s (strength %g): patched %d parameters", name, strength, len(report.applied))
    return report


def apply_loras(model: nn.Module, loras: Iterable) -> list[LoraReport]:
    """Apply several LoRAs in order; each item is ``(path_or_dict, strength)`` or a bare path."""
    reports = []
    for item in loras:
        source, strength = item if isinstance(item, (tuple, list)) else (item, 1.0)
        reports.append(apply_lora(model, source, float(strength)))
    return reports
