"""The host's own layers plug into the ``operations`` seam: the tiny DiT built with
``comfy.ops.disable_weight_init`` (what ``bench/host_casting.py`` measures on the GPU against our block
streamer, docs/ARCHITECTURE.md) gives exactly our layers' output. A subprocess: the host's modules read
their command-line options once per process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_host_layers_give_our_output(tmp_path):
    out = tmp_path / "smoke.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "host_casting.py"), "--smoke", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=300)
    row = json.loads(out.read_text())["runs"]["host_cpu"]
    assert row["finite"] and row["max_abs_vs_resident"] == 0.0, row
