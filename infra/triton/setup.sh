#!/usr/bin/env bash
# Create the Triton serving venv (numpy<2, kept apart from the main venv) and install
# infra/triton/requirements.txt into it.
#
# Idempotent: a stamp file inside the venv holds the sha256 of requirements.txt and the Python
# version; when both match and the server binary and the backend stub are present, nothing is done.
#
#   RXREC_TRITON_VENV    where the venv lives (default: <repo>/.venv-triton)
#   RXREC_TRITON_PYTHON  interpreter that creates it (default: python3; must be 3.8-3.13)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${RXREC_TRITON_VENV:-$ROOT/.venv-triton}"
PYTHON="${RXREC_TRITON_PYTHON:-python3}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.rxrec-triton-setup.stamp"

want="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# Checks that the wheel's server binary and the stub for the venv's Python are really there.
verify() {
  "$VENV/bin/python" - <<'PY'
import importlib.util, sys
from pathlib import Path
spec = importlib.util.find_spec("pytriton")
if spec is None:
    sys.exit("pytriton is not installed in the serving venv")
root = Path(spec.submodule_search_locations[0]) / "tritonserver"
ver = "%d.%d" % sys.version_info[:2]
need = [root / "bin" / "tritonserver", root / "backends" / "python" / "libtriton_python.so",
        root / "python_backend_stubs" / ver / "triton_python_backend_stub"]
missing = [str(p) for p in need if not p.exists()]
if missing:
    sys.exit("serving venv is incomplete, missing: " + ", ".join(missing))
import numpy, onnxruntime  # noqa: F401  (fails loudly if the env is broken)
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]] && verify; then
  echo "Triton serving venv is up to date: $VENV"
  exit 0
fi

echo "Setting up the Triton serving venv in $VENV ..."
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
# pip prints one "Location ... is ignored" warning per configured index location here: drop them.
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" 2>&1 \
    | { grep -v -E "Location .* is ignored" || true; }; then
  echo "pip install into $VENV failed" >&2
  exit 1
fi
verify
echo "$want" > "$STAMP"
echo "Triton serving venv ready: $VENV"
