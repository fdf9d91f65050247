#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what a GPU machine without network needs to
# run curation on cudf-polars: the wheels it lacks, cut into pieces small
# enough to travel one per call (docs/gpu.md).
#
#   bash scripts/gpu_bundle.sh            # -> .gpu/carry/part-00 ... part-NN, .gpu/carry/SHA256SUMS
#
# The target is the lab's lent GPU machine: Python 3.12, x86-64, CUDA 13
# (driver 580), with PyTorch, CuPy, NumPy, pyarrow, PyYAML and the CUDA 13
# libraries already installed, no pip index. So the bundle holds only
# cudf-polars for CUDA 13 with the RAPIDS libraries it loads, Polars (the
# version datalab pins), and the core's pure dependencies that are not there.
# Real sensor files (../shared/realdata) go along, so the parity suite's
# real-data half runs there too. .gpu/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PIECE_MIB=${PIECE_MIB:-56}   # one piece per call: a call carries 64 MiB with the working tree (~2 MiB)
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf .gpu/whl .gpu/carry .gpu/realdata
mkdir -p .gpu/whl .gpu/carry

# RAPIDS (CUDA 13 builds) and what they load that the machine lacks; the
# CUDA libraries themselves (nvidia-*, cuda-bindings, cupy) are the machine's.
RAPIDS="cudf-polars-cu13==26.10.2 pylibcudf-cu13==26.10.2 libcudf-cu13==26.10.2 rmm-cu13==26.10.0 librmm-cu13==26.10.0
  rapids-logger==0.3.0 kvikio-cu13==26.10.0 libkvikio-cu13==26.10.0 nvidia-libnvcomp-cu13==5.3.0.16
  cudf-streaming-cu13==26.10.2 libcudf-streaming-cu13==26.10.2 rapidsmpf-cu13==26.10.0 librapidsmpf-cu13==26.10.0
  ucxx-cu13==0.52.0 libucxx-cu13==0.52.0 libucx-cu13==1.21.0 nvtx==0.2.17"
# datalab's core as the curation and the parity suite import it (no GX, no Dagster).
CORE="polars==1.44.2 polars-runtime-32==1.44.2 SQLAlchemy==2.1.9 pydantic==2.14.4 pydantic_core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 open-data-contract-standard==3.2.0
  zstandard==0.25.0"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl $RAPIDS $CORE
if [ -d ../shared/realdata ]; then cp -r ../shared/realdata .gpu/realdata; fi
(cd .gpu/whl && sha256sum ./*.whl > SHA256SUMS)
tar -cf - -C .gpu whl $( [ -d .gpu/realdata ] && echo realdata ) | split -b "${PIECE_MIB}M" -d - .gpu/carry/part-
(cd .gpu/carry && sha256sum part-* > SHA256SUMS)
n=$(ls .gpu/carry/part-* | wc -l)
echo "$(du -sh .gpu/whl | cut -f1) of wheels in $n pieces of at most ${PIECE_MIB} MiB under .gpu/carry"
last=$(printf '%02d' $((n - 1)))
echo "device calls, one after the other while the machine stays warm (docs/gpu.md):"
echo "  for k in 00..$(printf '%02d' $((n - 2))): carry [.gpu/carry/part-k, .gpu/carry/SHA256SUMS], command: bash scripts/gpu_device.sh stage"
echo "  then: carry [.gpu/carry/part-$last, .gpu/carry/SHA256SUMS], command: bash scripts/gpu_device.sh check"
