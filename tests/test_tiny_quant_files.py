"""The tiny "int8" / "fp8" / "FusionX" files of the host tests are real optimum-quanto files (issue 11.11).

They were plain fp32 files with empty maps (``linear_modules`` was given tensors, not shapes), so the
host tier never ran the quantized path."""
from __future__ import annotations

import torch

from infinitetalk.loaders.dit import load_dit
from infinitetalk.loaders.files import open_weights
from tiny import dit_files as D
from tiny import host_files as H

QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "fusionx": torch.int8}


def test_tiny_quant_files_are_quantized(tmp_path):
    H.write_quant_models(tmp_path)
    blocks = [m for m in D.linear_modules(D.base_shapes(D.TINY)) if m.startswith("blocks.")]
    for role, dtype in QDTYPES.items():
        path = tmp_path / "diffusion_models" / H.USER_FILES[role]
        with open_weights(path) as f:
            data = [k for k in f.raw_keys() if k.endswith(".weight._data")]
            assert len(data) >= len(blocks), role
            assert {f.dtype(k) for k in data} == {dtype}, role
        model = load_dit(path, dtype=torch.float32)
        assert model.load_report.quantized_layers >= len(blocks), role
