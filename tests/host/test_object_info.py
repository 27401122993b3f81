"""The real host imports the pack and lists every node with its inputs."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.host


def test_host_starts_without_import_failures(host):
    assert host.import_failures() == []
    assert host.object_info("LoadAudio")
