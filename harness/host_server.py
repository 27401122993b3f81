"""A real ComfyUI host for tests and the try-it script.

``HostServer`` prepares a fresh base directory (``custom_nodes/comfyui-infinitetalk`` -> the repo
root, ``models/``, ``input/``, ``output/``, ``temp/``, ``user/``), starts the unpacked host at
``.host/ComfyUI`` with the repo's ``.venv`` python on a free port, waits for ``/system_stats``, and
stops the process by its PID at exit.  Standard library only (plus ``psutil`` for ``rss_mb``), so it
can be imported by path from outside pytest::

    spec = importlib.util.spec_from_file_location("host_server", "harness/host_server.py")
    ...
    with HostServer(base_dir) as host:
        outputs = host.run(prompt)          # queue + wait
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_ROOT = REPO / ".host" / "ComfyUI"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PACK_LINK_NAME = "comfyui-infinitetalk"
BASE_SUBDIRS = ("custom_nodes", "models", "input", "output", "temp", "user")

log = logging.getLogger(__name__)


class HostError(RuntimeError):
    """The host did not start, or it reported a failure."""


class PromptRejected(HostError):
    """``POST /prompt`` answered 400: ``error`` and ``node_errors`` as the host sent them."""

    def __init__(self, body: dict):
        self.body = body
        self.error = body.get("error", {})
        self.node_errors = body.get("node_errors", {})
        super().__init__(f"prompt rejected: {self.messages()}")

    def messages(self) -> list[str]:
        """Every message in the rejection, flattened: the main error then each node's errors."""
        out = []
        if self.error:
            out.append(f"{self.error.get('message', '')}: {self.error.get('details', '')}")
        for node_id, entry in self.node_errors.items():
            for err in entry.get("errors", []):
                out.append(f"[{node_id} {entry.get('class_type', '')}] "
                           f"{err.get('message', '')}: {err.get('details', '')}")
        return out


class ExecutionFailed(HostError):
    """The prompt ran and a node raised: the host's ``execution_error`` message."""

    def __init__(self, info: dict):
        self.info = info
        self.node_id = info.get("node_id")
        self.node_type = info.get("node_type")
        self.exception_message = info.get("exception_message", "")
        self.exception_type = info.get("exception_type", "")
        super().__init__(f"node {self.node_id} ({self.node_type}) failed: "
                         f"{self.exception_type}: {self.exception_message}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_dir(base: Path) -> Path:
    """Make the host's base directory with the pack linked into custom_nodes/ (idempotent)."""
    base = Path(base)
    for sub in BASE_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


class HostServer:
    """Context manager around one ComfyUI process; see the module docstring."""

    def __init__(self, base_dir: str | os.PathLike | None = None, port: int | None = None,
                 start_timeout: float = 90.0, extra_args: tuple[str, ...] = (),
                 python: str | os.PathLike = VENV_PYTHON, env: dict | None = None):
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="it-host-"))
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self.python = str(python)
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "host.log"
        self._log_file = None

    # ----------------------------------------------------------------- paths
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "HostServer":
        prepare_base_dir(self.base_dir)
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir),
               # the default database lies in the host tree (read-only for us): keep it in memory
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=HOST_ROOT, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostError(f"host exited with code {self.proc.returncode} during start-up\n"
                                f"{self.log_tail()}")
            try:
                self._get("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        else:
            raise HostError(f"host did not answer /system_stats within {self.start_timeout:.0f} s\n"
                            f"{self.log_tail()}")
        failed = self.import_failures()
        if failed:
            raise HostError(f"the pack failed to import: {failed}\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "HostServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Log lines that say the pack (or anything) failed to import."""
        return [line for line in self.log_text().splitlines()
                if "IMPORT FAILED" in line or "Cannot import" in line
                or "Error while calling comfy_entrypoint" in line]

    def rss_mb(self) -> float:
        """Resident memory of the server process (and its children) in MiB."""
        import psutil
        proc = psutil.Process(self.proc.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def _get(self, path: str, timeout: float = 30):
        return self._request("GET", path, timeout=timeout)

    def object_info(self, node_id: str | None = None) -> dict:
        path = "/object_info" if node_id is None else f"/object_info/{node_id}"
        return self._get(path, timeout=60)

    def queue(self, prompt: dict) -> str:
        """Queue an API-format graph; returns the prompt id or raises ``PromptRejected``."""
        try:
            body = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                raise HostError(f"/prompt answered {err.code}: {raw[:2000]!r}") from err
            raise PromptRejected(payload) from None
        if body.get("node_errors"):
            raise PromptRejected(body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self._get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600, poll: float = 0.5) -> dict:
        """Poll /history until the prompt finished; returns its ``outputs`` (node id -> ui dict).

        Raises ``ExecutionFailed`` with the host's ``execution_error`` message when a node failed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HostError(f"host died while running {prompt_id}\n{self.log_tail()}")
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    for kind, info in status.get("messages", []):
                        if kind == "execution_error":
                            raise ExecutionFailed(info)
                    raise HostError(f"prompt {prompt_id} failed: {status}")
                if status.get("completed", True):
                    return entry.get("outputs", {})
            time.sleep(poll)
        self.interrupt()
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(prompt), timeout=timeout)

    def interrupt(self) -> None:
        try:
            self._request("POST", "/interrupt", {})
        except (urllib.error.URLError, OSError) as err:
            log.warning("interrupt failed: %s", err)

    def free(self) -> None:
        """Ask the host to unload every model (``POST /free``)."""
        self._request("POST", "/free", {"unload_models": True, "free_memory": True})


def _main(argv: list[str]) -> int:
    """``python harness/host_server.py`` starts a host and lists the pack's nodes (a smoke check)."""
    logging.basicConfig(level=logging.INFO)
    with HostServer() as host:
        info = host.object_info()
        ours = sorted(k for k in info if k.startswith("InfiniteTalk"))
        log.info("host on %s, pack nodes: %s, rss %.0f MiB", host.url, ours, host.rss_mb())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
