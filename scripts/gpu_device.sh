#!/usr/bin/env bash
# Runs ON the lent GPU machine (the device tool), over a copy of this
# repository, with the pieces that scripts/gpu_bundle.sh made here.
#
#   bash scripts/gpu_device.sh stage   # in each call that carries a piece: keep it under /tmp
#   bash scripts/gpu_device.sh check   # last call (it may carry the last piece): verify, install, run the GPU checks
#
# /tmp outlives a call while the machine stays warm (30 s after a call), so
# the pieces must travel in consecutive calls. `check` verifies every piece
# and every wheel against the checksums made here, installs the wheels into
# /tmp/site (no index, no dependencies: the bundle names each one), then
# writes to $OUT: nvidia-smi, the GPU engine's status, the parity suite
# (CPU and GPU halves, real files included) and benchmarks/engines.py at
# 10 M and 50 M readings (CPU engine beside GPU engine, results compared).
# DATALAB_GPU_DRYRUN=1 stops after the checks of the pieces (to try it here).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/datalab-gpu
OUTDIR=${OUT:-/tmp/datalab-gpu-out}
stage() {  # keep the pieces this call carried; true if it carried any
  mkdir -p "$STAGE"
  shopt -s nullglob
  local pieces=(.gpu/carry/part-*)
  [ ${#pieces[@]} -eq 0 ] && return 1
  cp "${pieces[@]}" .gpu/carry/SHA256SUMS "$STAGE"/
  (cd "$STAGE" && sha256sum -c --ignore-missing --quiet SHA256SUMS) || { echo "a carried piece is damaged"; exit 1; }
  echo "staged ${pieces[*]##*/}: $(ls "$STAGE"/part-* | wc -l) of $(wc -l < "$STAGE"/SHA256SUMS) pieces under $STAGE"
}
case "${1:-}" in
  stage)
    stage || { echo "no piece carried: name .gpu/carry/part-NN in the call's carry"; exit 1; }
    ;;
  check)
    stage || true  # the last (small) piece may come with this call
    mkdir -p "$OUTDIR"
    [ -f "$STAGE/SHA256SUMS" ] || { echo "nothing staged under $STAGE (the machine was given back?): stage every piece again"; exit 1; }
    (cd "$STAGE" && sha256sum -c --quiet SHA256SUMS) || { echo "pieces missing or damaged under $STAGE: stage them again"; exit 1; }
    rm -rf "$STAGE/x" && mkdir -p "$STAGE/x"
    cat "$STAGE"/part-* | tar -xf - -C "$STAGE/x" || exit 1
    (cd "$STAGE/x/whl" && sha256sum -c --quiet SHA256SUMS) || { echo "a wheel is damaged"; exit 1; }
    echo "$(ls "$STAGE"/x/whl/*.whl | wc -l) wheels verified"
    [ "${DATALAB_GPU_DRYRUN:-0}" = 1 ] && exit 0
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STAGE"/x/whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    [ -d "$STAGE/x/realdata" ] && export DATALAB_REALDATA="$STAGE/x/realdata"
    nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1
    python3 - <<'PY' 2>&1 | tee "$OUTDIR/gpu_status.txt"
import polars as pl, cudf_polars
from datalab.engine import gpu_status
print("polars", pl.__version__, "cudf_polars", cudf_polars.__version__)
print("gpu_status", gpu_status())
PY
    timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_engine_parity.py 2>&1 | tee "$OUTDIR/parity.txt"
    timeout 300 python3 benchmarks/engines.py --rows 10000000 --json "$OUTDIR/engines-10m.json" 2>&1 | tee "$OUTDIR/engines-10m.txt"
    timeout 600 python3 benchmarks/engines.py --rows 50000000 --bucket-rows 60000000 --json "$OUTDIR/engines-50m.json" 2>&1 | tee "$OUTDIR/engines-50m.txt"
    ;;
  *)
    echo "usage: bash scripts/gpu_device.sh stage|check (docs/gpu.md)"; exit 2 ;;
esac
