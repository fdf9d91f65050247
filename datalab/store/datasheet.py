"""The datasheet (dataset card) of a version: Markdown, HTML, JSON and plots.

Written at publish, shipped with every pull and shown in Dagster. Two readers:
an ML engineer (what is in it, how balanced, what is missing, what may I do
with it) and an auditor (where did it come from, how was it prepared, which
policy applies, can I check the numbers). Every number comes from one
computation over the version's rows (:func:`facts`), written to
``datasheet.json`` and rendered from there, so the card cannot disagree with
itself, and tests check it against the table.

The examination for imbalance and possible bias looks at shares per firm,
per machine type (the input contract's domain) and per operating condition
(the shift of the reading's local time for timestamped data; none for
index-time data) and per machine, and warns past the thresholds below.
"""

from __future__ import annotations

import html
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datalab.config import Settings
from datalab.contracts.contract import Contract
from datalab.contracts.policy import policy_words
from datalab.kinds import Kind, kind_of_manifest
from datalab.store.manifest import Manifest
from datalab.store.markdown import cell as md_cell
from datalab.store.row_facts import (
    VALUE_SEED,
    StoredFacts,
    clean_value,
    fine_aggs,
    fine_keys,
    is_ts,
    shift_code,
)

# Warn when one group holds more than this share (dominance) ...
DOMINANT_SHARE = 0.6
# ... or less than this share (under-represented) ...
MINOR_SHARE = 0.05
# ... or when the busiest machine has this many times the rows of the quietest.
MACHINE_RATIO = 5.0
# A sensor with more missing values than this is a known gap.
MISSING_SHARE = 0.05
PLOTS = ("coverage.png", "distributions.png", "quality.png")
# The distributions plot shows the first this many sensors, from at most
# this many clean values each.
PLOTTED_SENSORS = 24
SAMPLE_VALUES = 200_000
SHIPPED = ("card.md", "card.html", "datasheet.json", *PLOTS)


def flag_words(m: Manifest) -> dict[str, str]:
    """The flag columns of version ``m``'s table and their meanings, as its kind declares them (``Kind.flag_words``).

    Read from the kind, not kept here: a copy of the list drifted from
    curation's (other words: "late readings" for late-arriving ones, no key in "key duplicates").
    """
    return dict(kind_of_manifest(m).flag_words)


def _firm_label(c: Contract, s: Settings) -> str:
    """Firms are named when their data is public or internal, else pseudonymised (``datalab.policy.firm_names``)."""
    from datalab.policy import firm_names

    return firm_names.label(c, s)


# Operating condition: the shift of the reading's hour, as a small integer on
# the rows (((h + 2) // 8) % 3: 06-13 -> 1, 14-21 -> 2, 22-05 -> 0) and named
# on the grouped table. A string per row from when/then took 0.7 s of the
# count pass at 10 M rows. A reading without a time counts as night, as the
# when/then's otherwise branch had it.
SHIFTS = {0: "night (22-06)", 1: "early (06-14)", 2: "late (14-22)"}


def _shares(df: pl.DataFrame, col: str, total: int) -> list[dict[str, Any]]:
    return [{"group": r[col], "rows": r["rows"], "share": round(r["rows"] / total, 4) if total else 0.0}
            for r in df.sort(col).iter_rows(named=True)]


def _warn_shares(what: str, shares: list[dict[str, Any]]) -> list[str]:
    out = []
    if len(shares) < 2:
        return [f"only one {what} ({shares[0]['group'] if shares else '-'}): a model trained on this data has seen no other {what}"] if shares else []
    for x in shares:
        if x["share"] > DOMINANT_SHARE:
            out.append(f"{what} {x['group']} holds {x['share']:.0%} of the rows (threshold {DOMINANT_SHARE:.0%}): results may reflect it more than the others")
        elif x["share"] < MINOR_SHARE:
            out.append(f"{what} {x['group']} holds only {x['share']:.1%} of the rows (threshold {MINOR_SHARE:.0%}): under-represented")
    return out


def fine_counts(schema: dict[str, str], flags: tuple[str, ...], lf: pl.LazyFrame) -> pl.DataFrame:
    """Row, time-span and flag counts per (firm, contract, entity, sensor, shift): one pass over the version.

    ``flags``: the flag columns of the version's kind (``Kind.flag_words``).
    """
    ts = is_ts(schema)
    # One pass for every count of the card: a group-by on the finest key the
    # card needs (firm, machine type, entity, sensor, operating condition),
    # from which totals, per-firm, per-type, per-machine, flag and condition
    # counts are summed. Six passes over the version did this before (1 s of
    # a 10 M-row publish). Distinct counts come from this table too: n_unique
    # and median in a group-by over the version make Polars read whole
    # columns (+1.1 GB per 5 M rows; a 200 M-row publish ran out of memory);
    # medians are exact, one sensor at a time, below. Firm labels and machine
    # types are put on the grouped table, not on the rows: the streaming
    # engine does not stream ``replace_strict`` with a column as default,
    # and a group-by on it held the version (3.9 GB at 50 M rows).
    # The near-duplicate fingerprints' sums of value hashes are summed here too
    # (wrapping sums of UInt64: the sum of the parts' sums is the whole's):
    # their own pass was 0.6 s of a 10 M-row publish (near_duplicates_of).
    flag_cols = [f for f in flags if f in schema]
    fine = (lf.with_columns(condition=shift_code()) if ts else lf).group_by(fine_keys(schema, ("tenant", "contract_id"))).agg(
        **fine_aggs(schema, flag_cols)).collect(engine="streaming")
    return named_conditions(fine) if ts else fine


def named_conditions(fine: pl.DataFrame) -> pl.DataFrame:
    """The fine counts with their operating conditions named (``SHIFTS``) instead of coded."""
    return fine.with_columns(condition=pl.col("condition").replace_strict(SHIFTS, return_dtype=pl.String))


def sensor_stats(schema: dict[str, str], lf: pl.LazyFrame, moments: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per (contract, sensor): unit, rows, missing and flagged counts, and the statistics of the clean values.

    ``moments``: all of it but the medians, if already known (the
    deliveries' stored facts, :meth:`row_facts.StoredFacts.sensors`); the
    medians do not add up over deliveries and are always read from the rows.
    """
    clean = clean_value(schema)
    per_sensor = moments if moments is not None else lf.group_by("contract_id", "sensor").agg(
        unit=pl.col("unit").first(), rows=pl.len(), missing=pl.col("value").is_null().sum(),
        flagged=(pl.col("value").is_not_null() & clean.is_null()).sum(),
        mean=clean.mean(), std=clean.std(), min=clean.min(),
        max=clean.max()).sort("contract_id", "sensor").collect(engine="streaming")
    medians = [
        lf.filter((pl.col("contract_id") == cid) & pl.col("sensor").eq_missing(sensor)).select(clean.median())
        .collect(engine="streaming").item()
        for cid, sensor in per_sensor.select("contract_id", "sensor").iter_rows()
    ]
    return per_sensor.with_columns(median=pl.Series(medians, dtype=pl.Float64)).select(
        "contract_id", "sensor", "unit", "rows", "missing", "flagged", "mean", "std", "min", "median", "max")


@dataclass
class RowPasses:
    """What the card reads from the version's rows; everything else comes from the manifest.

    Only the schema is needed to compute it, so publish starts it on a
    thread (:func:`start_row_passes`) before the Iceberg commit: these are
    Polars passes (GIL released) and pyiceberg's work is Python, so the two
    share the two cores instead of taking turns. At 10 M rows the passes
    take 1.25 s and publish became 0.15 s faster (pyiceberg's import and
    table creation then compete with them for the CPU); the longer the
    passes, the more of the Iceberg work they hide.
    """

    fine: pl.DataFrame
    sensors: pl.DataFrame
    coverage: Coverage
    samples: list[Any]  # numpy arrays: clean values of the first PLOTTED_SENSORS sensors (at most SAMPLE_VALUES each)


def row_passes(schema: dict[str, str], flags: tuple[str, ...], lf: pl.LazyFrame,
               stored: StoredFacts | None = None) -> RowPasses:
    """Every pass over the version's rows the card needs: they need only its schema and its kind's flag columns.

    ``stored``: the fine counts and sensor moments of every delivery of the
    version, counted at curation (:mod:`datalab.store.row_facts`): merged
    instead of counted again; the rest is read from the rows.
    """
    if stored is not None:
        fine = stored.fine(schema, flags)
        fine = named_conditions(fine) if is_ts(schema) else fine
        sensors = sensor_stats(schema, lf, stored.sensors())
    else:
        fine = fine_counts(schema, flags, lf)
        sensors = sensor_stats(schema, lf)
    cov = coverage(schema, lf, span=(fine["time_min"].min(), fine["time_max"].max()))
    samples = [
        lf.filter((pl.col("contract_id") == cid) & (pl.col("sensor") == sensor)).select(clean_value(schema).alias("v")).drop_nulls()
        .head(SAMPLE_VALUES).collect(engine="streaming")["v"].to_numpy()
        for cid, sensor in sensors.select("contract_id", "sensor").head(PLOTTED_SENSORS).iter_rows()
    ]
    return RowPasses(fine, sensors, cov, samples)


class PendingPasses:
    """:func:`row_passes` running on a daemon thread; :meth:`result` waits and re-raises its error."""

    def __init__(self, schema: dict[str, str], flags: tuple[str, ...], lf: pl.LazyFrame,
                 stored: StoredFacts | None = None):
        self._out: RowPasses | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(schema, flags, lf, stored),
                                        name="datalab-datasheet-passes", daemon=True)
        self._thread.start()

    def _run(self, schema: dict[str, str], flags: tuple[str, ...], lf: pl.LazyFrame, stored: StoredFacts | None) -> None:
        try:
            self._out = row_passes(schema, flags, lf, stored)
        except BaseException as e:  # handed to result()
            self._error = e

    def result(self) -> RowPasses:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._out is not None
        return self._out


def start_row_passes(schema: dict[str, str], flags: tuple[str, ...], lf: pl.LazyFrame,
                     stored: StoredFacts | None = None) -> PendingPasses:
    """Start :func:`row_passes` for a version with ``schema`` on a thread (see :class:`RowPasses`)."""
    return PendingPasses(schema, flags, lf, stored)


def facts(m: Manifest, contracts: dict[str, Contract], lf: pl.LazyFrame, s: Settings,
          passes: RowPasses | None = None) -> dict[str, Any]:
    """Every number of the card, computed from the version's rows (``passes``: :func:`row_passes`, if already run)."""
    used = {cid: contracts[cid] for cid in m.contract_ids if cid in contracts}
    firms = {c.tenant: _firm_label(c, s) for c in used.values()}
    domain = {cid: str(c.raw.get("domain") or c.product) for cid, c in used.items()}
    ts = is_ts(m.schema)
    passes = passes or row_passes(m.schema, tuple(flag_words(m)), lf)
    fine = passes.fine
    flag_cols = [f for f in flag_words(m) if f in m.schema]
    fine = fine.with_columns(firm=pl.col("tenant").replace_strict(firms, default=pl.col("tenant")),
                             machine_type=pl.col("contract_id").replace_strict(domain, default=pl.lit("unknown")))
    total = int(fine["rows"].sum())
    series = fine.group_by("firm", "entity", "sensor").agg(rows=pl.col("rows").sum())
    per_firm = fine.group_by("firm").agg(
        rows=pl.col("rows").sum(), time_min=pl.col("time_min").min(), time_max=pl.col("time_max").max(),
        gaps=pl.col("gaps").sum(), missing=pl.col("missing").sum())
    per_firm = per_firm.join(series.group_by("firm").agg(machines=pl.col("entity").n_unique(), sensors=pl.col("sensor").n_unique()),
                             on="firm", how="left", nulls_equal=True).select(
        "firm", "rows", "machines", "sensors", "time_min", "time_max", "gaps", "missing").sort("firm")
    per_type = fine.group_by("machine_type").agg(rows=pl.col("rows").sum())
    per_machine = series.group_by("firm", "entity").agg(rows=pl.col("rows").sum(), sensors=pl.col("sensor").n_unique()).sort("firm", "entity")
    per_sensor = passes.sensors
    flag_counts = {f: int(fine[f"_{f}"].sum()) for f in flag_cols}
    cond = None
    if ts:
        cond = _shares(fine.group_by("condition").agg(rows=pl.col("rows").sum()), "condition", total)
    firm_shares = _shares(per_firm.select("firm", "rows"), "firm", total)
    type_shares = _shares(per_type, "machine_type", total)
    warnings = _warn_shares("firm", firm_shares) + _warn_shares("machine type", type_shares)
    if cond:
        warnings += _warn_shares("operating condition", cond)
    for firm in per_machine["firm"].unique().sort().to_list():
        rows = per_machine.filter(pl.col("firm") == firm)["rows"]
        if rows.min() and rows.max() / rows.min() > MACHINE_RATIO:
            warnings.append(f"firm {firm}: the busiest machine has {rows.max() / rows.min():.1f}x the rows of the quietest (threshold {MACHINE_RATIO:g}x)")
    gaps = []
    for r in per_sensor.iter_rows(named=True):
        if r["rows"] and r["missing"] / r["rows"] > MISSING_SHARE:
            gaps.append(f"sensor {r['sensor']} ({r['contract_id']}): {r['missing'] / r['rows']:.1%} of values missing")
    for r in per_firm.iter_rows(named=True):
        if r["gaps"]:
            gaps.append(f"firm {r['firm']}: {r['gaps']:,} readings follow a gap in their series (flag_gap_before)")
    for d, st in m.curation.items():
        for w in st.get("warnings") or []:
            warnings.append(f"delivery {d}: {w}")
        if st.get("repeats_excluded"):
            gaps.append(f"delivery {d}: {st['repeats_excluded']:,} readings repeat ones an earlier delivery holds; excluded")
    warnings += near_duplicates_of(passes.fine)
    const = sorted({x for st in m.curation.values() for x in (st.get("constant_sensors") or [])})
    if const:
        gaps.append(f"constant sensors (no information for learning): {', '.join(const)}")
    for e in m.sovereignty.get("exclusions", []):
        gaps.append(f"input {e['contract']} left out: {e['reason']}")
    for e in m.lineage.excluded:
        gaps.append(f"delivery {e.delivery_id} ({e.contract}) left out: {e.reason}")
    collection = []
    for cid, c in used.items():
        step = c.curation.expected_step
        rate = (f"every {step / 1e6:g} s" if ts else f"every {step} index step(s)") if step else "irregular"
        collection.append({"contract": cid, "firm": firms[c.tenant], "machine_type": domain[cid],
                           "sensors": [{"name": x.name, "unit": x.unit, "description": x.description} for x in c.measurements],
                           "rate": rate, "time_axis": c.time.logical_type, "limitations": str((c.raw.get("description") or {}).get("limitations") or "") if isinstance(c.raw.get("description"), dict) else ""})

    def _t(v: Any) -> str:
        return "" if v is None else str(v)

    return {
        "dataset": m.dataset, "version": m.version, "rows": total,
        "firms": [{**r, "time_min": _t(r["time_min"]), "time_max": _t(r["time_max"])} for r in per_firm.iter_rows(named=True)],
        "firm_shares": firm_shares, "machine_type_shares": type_shares, "condition_shares": cond,
        "machines": list(per_machine.iter_rows(named=True)),
        "sensors": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in per_sensor.iter_rows(named=True)],
        "flags": flag_counts, "warnings": warnings, "gaps": gaps, "collection": collection,
        "firm_labels": {v: ("named" if k == v else "pseudonymised") for k, v in firms.items()},
        "thresholds": {"dominant_share": DOMINANT_SHARE, "minor_share": MINOR_SHARE, "machine_ratio": MACHINE_RATIO, "missing_share": MISSING_SHARE},
    }


# A series of fewer readings than this is not compared (short series match by chance).
NEAR_DUPLICATE_MIN_READINGS = 20
def near_duplicate_series(lf: pl.LazyFrame) -> list[str]:
    """Warnings for entities whose readings repeat another entity's, value for value.

    One entity's series gets a fingerprint: per sensor the sum of its
    values' hashes (the multiset of values, whatever the time axis: a copy
    may be shifted in time), combined over its sensors; two entities of one
    contract with the same fingerprint and at least
    ``NEAR_DUPLICATE_MIN_READINGS`` readings carry the same data under other
    ids. No sort: one streaming group-by over the version. The
    C-MAPSS test file held engines 91-100 of the training file again as
    101-110, and nothing noticed (issue 23). One group-by over the version.
    """
    cols = lf.collect_schema().names()
    if not {"entity", "sensor", "value", "time"} <= set(cols):
        return []
    by = ["contract_id"] if "contract_id" in cols else []
    per_sensor = (
        lf.filter(pl.col("entity").is_not_null() & pl.col("sensor").is_not_null())
        .group_by([*by, "entity", "sensor"])
        .agg(h=pl.col("value").hash(seed=VALUE_SEED).sum(), n=pl.len())
    )
    return _near_duplicates(per_sensor, by)


def near_duplicates_of(fine: pl.DataFrame) -> list[str]:
    """:func:`near_duplicate_series` from the card's fine counts (:func:`fine_counts`), without a pass over the rows."""
    if "value_hash" not in fine.columns:
        return []
    per_sensor = (
        fine.lazy().filter(pl.col("entity").is_not_null() & pl.col("sensor").is_not_null())
        .group_by("contract_id", "entity", "sensor")
        .agg(h=pl.col("value_hash").sum(), n=pl.col("rows").sum())
    )
    return _near_duplicates(per_sensor, ["contract_id"])


def _near_duplicates(per_sensor: pl.LazyFrame, by: list[str]) -> list[str]:
    """The warnings, from the value-hash sums and counts per (``by``, entity, sensor)."""
    per_entity = (
        per_sensor.group_by([*by, "entity"])
        .agg(fp=(pl.col("h") + pl.col("sensor").hash(seed=5)).sum(), n=pl.col("n").sum())
        .filter(pl.col("n") >= NEAR_DUPLICATE_MIN_READINGS)
        .collect(engine="streaming")
    )
    out: list[str] = []
    groups = per_entity.group_by([*by, "fp"]).agg(pl.col("entity").sort(), pl.col("n").first()).filter(pl.col("entity").list.len() > 1)
    for r in groups.sort(pl.col("entity").list.first()).iter_rows(named=True):
        where = f" ({r['contract_id']})" if by else ""
        ents = [str(e) for e in r["entity"]]
        out.append(f"near-duplicate series{where}: entities {', '.join(ents)} carry the same {r['n']:,} readings "
                   "(same values in the same order, other entity ids): one machine delivered twice under other ids?")
    return out


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else (f"{v:.4g}" if isinstance(v, float) else md_cell(v))

    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def render_markdown(m: Manifest, f: dict[str, Any], contracts: dict[str, Contract]) -> str:
    L: list[str] = [f"# {m.title} — version {m.version}", "", m.description, "",
                    f"Dataset `{m.dataset}@{m.version}` ({m.version_reason}), published {m.created_at} to site "
                    f"**{m.site.name}** ({m.site.country}, {m.site.operator}). "
                    f"**{f['rows']:,} rows** (readings: one row per sensor value; a delivery's receipt counts its file rows) from {len(f['firms'])} firm(s), {len(f['machines'])} machine(s), {len(f['sensors'])} sensor series kind(s), "
                    f"in {len(m.files)} Parquet file(s).", ""]
    L += ["## Usage policy (effective)", *policy_words(m.policy), "",
          f"Explain every field and its source: `datalab policy explain {m.dataset}@{m.version}`.", ""]
    L += ["## Provenance"]
    L += _table(["contract", "firm", "contract version", "rows", "from", "to"],
                [[c.id, next((x["firm"] for x in f["collection"] if x["contract"] == c.id), c.tenant), c.version,
                  m.rows_per_contract.get(c.id, 0),
                  *next(([x["time_min"], x["time_max"]] for x in f["firms"] if x["firm"] == next((y["firm"] for y in f["collection"] if y["contract"] == c.id), None)), ["", ""])]
                 for c in m.lineage.contracts])
    L += ["", f"Deliveries ({len(m.lineage.deliveries)}): {', '.join(m.lineage.deliveries)}.", ""]
    L += ["## Collection"]
    for x in f["collection"]:
        sensors = ", ".join(f"{y['name']} [{y['unit']}]" for y in x["sensors"])
        L.append(f"- **{x['firm']}** ({x['machine_type']}, {x['contract']}): {sensors}; one reading {x['rate']}; time axis {x['time_axis']}."
                 + (f" Limitations: {x['limitations']}" if x["limitations"] else ""))
    L += ["", "## Preparation",
          "1. Landing: files checked against the contract (format, encoding, size, schema) and stored with their SHA-256.",
          "2. Ingest: parsed into a long table (entity, time, sensor, value, unit).",
          "3. Curation: exact duplicate rows removed (the only deletion); units converted to the contract's canonical units; "
          "personal attributes pseudonymised; every other defect kept and flagged.",
          "4. Validation: Great Expectations suites derived from the contract, blocking.",
          "5. Publishing: inputs combined, policy checked, rows written to Iceberg.", ""]
    L += ["Counts are readings (rows of the long table); a wide file row holds one reading per sensor, so a "
          "receipt's \"rows delivered\" can be fewer.", ""]
    words = flag_words(m)
    L += _table(["delivery", "readings in", "readings out", "duplicates removed", "repeats excluded", "replaced by corrections",
                 "values converted", *words.values()],
                [[d + (" (correction)" if st.get("correction") else ""), st.get("rows_in") or 0, st.get("rows_out") or 0,
                  st.get("exact_duplicates_removed") or 0, st.get("repeats_excluded") or 0, st.get("rows_replaced_by_corrections") or 0,
                  st.get("values_converted") or 0, *[st.get(k) or 0 for k in words]] for d, st in m.curation.items()])
    L += ["", "*Repeats excluded*: readings whose entity, time and sensor an earlier delivery of the contract already holds "
          "(the key is unique across deliveries); *replaced by corrections*: readings a later delivery declared as a "
          "correction (`datalab push --correction`) replaces."]
    L += ["", "## Validation"]
    for d, v in m.validation.items():
        L.append(f"- {d}: {'passed' if v['success'] else 'FAILED'} ({v['evaluated']} expectations, {v['failed']} failed)")
    L += ["", "## Quantity and coverage", "", "Per firm:", ""]
    L += _table(["firm", "rows", "share", "machines", "sensors", "from", "to"],
                [[r["firm"], r["rows"], f"{r['rows'] / f['rows']:.1%}" if f["rows"] else "-", r["machines"], r["sensors"], r["time_min"], r["time_max"]] for r in f["firms"]])
    L += ["", "Per machine:", ""]
    L += _table(["firm", "machine", "rows", "sensors"], [[r["firm"], r["entity"], r["rows"], r["sensors"]] for r in f["machines"]])
    L += ["", "Per sensor (values in canonical units):", ""]
    L += ["Statistics over in-range values that are not robust outliers; those are counted under *flagged*.", ""]
    L += _table(["contract", "sensor", "unit", "rows", "missing", "flagged", "mean", "std", "min", "median", "max"],
                [[r["contract_id"].split(":")[-1], r["sensor"], r["unit"], r["rows"], r["missing"], r["flagged"], r["mean"], r["std"], r["min"], r["median"], r["max"]] for r in f["sensors"]])
    L += ["", "Quality flags in this version:", ""]
    L += _table(["flag", "rows"], [[words.get(k, k), v] for k, v in f["flags"].items()])
    L += ["", "![coverage over time per firm](coverage.png)", "", "![value distributions per sensor](distributions.png)", "",
          "![quality flags per version](quality.png)", ""]
    L += ["## Imbalance and possible bias", "",
          f"Shares per firm, machine type and operating condition; warnings when one group exceeds {DOMINANT_SHARE:.0%}, "
          f"falls below {MINOR_SHARE:.0%}, or a firm's busiest machine has more than {MACHINE_RATIO:g}x the rows of its quietest.", ""]
    L += _table(["dimension", "group", "rows", "share"],
                [["firm", x["group"], x["rows"], f"{x['share']:.1%}"] for x in f["firm_shares"]]
                + [["machine type", x["group"], x["rows"], f"{x['share']:.1%}"] for x in f["machine_type_shares"]]
                + [["operating condition (shift)", x["group"], x["rows"], f"{x['share']:.1%}"] for x in (f["condition_shares"] or [])])
    L += [""] + ([f"- **Warning**: {w}" for w in f["warnings"]] or ["No share crosses a threshold."])
    L += ["", "## Known gaps and shortcomings", ""] + ([f"- {g}" for g in f["gaps"]] or ["- none found"])
    L += ["", "## Schema", *_table(["column", "type"], [[k, v] for k, v in m.schema.items()])]
    cites = "; ".join(f"{contracts[c.id].name} ({x})" for c in m.lineage.contracts if c.id in contracts
                      for x in [next((y["firm"] for y in f["collection"] if y["contract"] == c.id), c.tenant)])
    L += ["", "## How to use",
          f"`datalab pull {m.dataset}@{m.version} --purpose <purpose> --to DIR`, or `datalab.open('{m.dataset}', version='{m.version}', purpose='<purpose>')`.",
          "", "## Licence and how to cite",
          f"Licences: {', '.join(m.policy['license']) or 'none stated'}.",
          f"Cite as: {m.title}, version {m.version}, datalab dataset `{m.dataset}@{m.version}`, Iceberg snapshot {m.snapshot_id}; providers: {cites}.", ""]
    return "\n".join(L)


def _cells(row: str) -> list[str]:
    """The cells of one Markdown table row, ``\\|`` and ``\\\\`` read back as the characters (``card.cell`` wrote them)."""
    cells, cur, i, body = [], [], 0, row.strip()[1:-1] if row.strip().endswith("|") else row.strip()[1:]
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in "|\\":
            cur.append(body[i + 1])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    cells.append("".join(cur).strip())
    return cells


def render_html(md: str, title: str) -> str:
    """HTML of the card's Markdown (the small subset the card uses: headings, lists, tables, images)."""
    def inline(t: str) -> str:
        t = html.escape(t)
        t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|(---\|)+$", lines[i]):
                    rows.append(_cells(lines[i]))
                i += 1
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]) + "</tbody></table>")
            continue
        if ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if mt := re.match(r"^(#+) (.*)$", ln):
            n = len(mt.group(1))
            out.append(f"<h{n}>{inline(mt.group(2))}</h{n}>")
        elif mt := re.match(r"^!\[(.*)\]\((.*)\)$", ln):
            out.append(f'<figure><img src="{html.escape(mt.group(2))}" alt="{html.escape(mt.group(1))}"><figcaption>{html.escape(mt.group(1))}</figcaption></figure>')
        elif ln.strip():
            out.append(f"<p>{inline(ln)}</p>")
        i += 1
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"


def preload() -> None:
    """Import matplotlib's pyplot (Agg) now, for a long-lived process (``datalab.warm``)."""
    _import_pyplot()


def _import_pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Coverage:
    """Rows per firm (tenant) and time bucket, with every bucket of the span (a period without data shows as zero)."""

    rows: pl.DataFrame  # tenant, bucket, rows
    buckets: pl.DataFrame | None  # bucket: every bucket from the first to the last
    unit_words: str


def _margins(fig: Any, left: float = 0.8, right: float = 0.4, bottom: float = 0.45, top: float = 0.35,
             wspace: float | None = None, hspace: float | None = None) -> None:
    """Fixed margins in inches, instead of ``tight_layout``.

    ``tight_layout`` draws the figure once to measure its labels and
    ``savefig`` draws it again; with three plots that was about 0.3 s of
    every publish (docs/performance.md). The plots' labels are short and of
    known sizes, so fixed margins hold them.
    """
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace, hspace=hspace)


def coverage(schema: dict[str, str], lf: pl.LazyFrame, span: tuple[Any, Any]) -> Coverage:
    """One pass counting rows per firm and time bucket; about 60 buckets over ``span`` (the version's first and last time)."""
    ts = is_ts(schema)
    lo, hi = span
    if ts:
        seconds = (hi - lo).total_seconds() if lo is not None else 0
        every = next((e for e, sec in (("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600), ("6h", 21600), ("1d", 86400), ("1w", 604800))
                      if seconds / sec <= 60), "1mo")
        bucket = pl.col("time").dt.truncate(every)
        unit_words = every
    else:
        step = max(1, int(((hi or 0) - (lo or 0)) / 60))
        bucket = (pl.col("time") // step) * step
        unit_words = f"{step} time steps"
    cov = lf.group_by("tenant", bucket.alias("bucket")).agg(rows=pl.len()).sort("tenant", "bucket").collect(engine="streaming")
    full = None
    if cov.height and ts:
        first = cov["bucket"].min()
        full = pl.select(bucket=pl.datetime_range(first, cov["bucket"].max(), interval=every, eager=True))
    elif cov.height:
        full = pl.DataFrame({"bucket": list(range(int(cov["bucket"].min()), int(cov["bucket"].max()) + 1, step))},
                            schema={"bucket": cov.schema["bucket"]})
    return Coverage(cov, full, unit_words)


def plots(vdir: Path, m: Manifest, f: dict[str, Any], lf: pl.LazyFrame, s: Settings,
          passes: RowPasses | None = None) -> None:
    """The three PNGs, rendered headless (Agg). ``passes``: :func:`row_passes`, if already run."""
    plt = _import_pyplot()
    passes = passes or row_passes(m.schema, tuple(flag_words(m)), lf)
    labels = {c.tenant: x["firm"] for c in m.lineage.contracts for x in f["collection"] if x["contract"] == c.id}
    # 1. coverage over time per firm
    cov, full = passes.coverage.rows, passes.coverage.buckets
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for t in cov["tenant"].unique().sort().to_list():
        assert full is not None
        d = full.join(cov.filter(pl.col("tenant") == t).select("bucket", "rows"), on="bucket", how="left").fill_null(0).sort("bucket")
        ax.step(d["bucket"].to_list(), d["rows"].to_list(), where="post", label=labels.get(t, t))
    ax.set_title(f"{m.dataset}@{m.version}: rows per {passes.coverage.unit_words} per firm")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    _margins(fig)
    fig.savefig(vdir / "coverage.png", dpi=90)
    plt.close(fig)
    # 2. value distributions per sensor (first 24 series kinds)
    sensors = [(r["contract_id"], r["sensor"], r["unit"]) for r in f["sensors"]][:PLOTTED_SENSORS]
    n = max(1, len(sensors))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for k, ((_, sensor, unit), vals) in enumerate(zip(sensors, passes.samples, strict=True)):
        ax = axes[k // cols][k % cols]
        # One filled outline, not 40 bars: the same counts and edges as ax.hist
        # (np.histogram, 40 bins), drawn in about half the time (docs/performance.md).
        counts, edges = np.histogram(vals, bins=40)
        ax.stairs(counts, edges, fill=True)
        ax.set_title(f"{sensor} [{unit}]", fontsize=8)
        ax.tick_params(labelsize=6)
    for k in range(len(sensors), rows * cols):
        axes[k // cols][k % cols].axis("off")
    _margins(fig, left=0.35, right=0.1, bottom=0.3, top=0.3, wspace=0.35, hspace=0.55)
    fig.savefig(vdir / "distributions.png", dpi=80)
    plt.close(fig)
    # 3. quality flags per version (this and the earlier, still-described versions)
    hist = []
    earlier = [p for p in vdir.parent.glob("*/datasheet.json") if re.match(r"^\d+\.\d+\.\d+$", p.parent.name)]
    for prev in sorted(earlier, key=lambda p: tuple(int(x) for x in p.parent.name.split("."))):
        if prev.parent != vdir:
            hist.append((prev.parent.name, json.loads(prev.read_text())["flags"]))
    hist.append((m.version, f["flags"]))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    words = flag_words(m)
    width = 0.8 / max(1, len(f["flags"]))
    for j, flag in enumerate(f["flags"]):
        ax.bar([i + j * width for i in range(len(hist))], [h.get(flag, 0) for _, h in hist], width, label=words.get(flag, flag))
    ax.set_xticks([i + 0.4 for i in range(len(hist))], [v for v, _ in hist])
    ax.set_title(f"{m.dataset}: rows flagged per version")
    ax.legend(fontsize=7)
    _margins(fig)
    fig.savefig(vdir / "quality.png", dpi=90)
    plt.close(fig)


def mask(text: str, masks: dict[str, str]) -> str:
    """Replace the names of firms that may not be named (also inside contract ids), their machines and licences."""
    from datalab.policy import firm_names

    return firm_names.apply(text, masks)


def write(vdir: Path, m: Manifest, contracts: dict[str, Contract], lf: pl.LazyFrame, s: Settings,
          passes: RowPasses | PendingPasses | None = None) -> dict[str, Any]:
    """Write card.md, card.html, datasheet.json and the plots; returns their names.

    ``passes``: the row passes, run or running (:func:`start_row_passes`);
    run here if not given.
    """
    from datalab.policy import firm_names

    used = [contracts[cid] for cid in m.contract_ids if cid in contracts]
    masks = firm_names.masks_for(used, s)
    kind = kind_of_manifest(m)
    if not kind.datasheet_facts:
        firm_names.save(vdir, masks)
        return _write_card_only(vdir, m, contracts, masks, kind)
    # matplotlib's import (0.2-0.8 s) runs on a thread while the row passes
    # finish (Polars, GIL released) and facts are put together; plots()
    # waits for it through the import lock.
    importer = threading.Thread(target=_import_pyplot, name="datalab-pyplot-import", daemon=True)
    importer.start()
    passes = passes.result() if isinstance(passes, PendingPasses) else (passes or row_passes(m.schema, tuple(flag_words(m)), lf))
    f = facts(m, contracts, lf, s, passes)
    tenant_of = {_firm_label(c, s): c.tenant for c in used}  # the facts name firms by their label already
    masks = firm_names.masks_for(used, s, ((tenant_of.get(r["firm"], ""), str(r["entity"])) for r in f["machines"]))
    firm_names.save(vdir, masks)
    (vdir / "datasheet.json").write_text(mask(json.dumps(f, indent=2, default=str), masks))
    importer.join()
    plots(vdir, m, f, lf, s, passes)
    md = mask(render_markdown(m, f, contracts), masks)
    (vdir / "card.md").write_text(md)
    (vdir / "card.html").write_text(render_html(md, f"{m.title} {m.version}"))
    return {"files": list(SHIPPED), "warnings": len(f["warnings"]), "gaps": len(f["gaps"])}


def _write_card_only(vdir: Path, m: Manifest, contracts: dict[str, Contract], masks: dict[str, str],
                     kind: Kind) -> dict[str, Any]:
    """The card of a dataset whose kind has no facts over rows (CAD: one row per part or file, no sensors or time axis).

    The time-series facts (coverage over time, per-sensor distributions,
    operating conditions) do not exist for geometry; the CAD card lists the
    parts, their checks, thumbnails and same-part links instead
    (``datalab.cad.publish.card_section``), with the same policy words and
    the same firm masking as the sensor datasheet.
    """
    from datalab.store.card import render_card

    f = {"kind": kind.name, "rows": m.rows, "rows_per_contract": m.rows_per_contract,
         "policy": m.policy, "validation": m.validation, "warnings": [], "gaps": []}
    (vdir / "datasheet.json").write_text(mask(json.dumps(f, indent=2, default=str), masks))
    md = mask(render_card(m, contracts, kind.card_section(m)), masks)
    (vdir / "card.md").write_text(md)
    (vdir / "card.html").write_text(render_html(md, f"{m.title} {m.version}"))
    return {"files": ["card.md", "card.html", "datasheet.json"], "warnings": 0, "gaps": 0}


def ship(dataset: str, version: str, out: Path, s: Settings) -> list[Path]:
    """Copy the card files of a version from the lab's store into a pull directory."""
    from datalab.store.storage import store, version_key

    st = store(s)
    copied = []
    for name in SHIPPED:
        try:
            (out / name).write_bytes(st.read_bytes(version_key(dataset, version, name)))
        except FileNotFoundError:
            continue
        copied.append(out / name)
    return copied
