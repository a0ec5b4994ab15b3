# Sourced by scripts/run and scripts/test: make .venv and install pinned requirements
# when they changed since the last install. Needs only Python 3.11+.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${MLAPI_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
want="$1"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "mlapi needs Python 3.11 or newer (found $("$PYTHON" --version))." >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.installed-$(basename "$want")"
digest=$(cat requirements*.txt | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$want"
    if [ "$want" = requirements-dev.txt ]; then
        # Without dependencies: kserve's own would downgrade psutil (requirements-kserve.txt).
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            -r requirements-kserve.txt
    fi
    echo "$digest" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
