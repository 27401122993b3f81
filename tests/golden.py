"""Data-driven access to golden parity fixtures (../shared/golden/README.md is the spec).

Every fixture folder under ``tests/fixtures/golden/`` and under each root named in the environment
variable ``INFINITETALK_GOLDEN_DIRS`` (colon-separated) becomes a case. A case's pytest id is
``<root folder name>/<family folder>``, e.g. ``golden/dit_multi`` (``fixtures/golden/dit_multi`` and
``shared/golden/dit_multi`` when two roots share a folder name). Sizes are read from ``case.json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BUILTIN_ROOT = Path(__file__).parent / "fixtures" / "golden"


def golden_roots() -> list[Path]:
    roots = [BUILTIN_ROOT]
    for item in os.environ.get("INFINITETALK_GOLDEN_DIRS", "").split(":"):
        if item.strip():
            roots.append(Path(item.strip()).resolve())
    return roots


def root_label(root: Path) -> str:
    """The root's folder name, with its parent's when another root has the same name (both are ``golden``
    for the built-in copy and ``../shared/golden``)."""
    if sum(r.name == root.name for r in golden_roots()) > 1:
        return f"{root.parent.name}/{root.name}"
    return root.name


@dataclass(frozen=True)
class GoldenCase:
    root: Path
    family: str

    @property
    def dir(self) -> Path:
        return self.root / self.family

    @property
    def id(self) -> str:
        return f"{root_label(self.root)}/{self.family}"

    @cached_property
    def case(self) -> dict:
        return json.loads((self.dir / "case.json").read_text())

    @property
    def config(self) -> dict:
        return self.case["config"]

    def _load(self, rel: str | None) -> dict[str, torch.Tensor]:
        if not rel:
            return {}
        return load_file(str(self.dir / rel))

    def weights(self) -> dict[str, torch.Tensor]:
        """Model weights, upcast to fp32 (dit_single stores exactly-representable bf16)."""
        sd = self._load(self.case.get("weights_file", "weights.safetensors"))
        return {k: v.float() if v.is_floating_point() and v.dtype in (torch.bfloat16, torch.float16) else v
                for k, v in sd.items()}

    def inputs(self) -> dict[str, torch.Tensor]:
        """The case's inputs plus the shared keys it borrows (e.g. from ``../dit_single``)."""
        out = {}
        shared = self.case.get("shared_inputs")
        if shared:
            src = self._load(shared["file"])
            out.update({k: src[k] for k in shared["keys"]})
        rel = self.case.get("inputs_file", "inputs.safetensors")
        if rel and (self.dir / rel).exists():
            out.update(self._load(rel))
        return out

    def outputs(self) -> dict[str, torch.Tensor]:
        return self._load("outputs.safetensors")

    def file(self, key: str) -> Path:
        return self.dir / self.case[key]


_DITS: dict = {}


def golden_dit(case):
    """The case's DiT (its config, its weights loaded strictly), built once per root and weights file."""
    from infinitetalk.models.wan_dit import WanModel
    key = (case.root, case.case["weights_file"])
    if key not in _DITS:
        model = WanModel(**case.config)
        model.load_state_dict(case.weights(), strict=True)
        _DITS[key] = model.eval()
    return _DITS[key]


def golden_cases(family: str) -> list:
    """pytest params for every root that holds ``family`` (skips roots without it)."""
    params = []
    for root in golden_roots():
        if (root / family / "case.json").exists():
            case = GoldenCase(root, family)
            params.append(pytest.param(case, id=case.id))
    if not params:
        params.append(pytest.param(None, id=f"missing/{family}",
                                   marks=pytest.mark.skip(reason=f"no golden fixture for {family}")))
    return params


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol:g}"
