#!/usr/bin/env bash
# Create the PecanPy venv used by `rxrec bench walks` (numpy<2, kept apart from the main venv).
#
# Idempotent: a stamp inside the venv holds the sha256 of requirements.txt; when it matches and
# pecanpy imports, nothing is done.
#
#   RXREC_PECANPY_VENV    where the venv lives (default: <repo>/var/venv-pecanpy)
#   RXREC_PECANPY_PYTHON  interpreter that creates it (default: python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${RXREC_PECANPY_VENV:-$ROOT/var/venv-pecanpy}"
PYTHON="${RXREC_PECANPY_PYTHON:-python3}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.rxrec-pecanpy-setup.stamp"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$VENV/bin/python" -c "import pecanpy" 2>/dev/null; then
  exit 0
fi
echo "▶ creating the PecanPy venv in $VENV (numpy<2)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/pip" install -q -r "$REQ" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import pecanpy, numpy; assert numpy.__version__ < '2', numpy.__version__" \
  || { echo "error: pecanpy did not install into $VENV (see pip output above)" >&2; exit 1; }
echo "$want" > "$STAMP"
