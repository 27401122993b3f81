"""A fresh install finds the bundled workflows' demo inputs in input/; a user's file is never replaced."""
from __future__ import annotations

import pytest

from tiny.host_files import REPO

from host_server import HostServer, prepare_base_dir

pytestmark = pytest.mark.host


def test_demo_inputs_are_offered_at_start_without_overwriting(tmp_path):
    base = prepare_base_dir(tmp_path / "fresh")
    (base / "input" / "single_1.wav").write_bytes(b"the user's own recording")
    with HostServer(base):
        pass
    demo = sorted(p for p in (REPO / "demo").iterdir() if p.suffix in (".png", ".wav", ".mp4"))
    assert demo
    for src in demo:
        dst = base / "input" / src.name
        if src.name == "single_1.wav":
            assert dst.read_bytes() == b"the user's own recording"
        else:
            assert dst.read_bytes() == src.read_bytes(), src.name
    assert not list((base / "input").glob(".*.part"))
    assert "demo inputs for the bundled workflows copied" in (base / "host.log").read_text()
