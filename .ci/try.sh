#!/usr/bin/env bash
# The README's "try it" command: a playable mp4 from tiny random models on a real ComfyUI, no GPU,
# no weights. Installs what it needs first (.ci/setup.sh: venv at .venv/, host at .host/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/.ci/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" "$ROOT/.ci/try_it.py" "$@"
