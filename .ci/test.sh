#!/usr/bin/env bash
# The README's test command: installs what it needs (venv at .venv/, host at .host/, Debian's
# chromium for the browser test), then runs every tier.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/.ci/setup.sh"
if [ ! -x /usr/bin/chromium ]; then
  echo "[test] installing Debian's chromium for the browser test" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo -n apt-get update -qq && sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "[test] could not install chromium (needs root): the browser test will be skipped" >&2
  fi
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest tests -q "$@"
