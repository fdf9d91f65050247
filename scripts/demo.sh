#!/usr/bin/env bash
# Set up a fresh machine and run the end-to-end demo on the embedded default
# (no servers, no GPU, no network). The lab lives in ./.datalab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DATALAB_HOME=${DATALAB_HOME:-$PWD/.datalab}
exec .venv/bin/datalab demo --reset "$@"
