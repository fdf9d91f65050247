#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install datalab with its test tools.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "datalab needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# dev includes the formats extra (MATLAB, HDF5, TDMS, MDF 4 readers; MQTT client)
.venv/bin/python -m pip install -q -e '.[dev,formats]'
