"""What changed between two versions of a dataset (``datalab diff NAME@A NAME@B``).

Schema changes, row deltas per contract and firm, changed policy fields and
a drift summary per numeric series (mean, std and quantiles of ``value`` per
sensor, plus every other numeric column). Read from the versions' files as
published (checksums verified by reading the manifest's paths), so it works
for old versions too; withdrawn versions have no data left and are refused.
Rows published under a firm's pseudonym are read under its name again
(``firm_names.plain_rows``): the diff is the lab's, local-only.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from datalab.config import Settings, settings
from datalab.errors import PolicyRefused
from datalab.policy import firm_names
from datalab.store.manifest import Manifest
from datalab.store.manifests import read_manifest
from datalab.store.storage import store

NUMERIC = (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def _frame(m: Manifest, s: Settings) -> pl.LazyFrame:
    if m.status == "withdrawn":
        raise PolicyRefused("withdrawn", f"{m.dataset}@{m.version} was withdrawn: {(m.withdrawn or {}).get('reason', '')}")
    lf = store(s).scan_parquet([f.path for f in m.files], missing_columns="insert", extra_columns="ignore")
    # a firm that withholds its name has its rows published under its pseudonym; the lab's diff names it
    # (docs/sovereignty.md, "Firm names"), and a version from before the rows were masked compares alike
    return firm_names.plain_rows(lf, m.lineage.contracts, s)


def _stats(lf: pl.LazyFrame, keys: list[str], col: str) -> pl.DataFrame:
    return lf.group_by(keys).agg(
        n=pl.col(col).count(), mean=pl.col(col).mean(), std=pl.col(col).std(),
        p05=pl.col(col).quantile(0.05), p50=pl.col(col).median(), p95=pl.col(col).quantile(0.95)).collect()


def diff(name: str, a: str, b: str, s: Settings | None = None) -> dict[str, Any]:
    s = s or settings()
    ma, mb = read_manifest(name, a, s), read_manifest(name, b, s)
    la, lb = _frame(ma, s), _frame(mb, s)
    sa_, sb = ma.schema, mb.schema
    schema = {"added": sorted(set(sb) - set(sa_)), "removed": sorted(set(sa_) - set(sb)),
              "retyped": {k: [sa_[k], sb[k]] for k in sorted(set(sa_) & set(sb)) if sa_[k] != sb[k]}}
    rows = []
    ka = la.group_by("contract_id", "tenant").agg(rows_a=pl.len()).collect()
    kb = lb.group_by("contract_id", "tenant").agg(rows_b=pl.len()).collect()
    for r in ka.join(kb, on=["contract_id", "tenant"], how="full", coalesce=True).fill_null(0).sort("contract_id").iter_rows(named=True):
        rows.append({**r, "delta": r["rows_b"] - r["rows_a"]})
    pa_, pb = ma.policy, mb.policy
    policy = {k: [pa_.get(k), pb.get(k)] for k in sorted(set(pa_) | set(pb)) if k != "sources" and pa_.get(k) != pb.get(k)}
    drift = []
    if "value" in sa_ and "value" in sb and "sensor" in sa_:
        sta, stb = _stats(la, ["contract_id", "sensor"], "value"), _stats(lb, ["contract_id", "sensor"], "value")
        j = sta.join(stb, on=["contract_id", "sensor"], how="full", coalesce=True, suffix="_b").sort("contract_id", "sensor")
        for r in j.iter_rows(named=True):
            drift.append(_drift_row(f"value[{r['sensor']}]", r["contract_id"], r))
    for col in sorted(set(sa_) & set(sb)):
        if col in ("value", "raw_value") or col.startswith("flag_"):
            continue
        if la.collect_schema()[col] in NUMERIC and lb.collect_schema()[col] in NUMERIC:
            ra = _stats(la.with_columns(_k=pl.lit(1)), ["_k"], col).to_dicts()
            rb = _stats(lb.with_columns(_k=pl.lit(1)), ["_k"], col).to_dicts()
            r = {**(ra[0] if ra else {}), **{f"{k}_b": v for k, v in (rb[0] if rb else {}).items()}}
            drift.append(_drift_row(col, "*", r))
    return {"dataset": name, "a": ma.version, "b": mb.version, "schema": schema,
            "rows": {"a": ma.rows, "b": mb.rows, "delta": mb.rows - ma.rows, "per_contract": rows},
            "deliveries": {"added": sorted(set(mb.lineage.deliveries) - set(ma.lineage.deliveries)),
                           "removed": sorted(set(ma.lineage.deliveries) - set(mb.lineage.deliveries))},
            "policy": policy, "drift": drift}


def _drift_row(column: str, contract: str, r: dict[str, Any]) -> dict[str, Any]:
    """Mean shift in units of A's standard deviation: a scale-free drift score."""
    ma, mb, sd = r.get("mean"), r.get("mean_b"), r.get("std")
    shift = (mb - ma) / sd if None not in (ma, mb, sd) and sd else None
    return {"column": column, "contract": contract, "n_a": r.get("n"), "n_b": r.get("n_b"),
            "mean_a": ma, "mean_b": mb, "std_a": sd, "std_b": r.get("std_b"),
            "p50_a": r.get("p50"), "p50_b": r.get("p50_b"), "p95_a": r.get("p95"), "p95_b": r.get("p95_b"),
            "mean_shift_sd": round(shift, 4) if shift is not None else None,
            "drift": shift is not None and abs(shift) > 0.5}


def render(d: dict[str, Any]) -> str:
    L = [f"{d['dataset']}: {d['a']} -> {d['b']}", "", "schema:"]
    sc = d["schema"]
    L += [f"  added {sc['added'] or '-'}; removed {sc['removed'] or '-'}; retyped {sc['retyped'] or '-'}", "",
          f"rows: {d['rows']['a']:,} -> {d['rows']['b']:,} ({d['rows']['delta']:+,})"]
    for r in d["rows"]["per_contract"]:
        L.append(f"  {r['contract_id']} ({r['tenant']}): {r['rows_a']:,} -> {r['rows_b']:,} ({r['delta']:+,})")
    L += [f"deliveries added {len(d['deliveries']['added'])}, removed {len(d['deliveries']['removed'])}", "", "policy:"]
    L += [f"  {k}: {v[0]} -> {v[1]}" for k, v in d["policy"].items()] or ["  unchanged"]
    L += ["", "drift (mean shift in A's standard deviations; * past 0.5):"]
    for r in d["drift"]:
        sh = "-" if r["mean_shift_sd"] is None else f"{r['mean_shift_sd']:+.3f}"
        L.append(f"  {'*' if r['drift'] else ' '} {r['column']:<28} {r['contract'].split(':')[-1]:<20} n {r['n_a']} -> {r['n_b']}  shift {sh}")
    return "\n".join(L)
