# Shared set-up for scripts/serve and scripts/test: a virtualenv in .venv with salon installed.
# Sourced, not run. Works on a fresh Debian 12 machine with Python 3.11.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "salon needs Python 3.11 or newer as $PYTHON" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately.
        rm -rf .venv
        as_root apt-get update -qq
        as_root apt-get install -y -qq python3-venv >/dev/null
        "$PYTHON" -m venv .venv
    fi
    .venv/bin/pip install -q --upgrade pip
fi
