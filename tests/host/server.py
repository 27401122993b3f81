"""The host harness moved to harness/host_server.py (tests/conftest.py puts harness/ on sys.path).

Kept only for imports written ``from .server import ...`` that have not moved yet (test_browser.py);
new code imports ``host_server``."""
from host_server import (BASE_SUBDIRS, ExecutionFailed, HostError, HostServer,  # noqa: F401
                         PromptRejected, prepare_base_dir)
