#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install datalab with its test tools.
# Says what it installs and shows pip's progress. A second run with nothing
# to do takes a second: the install is stamped with the hash of
# pyproject.toml and the Python version, and skipped while both are unchanged
# (set DATALAB_SETUP_FORCE=1 to reinstall anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "datalab needs Python >= 3.11")'
STAMP=.venv/.datalab-setup
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" -V)"
  "$PY" -m venv .venv
fi
KEY=$(.venv/bin/python - <<'PY'
import hashlib, pathlib, sys
h = hashlib.sha256(pathlib.Path("pyproject.toml").read_bytes())
h.update(sys.version.encode())
print(h.hexdigest())
PY
)
if [ -z "${DATALAB_SETUP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] \
   && [ -x .venv/bin/datalab ]; then
  echo "setup: .venv is up to date (pyproject.toml and $(.venv/bin/python -V) unchanged since the last install)"
  exit 0
fi
echo "setup: installing datalab (editable) with its dependencies into .venv: Polars, PyArrow, DuckDB,"
echo "       Dagster and its UI, Great Expectations, PyIceberg, FastAPI/uvicorn, OpenCASCADE (CAD),"
echo "       the measurement-file readers (SciPy, h5py, npTDMS, asammdf, MQTT, OPC UA) and the test"
echo "       tools (pytest, hypothesis, ruff). A first install downloads about 1 GB and takes a minute or more."
.venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
# dev includes the formats extra (MATLAB, HDF5, TDMS, MDF 4 readers; MQTT client)
# one line per package as pip resolves it (pip draws no bars into a pipe); its errors go to stderr
set +e
.venv/bin/python -m pip install --disable-pip-version-check -e '.[dev,formats]' \
  | grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|Building)' \
  | cut -c1-160
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then echo "setup: pip failed (exit $rc, see above); nothing was stamped"; exit "$rc"; fi
echo "$KEY" > "$STAMP"
echo "setup: done; .venv/bin/datalab is the lab's command"
