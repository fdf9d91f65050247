#!/usr/bin/env bash
# Set up and run the tests. The catalog tests also run against PostgreSQL when
# a server answers on 127.0.0.1:5432 (or DATALAB_TEST_PG_URL is set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DATALAB_TEST_PG_URL:-}" ] && .venv/bin/python - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
then
  export DATALAB_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
  echo "PostgreSQL answers on 127.0.0.1:5432: catalog tests run against it too"
fi
.venv/bin/ruff check datalab assets checks pipelines tests benchmarks
# Two test files at a time (pytest-xdist, whole files to one worker so a
# module's fixtures are built once): most tests wait on subprocesses, servers
# and disks, so two run in about two thirds of the time of one on a 2-core
# machine. DATALAB_TEST_WORKERS=0 runs them one after the other in this process.
set +e
.venv/bin/python -m pytest -q -n "${DATALAB_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite here.
if [ $rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi
exit $rc
