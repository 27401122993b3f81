"""One real ComfyUI host per test session (started lazily by the first test that asks for it)."""
from __future__ import annotations

import pytest

from host_server import HostServer


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/host/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.host)
            item.add_marker(pytest.mark.no_inference_mode)


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """A running host; its base directory (models/, input/, output/) lies under pytest's tmp dir."""
    base = tmp_path_factory.mktemp("comfy-base")
    with HostServer(base) as server:
        yield server
