"""What one very wide contract costs every other firm's push (issue 23, item 7).

    .venv/bin/python benchmarks/contract_load.py [--columns 590] [--repeat 5]

Builds a lab in a temp dir whose contracts are the repository's plus one
firm's wide contract of ``--columns`` measurements, then times, as the CLI
and the service do for every push (``load_all`` of the contracts, ``find``
the one pushed under, ``landing.push``) a 200-reading spindle delivery:

* ``before``: the contracts read and linted again for the push (what every
  push did before; ``contract._LOADED`` and the lint cache cleared);
* ``new_process``: what a CLI push (one process per push) pays now: the
  files are read (libyaml) and built, their lint results come from the
  on-disk cache keyed by the file's bytes (``contract._lint_cached``);
* ``after``: the contracts loaded once per process (the service, Dagster),
  re-read only when a file changes (mtime, size).

Prints one JSON line: medians in seconds, and the load of the contracts
alone (cold, warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"


def wide_contract(columns: int) -> dict:
    """A valid timeseries contract with ``columns`` measurements (a wide layout, as a PLC export gives)."""
    role = lambda r: [{"property": "role", "value": r}]  # noqa: E731
    props = [{"name": "machine", "logicalType": "string", "required": True, "customProperties": role("entity")},
             {"name": "ts", "logicalType": "timestamp", "required": True, "customProperties": role("time")}]
    props += [{"name": f"m{i:03d}", "logicalType": "number", "logicalTypeOptions": {"minimum": 0, "maximum": 1000},
               "customProperties": [{"property": "unit", "value": "bar"}]} for i in range(columns)]
    return {
        "apiVersion": "v3.0.2", "kind": "DataContract", "id": "urn:datalab:wide-works:plc", "name": "PLC export",
        "version": "1.0.0", "status": "active", "tenant": "wide-works", "dataProduct": "plc",
        "schema": [{"name": "readings", "physicalType": "table", "properties": props}],
        "customProperties": [
            {"property": "kind", "value": "timeseries"},
            {"property": "layout", "value": {"shape": "wide", "header": True, "delimiter": ","}},
            {"property": "sovereignty", "value": {"residency": ["EEA"], "purposes": ["research"], "classification": "internal",
                                                  "license": "CC-BY-4.0", "personal_data": False, "export_control": False}},
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--columns", type=int, default=590)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datalab-contract-bench-"))
    contracts_dir = work / "contracts"
    shutil.copytree(ROOT / "data_contracts", contracts_dir)
    wide = contracts_dir / "providers" / "wide-works" / "plc.yaml"
    wide.parent.mkdir(parents=True)
    wide.write_text(yaml.safe_dump(wide_contract(a.columns), sort_keys=False))
    os.environ.update(DATALAB_HOME=str(work / "lab"), DATALAB_CONTRACTS=str(contracts_dir), DATALAB_ENGINE="cpu")
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.timeseries import sample

    c = contract.load_all(contracts_dir)[SPINDLE]
    files = []
    for i in range(2 * a.repeat + 1):  # other bytes each time: every push lands a new delivery
        files.append(sample.write(sample.generate(c, 200, seed=i, defects=sample.Defects.none()), work / f"s{i}.csv"))
    landing.push(c, [files[-1]])  # catalog created, imports warm

    lint_cache = work / "lab" / "cache" / "lint"

    def push(f: Path, cold: bool, disk: bool = False) -> float:
        if cold:
            contract._LOADED.clear()
            if not disk:
                shutil.rmtree(lint_cache, ignore_errors=True)
        t = time.perf_counter()
        known = contract.load_all(contracts_dir)
        rec = landing.push(contract.find(known, SPINDLE), [f])
        assert rec.accepted, rec.reasons
        return time.perf_counter() - t

    before = [push(files[i], True) for i in range(a.repeat)]
    push(files[-1], False)  # fills the caches (the last file: a duplicate push, same work)
    new_process = [push(files[i], True, disk=True) for i in range(a.repeat)]
    after = [push(files[a.repeat + i], False) for i in range(a.repeat)]

    def load(cold: bool) -> float:
        if cold:
            contract._LOADED.clear()
            shutil.rmtree(lint_cache, ignore_errors=True)
        t = time.perf_counter()
        contract.load_all(contracts_dir)
        return time.perf_counter() - t

    out = {
        "columns": a.columns, "contracts": len(contract.load_all(contracts_dir)),
        "push_before_s": round(statistics.median(before), 3),
        "push_new_process_s": round(statistics.median(new_process), 3),
        "push_after_s": round(statistics.median(after), 3),
        "load_all_cold_s": round(statistics.median([load(True) for _ in range(a.repeat)]), 3),
        "load_all_warm_s": round(statistics.median([load(False) for _ in range(a.repeat)]), 4),
    }
    print(json.dumps(out))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
