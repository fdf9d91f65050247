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
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite here.
if [ $rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi
exit $rc
