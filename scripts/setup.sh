#!/usr/bin/env bash
# Install bilaw-tune into ./.venv with its dev extra, and (where apt exists) real Fashion-MNIST.
# Idempotent: re-running only installs what is missing. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "bilaw-tune needs Python >= 3.10 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned to the release verified for this project (on this workplace it is on disk).
"$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install -q -e ".[dev]"

if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist \
        || echo "warning: could not install Debian's dataset-fashion-mnist; fashion_mnist will need --data-dir" >&2
fi
"$VENV/bin/python" -c "import bilaw, torch; print('bilaw-tune installed; torch', torch.__version__)"
