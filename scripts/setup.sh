#!/usr/bin/env bash
# Install bilaw-tune into ./.venv with its dev and server extras, and (where apt exists) real
# Fashion-MNIST and PostgreSQL (for tune/tracking_server.py).
# Idempotent: re-running only installs what is missing. Usage: bash scripts/setup.sh [--with-browser]
# --with-browser also installs Debian's Chromium, for the tests that load MLflow's UI and
# optuna-dashboard in a headless browser (tests/tune/tracking/test_browser.py; skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-browser) WITH_BROWSER=1 ;;
        *) echo "scripts/setup.sh: unknown option $arg (allowed: --with-browser)" >&2; exit 2 ;;
    esac
done
VENV=${VENV:-.venv}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "bilaw-tune needs Python >= 3.10 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned to the release verified for this project (on this workplace it is on disk).
"$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install -q -e ".[dev,server]"

apt_install() {  # apt_install PACKAGE WARNING: install a Debian package, or warn and go on
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" \
        || echo "warning: could not install Debian's $1; $2" >&2
}
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    NEED_FMNIST=1; [ -d /usr/share/datasets/fashion-mnist ] && NEED_FMNIST=0
    NEED_PG=1; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && NEED_PG=0
    NEED_BROWSER=0; [ "$WITH_BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1 && NEED_BROWSER=1
    if [ "$NEED_FMNIST$NEED_PG$NEED_BROWSER" != 000 ]; then
        $SUDO apt-get update -qq || echo "warning: apt-get update failed; installing from the lists at hand" >&2
        [ "$NEED_FMNIST" = 0 ] || apt_install dataset-fashion-mnist "fashion_mnist will need --data-dir"
        [ "$NEED_PG" = 0 ] || apt_install postgresql "tune/tracking_server.py will not start"
        [ "$NEED_BROWSER" = 0 ] || apt_install chromium "tests/tune/tracking/test_browser.py will be skipped"
    fi
elif [ "$WITH_BROWSER" = 1 ]; then
    echo "warning: no apt-get here; install Chromium yourself for tests/tune/tracking/test_browser.py" >&2
fi
"$VENV/bin/python" -c "import bilaw, torch; print('bilaw-tune installed; torch', torch.__version__)"
