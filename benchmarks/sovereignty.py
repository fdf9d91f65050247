"""Cost of the sovereignty work at publish and at deletion.

    .venv/bin/python benchmarks/sovereignty.py --rows 1000000

Builds a lab in a temp dir with one press-line delivery of ``--rows``
readings (operator badge pseudonymised), taken through push, ingest,
curation and validation by the core functions (no Dagster), then measures:

* publish, and inside it the datasheet (facts, plots, Markdown/HTML) beside
  the spine's basic card (``datalab.store.card.render_card``, the obvious
  alternative: a text card without numbers from the data);
* the personal-data check (a scan of the personal column) in rows/s;
* a retention purge of the contract (files, catalog, Iceberg delete, snapshot
  expiry, orphan removal, SQLite VACUUM), in MB/s of deleted files.

Prints one JSON line with the numbers and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESS = "urn:datalab:lyon-presses:press-line"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datalab-sov-bench-"))
    shutil.copytree(ROOT / "data_contracts", work / "contracts")
    (work / "contracts" / "datasets" / "bench.yaml").write_text(f"name: bench\nsite: munich\ninputs: [{PRESS}]\n")
    os.environ.update(DATALAB_HOME=str(work / "lab"), DATALAB_CONTRACTS=str(work / "contracts"), DATALAB_ENGINE="cpu")
    import polars as pl

    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.policy import retention, sovereignty
    from datalab.quality import validate
    from datalab.store import card, datasheet, publish, state
    from datalab.timeseries import curate, ingest, sample

    s = settings()
    c = contract.load_all(s.contracts_dir)[PRESS]
    f = sample.write(sample.generate(c, a.rows, seed=1), work / "press.csv")
    rec = landing.push(c, [f])
    ingest.ingest_raw(c, rec.delivery_id)
    curate.curate_delivery(c, rec.delivery_id)
    rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False)
    state.set_stage(rec.delivery_id, "validated", s=s, validation_ok=True, validation=rep.to_dict())
    out: dict = {"rows": a.rows}
    t = time.perf_counter()
    res = publish.publish("bench")
    out["publish_s"] = round(time.perf_counter() - t, 3)
    m = res.manifest
    out["published_rows"] = m.rows
    contracts = contract.load_all(s.contracts_dir)
    lf = pl.scan_parquet([str(s.home / x.path) for x in m.files])
    vdir = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    datasheet.write(vdir, m, contracts, lf, s)
    out["datasheet_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    passes = datasheet.row_passes(m.schema, tuple(datasheet.flag_words(m)), lf)
    out["datasheet_passes_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    facts = datasheet.facts(m, contracts, lf, s, passes)
    out["datasheet_facts_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    datasheet.plots(vdir, m, facts, lf, s, passes)
    out["datasheet_plots_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    card.render_card(m, contracts)
    out["basic_card_s"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    sovereignty.check_personal(lf, [PRESS], contracts)
    dt_ = time.perf_counter() - t
    out["personal_check_rows_per_s"] = round(m.rows / dt_)
    t = time.perf_counter()
    r = retention.purge_contract(PRESS, "withdrawn", "benchmark", "bench", s)
    dt_ = time.perf_counter() - t
    out.update(purge_s=round(dt_, 3), purge_files=r.files_deleted, purge_mb=round(r.bytes_deleted / 1e6, 1),
               purge_mb_per_s=round(r.bytes_deleted / 1e6 / dt_, 1), iceberg=r.iceberg[next(iter(r.iceberg))],
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(out))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
