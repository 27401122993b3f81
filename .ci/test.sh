#!/usr/bin/env bash
# The README's test command: installs what it needs (venv at .venv/, host at .host/), then runs every tier.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/.ci/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest tests -q "$@"
