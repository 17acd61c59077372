# shellcheck shell=bash
# Shared set-up for scripts/test and scripts/serve; source it, then call
#   tokenward_venv requirements/<name>.lock
# It creates ./.venv (with $PYTHON, default python3, which must be 3.11+) if missing,
# installs the hash-locked requirements plus the project itself (editable, --no-deps),
# and records a stamp so the install only re-runs when the lock file or pyproject.toml
# changes. Afterwards .venv/bin is first on PATH.

TOKENWARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOKENWARD_VENV="$TOKENWARD_ROOT/.venv"

_tokenward_pip() {
    "$TOKENWARD_VENV/bin/python" -m pip --disable-pip-version-check --no-input -q "$@"
}

tokenward_venv() {
    local lock="$TOKENWARD_ROOT/$1" py="${PYTHON:-python3}"
    [ -f "$lock" ] || { echo "error: lock file $lock not found" >&2; return 1; }

    if ! "$TOKENWARD_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then
        if ! command -v "$py" >/dev/null; then
            echo "error: $py not found; install Python 3.11 or newer (or set PYTHON=...)" >&2
            return 1
        fi
        if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: Python 3.11+ required, but $py is $("$py" -V 2>&1)" >&2
            return 1
        fi
        echo "==> creating .venv with $("$py" -V 2>&1)"
        # --clear: a .venv that exists but cannot run (moved, old Python) is rebuilt
        if ! "$py" -m venv --clear "$TOKENWARD_VENV"; then
            echo "error: '$py -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
            return 1
        fi
    fi

    local stamp want
    stamp="$TOKENWARD_VENV/.tokenward-$(basename "$lock").stamp"
    want="$("$TOKENWARD_VENV/bin/python" - "$lock" "$TOKENWARD_ROOT/pyproject.toml" <<'PY'
import hashlib, sys
digest = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        digest.update(f.read())
print(digest.hexdigest())
PY
)" || return 1
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "==> installing ${1} and tokenward into .venv"
        rm -f "$stamp"
        _tokenward_pip install --require-hashes -r "$lock" || return 1
        _tokenward_pip install --no-deps -e "$TOKENWARD_ROOT" || return 1
        printf '%s\n' "$want" >"$stamp"
    fi

    export VIRTUAL_ENV="$TOKENWARD_VENV"
    export PATH="$TOKENWARD_VENV/bin:$PATH"
}
