"""Issue 23: correct on real data. One regression test per fault of the issue.

Each test runs the lab's own path (push, parse, curate, validate, publish)
on the real files in ``../shared/realdata`` or on generated files shaped like
the real ones (a 12 kHz bearing matrix), and checks the counts that the
receipt, the curation stats and the dataset card give against an
independent recount of the source file with the ``csv`` module. Every test
failed on the code before the fix.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from datalab.config import settings
from datalab.contracts import contract
from datalab.intake import landing
from datalab.quality import validate
from datalab.store import publish, state
from datalab.timeseries import curate, ingest
from tests.conftest import CMAPSS, HYDRAULIC, ROOT, SPINDLE

SOV = {"residency": ["EEA"], "purposes": ["research", "predictive-maintenance"], "classification": "internal",
       "license": "CC-BY-4.0", "personal_data": False, "export_control": False}


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def contracts_dir(lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the repository's contracts that a test may add firms to."""
    d = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", d)
    monkeypatch.setenv("DATALAB_CONTRACTS", str(d))
    return d


def _doc(tenant: str, product: str, props: list[dict[str, Any]], layout: dict[str, Any],
         curation: dict[str, Any] | None = None, extra: list[dict[str, Any]] | None = None,
         quality: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v3.0.2", "kind": "DataContract", "id": f"urn:datalab:{tenant}:{product}",
        "name": product, "version": "1.0.0", "status": "active", "tenant": tenant, "dataProduct": product,
        "schema": [{"name": "readings", "physicalType": "table", "properties": props,
                    **({"quality": quality} if quality else {})}],
        "customProperties": [
            {"property": "kind", "value": "timeseries"}, {"property": "layout", "value": layout},
            *([{"property": "curation", "value": curation}] if curation else []),
            {"property": "sovereignty", "value": SOV}, *(extra or []),
        ],
    }


def _write(contracts_dir: Path, doc: dict[str, Any], dataset: bool = True) -> Path:
    p = contracts_dir / "providers" / doc["tenant"] / f"{doc['dataProduct']}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    if dataset:
        (contracts_dir / "datasets" / f"{doc['dataProduct']}.yaml").write_text(yaml.safe_dump({
            "name": doc["dataProduct"], "title": doc["name"], "description": "issue 23 test", "site": "kajaani",
            "inputs": [doc["id"]]}))
    return p


def _role(r: str, **more: Any) -> list[dict[str, Any]]:
    return [{"property": "role", "value": r}, *[{"property": k, "value": v} for k, v in more.items()]]


def _process(c: contract.Contract, rec: landing.Receipt) -> tuple[curate.CurationStats, validate.ValidationReport]:
    """What the ingest job does for one accepted delivery: raw table, curation, the blocking suite."""
    assert rec.accepted, rec.reasons
    ingest.ingest_raw(c, rec.delivery_id)
    st = curate.curate_delivery(c, rec.delivery_id)
    path = curate.curated_path(c, rec.delivery_id, settings())
    rep = validate.validate(c, path, run_name=rec.delivery_id, build_docs=False)
    state.set_stage(rec.delivery_id, "validated" if rep.success else "failed", validation_ok=rep.success,
                    validation=rep.to_dict())
    return st, rep


def _card(name: str, version: str) -> dict[str, Any]:
    return json.loads((settings().versions / name / version / "datasheet.json").read_text())


def _recount_long(path: Path, sentinels: set[str], lo_excl: float, hi: float) -> dict[str, int]:
    """An independent count of a long CSV: rows, missing values, out-of-range values (csv module only)."""
    n = missing = out = 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            n += 1
            v = row["value"].strip()
            if v == "" or v in sentinels or (v.lower() == "nan"):
                missing += 1
            elif not (lo_excl < float(v) <= hi):
                out += 1
    return {"rows": n, "missing": missing, "out": out}


# -- 1: the matrix layout keeps samples above 1 Hz; duplicates are loud ----------


def _bearing_doc(time_unit: str | None, max_share: float | None = None) -> dict[str, Any]:
    props = [
        {"name": "bearing", "logicalType": "string", "required": True, "customProperties": _role("entity")},
        {"name": "t", "logicalType": "integer", "required": True,
         "customProperties": _role("time", **({"unit": time_unit} if time_unit else {}))},
        {"name": "record", "logicalType": "integer", "customProperties": _role("attribute")},
        {"name": "DE", "logicalType": "number", "logicalTypeOptions": {"minimum": -50, "maximum": 50},
         "customProperties": [{"property": "unit", "value": "m/s2"}]},
    ]
    layout = {"shape": "matrix", "header": False, "delimiter": "\t", "sensor_from_filename": r"^(?P<sensor>[A-Z]+)\.txt$",
              "samples_per_row": 12_000, "sample_rate_hz": 12_000, "row_attribute": "record", "entity_value": "bearing-1"}
    cur = {"outlier_mad": 20, **({"max_duplicate_share": max_share} if max_share is not None else {})}
    return _doc("bearing-lab", "vibration", props, layout, cur)


def _bearing_file(tmp_path: Path, rows: int = 5) -> Path:
    rnd = random.Random(23)
    p = tmp_path / "DE.txt"
    with open(p, "w") as f:
        for _ in range(rows):
            f.write("\t".join(f"{rnd.gauss(0, 0.3):.6f}" for _ in range(12_000)) + "\n")
    return p


def test_matrix_layout_keeps_every_sample_at_12khz(contracts_dir: Path, tmp_path: Path) -> None:
    c = contract.load(_write(contracts_dir, _bearing_doc("us")))
    src = _bearing_file(tmp_path)
    with open(src, newline="") as f:
        samples = sum(len(r) for r in csv.reader(f, delimiter="\t"))  # independent recount
    rec = landing.push(c, [src])
    st, rep = _process(c, rec)
    df = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    assert df["time"].n_unique() == samples  # was 5: whole seconds
    # microseconds: sample 12,000 (row 2, first column) lies exactly 1 s after the first
    assert df.filter(pl.col("record") == 2)["time"].min() == 1_000_000
    assert st.rows_in == st.rows_out == samples == 60_000
    assert st.exact_duplicates_removed == 0 and st.flags["flag_key_duplicate"] == 0 and st.duplicate_share == 0
    assert rec.warnings == []
    assert rep.success, rep.summary()
    assert publish.publish("vibration").created
    card = _card("vibration", "1.0.0")
    assert card["rows"] == samples and card["flags"]["flag_key_duplicate"] == 0


def test_matrix_at_10hz_without_a_time_unit_counts_microseconds(contracts_dir: Path, realdata: Path, tmp_path: Path) -> None:
    # The real VS1 file read as a 10 Hz sensor (as the rig's FS1 is): 60 samples a row = 6 s a cycle.
    p = contracts_dir / "providers/open-benchmarks/hydraulic-rig.yaml"
    doc = yaml.safe_load(p.read_text())
    t = next(x for x in doc["schema"][0]["properties"] if x["name"] == "t")
    t["customProperties"] = [x for x in t["customProperties"] if x["property"] != "unit"]
    next(x for x in doc["customProperties"] if x["property"] == "layout")["value"]["sample_rate_hz"] = 10
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert any("sampling_interval: 1 steps" in x and "100000 us apart" in x for x in contract.lint(p))
    next(x for x in doc["customProperties"] if x["property"] == "curation")["value"]["sampling_interval"] = 100_000
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    c = contract.load(p)
    assert c.layout.time_tick_us == 1
    with open(realdata / "hydraulic/VS1.txt", newline="") as f:
        cells = [len(r) for r in csv.reader(f, delimiter="\t")]
    rec = landing.push(c, [realdata / "hydraulic/VS1.txt"])
    assert rec.accepted and rec.warnings == [], rec.reasons
    ingest.ingest_raw(c, rec.delivery_id)
    st = curate.curate_delivery(c, rec.delivery_id)
    assert st.rows_out == sum(cells) == 132_300 and st.exact_duplicates_removed == 0 and st.flags["flag_key_duplicate"] == 0
    assert st.time_max == (sum(cells) - 1) * 100_000  # 0.1 s apart, in microseconds
    assert st.flags["flag_gap_before"] == 0


def test_matrix_time_too_coarse_for_the_rate_is_a_lint_error(contracts_dir: Path) -> None:
    p = _write(contracts_dir, _bearing_doc("s"), dataset=False)
    problems = contract.lint(p)
    assert any("sample_rate_hz" in x and "whole s" in x for x in problems), problems


def test_duplicate_share_over_the_limit_warns_and_fails_the_suite(lab: Path, contracts, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A real-shaped long delivery where 10 % of the rows repeat a key: receipt,
    # curation stats and the suite all say so (default max_duplicate_share 5 %).
    c = contracts[SPINDLE]
    src = tmp_path / "dups.csv"
    lines = ["machine_id,ts,sensor,value,unit"]
    for i in range(900):
        lines.append(f"BSW-M01,2026-01-05T00:{i // 60:02d}:{i % 60:02d}Z,spindle_temp,{40 + (i % 7)},Cel")
    lines += lines[1:91]  # 90 exact repeats = 9.1 % of 990 rows
    src.write_text("\n".join(lines) + "\n")
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    repeats = len(rows) - len({(r["machine_id"], r["ts"], r["sensor"]) for r in rows})
    rec = landing.push(c, [src])
    assert rec.accepted and len(rec.warnings) == 1 and f"{repeats:,} of {len(rows):,} rows" in rec.warnings[0]
    assert landing.get_receipt(rec.delivery_id).warnings == rec.warnings  # stored with the receipt
    # Past the rows whose keys the raw writer keeps, the push counts them from the file: the same warning.
    other = tmp_path / "dups-other.csv"
    other.write_text(src.read_text().replace("spindle_temp,40", "spindle_temp,42"))
    with monkeypatch.context() as m:
        m.setattr(ingest.RawWriter, "KEYS_KEPT_ROWS", 100)
        from_file = landing.push(c, [other])
    assert from_file.delivery_id != rec.delivery_id and from_file.warnings == rec.warnings
    st, rep = _process(c, rec)
    assert st.duplicate_rows == repeats and st.warnings
    failed = [r.type for r in rep.failed_results()]
    assert "lab_max_duplicate_share" in failed and not rep.success
    # A delivery too large for the push's own count gets curation's warning on its receipt.
    monkeypatch.setattr(landing, "DUPLICATE_CHECK_MAX_ROWS", 10)
    src.write_text(src.read_text().replace("spindle_temp,40", "spindle_temp,41"))
    big = landing.push(c, [src])
    assert big.accepted and big.warnings == []
    ingest.ingest_raw(c, big.delivery_id)
    curate.curate_delivery(c, big.delivery_id)
    assert landing.get_receipt(big.delivery_id).warnings == rec.warnings


# -- 2: NaN, empty fields and sentinels are missing, not out of range -------------


def _probe_doc() -> dict[str, Any]:
    props = [
        {"name": "machine", "logicalType": "string", "required": True, "customProperties": _role("entity")},
        {"name": "ts", "logicalType": "timestamp", "required": True, "customProperties": _role("time")},
        {"name": "label", "logicalType": "string", "customProperties": _role("attribute"),
         "quality": [{"metric": "invalidValues", "arguments": {"validValues": ["ok", "worn"]}, "mustBe": 0}]},
        {"name": "temp", "logicalType": "number", "logicalTypeOptions": {"exclusiveMinimum": 0, "maximum": 200},
         "customProperties": [{"property": "unit", "value": "Cel"}],
         "quality": [{"metric": "invalidValues", "mustBeLessThan": 60, "unit": "percent"}]},
    ]
    layout = {"shape": "long", "header": True, "delimiter": ",", "sensor_column": "sensor", "value_column": "value",
              "unit_column": "unit"}
    return _doc("probe-works", "probe", props, layout, {"outlier_mad": 50},
                extra=[{"property": "missingValues", "value": [-999, "NA"]}])


def _probe_file(tmp_path: Path, labels: tuple[str, ...] = ("ok", "worn"),
                values: tuple[str, ...] = ("21.5", "NaN", "", "-999", "NA", "-999.0", "250", "0", "35.25", "nan")) -> Path:
    values = list(values) * 30
    p = tmp_path / "probe.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["machine", "ts", "label", "sensor", "value", "unit"])
        for i, v in enumerate(values):
            w.writerow([f"P{i % 3}", f"2026-01-05T00:{i // 60:02d}:{i % 60:02d}Z", labels[i % len(labels)], "temp", v, "Cel"])
    return p


def test_nan_empty_and_sentinels_are_missing(contracts_dir: Path, tmp_path: Path) -> None:
    c = contract.load(_write(contracts_dir, _probe_doc()))
    assert c.missing_values == ("-999", "NA")
    src = _probe_file(tmp_path)
    want = _recount_long(src, {"-999", "-999.0", "NA"}, 0.0, 200.0)
    rec = landing.push(c, [src])
    st, rep = _process(c, rec)
    assert st.rows_in == want["rows"] == 300
    assert st.flags["flag_missing"] == want["missing"] == 180
    assert st.flags["flag_out_of_range"] == want["out"] == 60  # 250 and the exclusive bound 0
    df = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    assert df.filter(pl.col("flag_missing"))["value"].null_count() == want["missing"]
    assert not df.filter(pl.col("flag_missing"))["flag_out_of_range"].any()
    assert rep.success, rep.summary()  # no nullValues rule: missing values do not fail the suite
    assert publish.publish("probe").created
    card = _card("probe", "1.0.0")
    sensor = next(x for x in card["sensors"] if x["sensor"] == "temp")
    assert sensor["missing"] == want["missing"] and card["flags"]["flag_missing"] == want["missing"]
    assert card["flags"]["flag_out_of_range"] == want["out"]


# -- 3: idempotency does not replay a rejection whose cause differs ---------------


def test_renamed_file_and_fixed_contract_get_a_fresh_decision(contracts_dir: Path, realdata: Path, tmp_path: Path) -> None:
    c = contract.load(contracts_dir / "providers/open-benchmarks/hydraulic-rig.yaml")
    wrong = tmp_path / "ts1.txt"  # the layout reads the sensor from an upper-case name
    shutil.copyfile(realdata / "hydraulic/TS1.txt", wrong)
    first = landing.push(c, [wrong])
    assert first.status == "rejected" and "rule" in first.decided_by
    again = landing.push(c, [wrong])
    assert again.duplicate and again.delivery_id == first.delivery_id and "idempotency" in again.decided_by
    renamed = landing.push(c, [("TS1.txt", wrong)])  # same bytes, the right name
    assert renamed.accepted and not renamed.duplicate, renamed.reasons
    assert renamed.delivery_id != first.delivery_id and "passed" in renamed.decided_by
    with open(realdata / "hydraulic/TS1.txt", newline="") as f:
        assert renamed.rows == sum(1 for _ in csv.reader(f, delimiter="\t"))

    # A rejection stored the old way (keyed by its bytes alone) is not replayed either.
    import sqlalchemy as sa

    from datalab.store import catalog as cat

    part = tmp_path / "part" / "VS1.txt"  # the first 100 cycles of the real VS1
    part.parent.mkdir()
    part.write_text("".join((realdata / "hydraulic/VS1.txt").read_text().splitlines(keepends=True)[:100]))
    legacy = landing.push(c, [("vs1.txt", part)])
    assert legacy.status == "rejected"
    with cat.Catalog(settings().catalog_url).begin() as conn:
        conn.execute(sa.update(cat.deliveries).where(cat.deliveries.c.id == legacy.delivery_id)
                     .values(idem_key=landing._idem_key(c, [legacy.files[0].sha256])))
    after = landing.push(c, [part])
    assert after.accepted and not after.duplicate and landing.get_receipt(legacy.delivery_id).status == "rejected"

    # The contract's content changes, not its version: a rejection is not replayed.
    p = contracts_dir / "providers/open-benchmarks/hydraulic-rig.yaml"
    doc = yaml.safe_load(p.read_text())
    lay = next(x for x in doc["customProperties"] if x["property"] == "layout")["value"]
    lay["delimiter"] = ","
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    comma = contract.load(p)
    vs1 = realdata / "hydraulic/VS1.txt"
    rejected = landing.push(comma, [vs1])
    assert rejected.status == "rejected" and any("'\\t' (tab)" in r for r in rejected.reasons), rejected.reasons
    lay["delimiter"] = "\t"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    fixed = landing.push(contract.load(p), [vs1])
    assert fixed.accepted and not fixed.duplicate, fixed.reasons


# -- 4: one firm's broken contract blocks only itself -----------------------------


def test_broken_contract_reported_and_refused_only_for_its_own_pushes(contracts_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from datalab.cli import commands as cli
    from datalab.timeseries import sample

    doc = _probe_doc()
    doc["tenant"], doc["id"] = "broken-firm", "urn:datalab:broken-firm:probe"
    doc["schema"][0]["properties"][2]["enum"] = "ok, worn"  # an invalid enum (not a list)
    _write(contracts_dir, doc, dataset=False)
    loaded = contract.load_all(contracts_dir)
    assert SPINDLE in loaded and HYDRAULIC in loaded and CMAPSS in loaded
    [(path, problems)] = loaded.broken.items()
    assert path.endswith("broken-firm/probe.yaml") and any("enum" in x for x in problems)

    runner = CliRunner()
    listed = runner.invoke(cli.app, ["contract", "list"])
    assert listed.exit_code == 2 and "broken-firm/probe.yaml" in listed.output and "is not of type 'array'" in listed.output
    f = tmp_path / "s.csv"
    sample.write(sample.generate(loaded[SPINDLE], 200, seed=3, defects=sample.Defects.none()), f)
    ok = runner.invoke(cli.app, ["push", SPINDLE, str(f), "--json"])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(cli.app, ["push", "broken-firm/probe", str(f)])
    assert refused.exit_code == 2 and "invalid" in refused.output

    # The Dagster UI: the definitions still load (a dataset of the broken contract waits),
    # and the sensor contracts_broken names it on every tick.
    (contracts_dir / "datasets" / "probe-broken.yaml").write_text(yaml.safe_dump({
        "name": "probe-broken", "title": "t", "description": "d", "site": "kajaani", "inputs": [doc["id"]]}))
    from pipelines.definitions import build_definitions

    defs = build_definitions()
    assert "broken-firm/probe.yaml" in (defs.get_sensor_def("contracts_broken").description or "")
    assert defs.resolve_job_def(f"ingest__{loaded[SPINDLE].slug}") is not None

    from fastapi.testclient import TestClient

    from datalab.policy import auth
    from datalab.service.app import create_app

    auth.add_principal("ops", "admin")
    token, _ = auth.create_token("ops")
    with TestClient(create_app()) as http:
        assert http.get("/healthz").json() == {"ok": True, "contracts_broken": 1}
        r = http.get("/v1/admin/contracts/broken", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()[0]["tenant"] == "broken-firm" and r.json()[0]["problems"] == problems
        # Its own firm is told why its push is refused; another firm pushes as ever.
        for name, tenant in (("bf", "broken-firm"), ("bsw", "bavaria-spindle")):
            auth.add_principal(name, "firm", tenant=tenant)
        own, _ = auth.create_token("bf")
        other, _ = auth.create_token("bsw")
        body = {"files": ("s.csv", f.read_bytes(), "text/csv")}
        r = http.post("/v1/provider/contracts/probe/deliveries", files=body, headers={"Authorization": f"Bearer {own}"})
        assert r.status_code == 422 and "enum" in r.text
        r = http.post("/v1/provider/contracts/spindle-telemetry/deliveries", files=body,
                      headers={"Authorization": f"Bearer {other}"})
        assert r.status_code in (200, 201), r.text


# -- 5: a repeat of a published reading is excluded, a declared correction replaces


def _cmapss_lines(realdata: Path) -> list[str]:
    return (realdata / "cmapss/train_FD001.txt").read_text().splitlines(keepends=True)


def _keys(lines: list[str]) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in csv.reader(lines, delimiter=" ")}


def test_redelivered_readings_excluded_and_corrections_replace(lab: Path, contracts, realdata: Path, tmp_path: Path) -> None:
    c = contracts[CMAPSS]
    per_row = len(c.measurements)
    lines = _cmapss_lines(realdata)
    one, two = lines[:3000], lines[2000:5000]  # 1,000 lines delivered twice
    # Near-duplicate series (item 7): engines 91 and 92 again, renumbered 191 and 192.
    copy = [ln for ln in lines if ln.split(" ")[0] in ("91", "92")]
    renumbered = [str(int(ln.split(" ", 1)[0]) + 100) + " " + ln.split(" ", 1)[1] for ln in copy]
    (tmp_path / "one.txt").write_text("".join(one))
    (tmp_path / "two.txt").write_text("".join(two + copy + renumbered))
    rec1 = landing.push(c, [tmp_path / "one.txt"])
    _st1, rep1 = _process(c, rec1)
    rec2 = landing.push(c, [tmp_path / "two.txt"])
    st2, rep2 = _process(c, rec2)
    repeated = len(_keys(one) & _keys(two + copy + renumbered))
    assert repeated == 1000
    assert st2.repeats_excluded == repeated * per_row
    assert st2.flags["flag_late"] == 0 and st2.flags["flag_key_duplicate"] == 0
    # Earlier deliveries are compared only where their time ranges meet (cycles here).
    assert [d for d, _ in curate.earlier_curated(c, rec2.delivery_id, settings(), (1, 5))] == [rec1.delivery_id]
    assert curate.earlier_curated(c, rec2.delivery_id, settings(), (10_000, 10_001)) == []
    assert rep1.success and rep2.success, rep2.summary()
    assert publish.publish("turbofan-cmapss").created
    union = _keys(one) | _keys(two + copy + renumbered)
    m = publish.read_manifest("turbofan-cmapss", "1.0.0")
    assert m.rows == len(union) * per_row  # the key is unique across the deliveries
    assert m.curation[rec2.delivery_id]["repeats_excluded"] == repeated * per_row
    card = _card("turbofan-cmapss", "1.0.0")
    assert card["rows"] == len(union) * per_row and card["flags"]["flag_key_duplicate"] == 0
    assert any("near-duplicate series" in w and "entities 191, 91 " in w for w in card["warnings"]), card["warnings"]
    assert any("near-duplicate series" in w and "entities 192, 92 " in w for w in card["warnings"]), card["warnings"]
    md = (settings().versions / "turbofan-cmapss" / "1.0.0" / "card.md").read_text()
    assert "repeats excluded" in md and f"| {repeated * per_row:,} |" in md

    # A declared correction: engine 1, cycles 1-50, s2 corrected by +1.
    fixed_lines = []
    for ln in lines[:50]:
        f = ln.split(" ")
        f[6] = f"{float(f[6]) + 1:.2f}"
        fixed_lines.append(" ".join(f))
    (tmp_path / "fix.txt").write_text("".join(fixed_lines))
    rec3 = landing.push(c, [tmp_path / "fix.txt"], correction=True)
    assert rec3.correction and landing.get_receipt(rec3.delivery_id).correction
    st3, rep3 = _process(c, rec3)
    assert st3.replaces == {rec1.delivery_id: 50 * per_row}
    assert st3.flags["flag_late"] == 0 and rep3.success, rep3.summary()
    res = publish.publish("turbofan-cmapss")
    m2 = publish.read_manifest("turbofan-cmapss", res.version).to_dict()
    assert m2["rows"] == len(union) * per_row  # replaced, not added
    data = pl.concat([pl.read_parquet(settings().home / f["path"]) for f in m2["files"]])
    s2 = data.filter((pl.col("entity") == "1") & (pl.col("sensor") == "s2") & (pl.col("time") <= 50)).sort("time")
    assert s2.height == 50 and set(s2["delivery_id"]) == {rec3.delivery_id}
    assert s2["raw_value"].to_list() == pytest.approx([float(x.split(" ")[6]) for x in fixed_lines])
    assert data.select(pl.struct("entity", "time", "sensor").n_unique()).item() == data.height


def test_key_unique_whatever_the_curation_order(lab: Path, contracts, realdata: Path, tmp_path: Path) -> None:
    c = contracts[CMAPSS]
    lines = _cmapss_lines(realdata)
    (tmp_path / "a.txt").write_text("".join(lines[:300]))
    (tmp_path / "b.txt").write_text("".join(lines[200:500]))
    a, b = landing.push(c, [tmp_path / "a.txt"]), landing.push(c, [tmp_path / "b.txt"])
    for rec in (b, a):  # the later delivery curated first (a backfill out of order)
        ingest.ingest_raw(c, rec.delivery_id)
    st_b = curate.curate_delivery(c, b.delivery_id)
    st_a = curate.curate_delivery(c, a.delivery_id)
    assert st_b.repeats_excluded == 0 and st_a.repeats_excluded == 100 * len(c.measurements)
    both = pl.concat([pl.read_parquet(curate.curated_path(c, r.delivery_id, settings())) for r in (a, b)])
    assert both.height == len(_keys(lines[:500])) * len(c.measurements)
    assert both.select(pl.struct("entity", "time", "sensor").n_unique()).item() == both.height


# -- 6: every contract key is honoured or a lint error ------------------------------


@pytest.mark.parametrize(("edit", "path"), [
    (lambda d: d["customProperties"][1]["value"].update(null_values=["NA"]), "customProperties[1].value.null_values"),
    (lambda d: d["customProperties"][1]["value"].update(delimter=";"), "customProperties[1].value.delimter: unknown layout key"),
    (lambda d: d["customProperties"][2]["value"].update(sampling_intervall="1s"), "customProperties[2].value.sampling_intervall"),
    (lambda d: d["customProperties"][2]["value"].update(outlier_mad=-3), "customProperties[2].value.outlier_mad: must be a number > 0"),
    (lambda d: d["schema"][0]["properties"][3]["logicalTypeOptions"].update(exclusiveMinimum="x"),
     "schema[0].properties[3] (temp).logicalTypeOptions.exclusiveMinimum: must be a number"),
    (lambda d: d["schema"][0]["properties"][3].update(quality=[{"metric": "nullValues", "arguments": {"validValues": [1]}, "mustBe": 0}]),
     "schema[0].properties[3] (temp).quality[0].arguments.validValues: only a invalidValues rule"),
])
def test_lint_names_keys_the_lab_would_ignore(contracts_dir: Path, edit: Any, path: str) -> None:
    doc = _probe_doc()
    edit(doc)
    problems = contract.lint(_write(contracts_dir, doc, dataset=False))
    assert any(path in x for x in problems), problems


def test_valid_values_and_exclusive_bounds_are_honoured(contracts_dir: Path, tmp_path: Path) -> None:
    c = contract.load(_write(contracts_dir, _probe_doc(), dataset=False))
    src = _probe_file(tmp_path, labels=("ok", "worn", "broken"), values=("21.5", "0", "200", "35.25", "199.5"))
    with open(src, newline="") as f:
        bad = sum(1 for r in csv.DictReader(f) if r["label"] not in ("ok", "worn"))
    rec = landing.push(c, [src])
    st, rep = _process(c, rec)
    assert st.flags["flag_out_of_range"] == 30  # the exclusive minimum 0; 200 is the inclusive maximum
    failed = {r.type: r for r in rep.failed_results()}
    assert failed["expect_column_values_to_be_in_set"].unexpected_count == bad == 50
    assert not rep.success


# -- 7: the smaller ones -------------------------------------------------------------


def test_blank_delimiter_is_quoted_in_the_message(contracts_dir: Path, realdata: Path) -> None:
    p = contracts_dir / "providers/open-benchmarks/hydraulic-rig.yaml"
    doc = yaml.safe_load(p.read_text())
    next(x for x in doc["customProperties"] if x["property"] == "layout")["value"]["delimiter"] = " "
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    rec = landing.push(contract.load(p), [realdata / "hydraulic/TS1.txt"])
    assert any("layout says ' ' (space)" in r for r in rec.reasons), rec.reasons


def test_entity_or_time_missing_from_columns_is_a_lint_error(contracts_dir: Path) -> None:
    p = contracts_dir / "providers/open-benchmarks/cmapss-fd001.yaml"
    doc = yaml.safe_load(p.read_text())
    lay = next(x for x in doc["customProperties"] if x["property"] == "layout")["value"]
    lay["columns"] = [x for x in lay["columns"] if x != "unit"]
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    problems = contract.lint(p)
    assert any(".columns: the entity column 'unit' is not among" in x for x in problems), problems


def _wide_contract(contracts_dir: Path, n: int = 590) -> Path:
    props = [{"name": "machine", "logicalType": "string", "required": True, "customProperties": _role("entity")},
             {"name": "ts", "logicalType": "timestamp", "required": True, "customProperties": _role("time")}]
    props += [{"name": f"m{i:03d}", "logicalType": "number", "logicalTypeOptions": {"minimum": 0, "maximum": 1000},
               "customProperties": [{"property": "unit", "value": "bar"}]} for i in range(n)]
    return _write(contracts_dir, _doc("wide-works", "wide", props, {"shape": "wide", "header": True, "delimiter": ","}),
                  dataset=False)


def test_contracts_load_once_per_process(contracts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _wide_contract(contracts_dir)
    t0 = time.perf_counter()
    first = contract.load_all(contracts_dir)["urn:datalab:wide-works:wide"]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert contract.load(p) is first
    assert contract.load_all(contracts_dir)["urn:datalab:wide-works:wide"] is first
    warm = time.perf_counter() - t0
    assert warm < cold / 5, (cold, warm)
    # A new process (a CLI push) finds the lint result on disk, keyed by the file's bytes: no lint at all.
    contract._LOADED.clear()
    with monkeypatch.context() as m:
        m.setattr(contract, "lint_document", lambda doc: pytest.fail("linted again"))
        assert contract.load(p) == first
    p.write_text(p.read_text().replace("name: wide\n", "name: wide works\n", 1))  # an edit is seen
    assert contract.load(p).name == "wide works"
    doc = yaml.safe_load(p.read_text())
    doc["schema"][0]["properties"][5]["logicalTypeOptions"]["exclusiveMaximum"] = "x"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    contract._LOADED.clear()
    with pytest.raises(contract.ContractError, match="exclusiveMaximum"):
        contract.load(p)  # a new lint for new bytes


def test_near_duplicate_series_named(contracts, realdata: Path, tmp_path: Path) -> None:
    from datalab.store import datasheet

    lines = _cmapss_lines(realdata)
    copy = [ln for ln in lines if ln.split(" ")[0] == "97"]
    frame = pl.DataFrame({
        "contract_id": CMAPSS,
        "entity": [x.split(" ")[0] for x in copy] + ["107"] * len(copy),
        "time": [int(x.split(" ")[1]) for x in copy] * 2,
        "sensor": "s2", "value": [float(x.split(" ")[6]) for x in copy] * 2})
    warns = datasheet.near_duplicate_series(frame.lazy())
    assert len(warns) == 1 and "entities 107, 97" in warns[0] and f"{len(copy):,} readings" in warns[0]
    assert datasheet.near_duplicate_series(frame.filter(pl.col("entity") == "97").lazy()) == []
    # the card finds it from its fine counts (no pass of its own), split by tenant and shift as the card splits
    rows = frame.with_columns(tenant=pl.lit("nasa"), flag_gap_before=False, flag_missing=pl.col("value").is_null())
    schema = {k: str(v) for k, v in rows.schema.items()}
    assert datasheet.near_duplicates_of(datasheet.fine_counts(schema, (), rows.lazy())) == warns
    shifted = rows.with_columns(time=pl.datetime(2026, 1, 1) + pl.duration(hours=pl.col("time")))  # over several shifts
    schema = {k: str(v) for k, v in shifted.schema.items()}
    fine = datasheet.fine_counts(schema, (), shifted.lazy())
    assert fine["condition"].n_unique() > 1 and datasheet.near_duplicates_of(fine) == warns
    assert datasheet.near_duplicates_of(fine.filter(pl.col("entity") == "97")) == []


@pytest.mark.parametrize(("repeated", "margin", "exact"), [(0.01, None, False), (0.09, None, True), (0.01, 0.5, True)],
                         ids=["well-under-the-share", "over-it", "under-it-but-the-estimate-is-unsure"])
def test_a_large_push_counts_its_duplicates_exactly_only_where_the_estimate_cannot_rule_out_a_warning(
        lab: Path, contracts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repeated: float,
        margin: float | None, exact: bool) -> None:
    # Past SMALL_DELIVERY_ROWS the push first estimates the distinct keys; the exact count (a
    # hash set of every key) runs only where the estimate, give or take its margin, cannot rule
    # out a warning. The receipt's warning is the exact count's, as before.
    c = contracts[SPINDLE]
    monkeypatch.setattr(landing, "SMALL_DELIVERY_ROWS", 100)
    monkeypatch.setattr(ingest.RawWriter, "KEYS_KEPT_ROWS", 100)
    if margin is not None:
        monkeypatch.setattr(landing, "ESTIMATE_MARGIN", margin)
    counted: list[int] = []
    real = landing._distinct_keys
    monkeypatch.setattr(landing, "_distinct_keys", lambda raw: counted.append(1) or real(raw))
    n = 20_000
    lines = ["machine_id,ts,sensor,value,unit"]
    lines += [f"BSW-M0{1 + i % 3},2026-01-05T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z,spindle_temp,40,Cel"
              for i in range(n)]
    k = round(repeated * n / (1 - repeated))
    lines += lines[1:k + 1]
    src = tmp_path / f"d{k}.csv"
    src.write_text("\n".join(lines) + "\n")
    rec = landing.push(c, [src])
    assert rec.accepted
    assert bool(counted) == exact
    if k / (n + k) > c.curation.max_duplicate_share:
        assert len(rec.warnings) == 1 and f"{k:,} of {n + k:,} rows" in rec.warnings[0]
    else:
        assert rec.warnings == []
