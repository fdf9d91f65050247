"""Asset factories for time-series contracts: raw and curated, one partition per delivery.

Each contract yields ``<tenant>/<product>/raw`` and ``<tenant>/<product>/curated``
on a dynamic partitions definition named after the contract; a sensor adds a
partition for every accepted delivery. The curated asset carries the
contract's Great Expectations suite as a blocking check (``checks/``).
Work is done by the core (``datalab``); the assets add partitions and the
metadata a data engineer reads in the UI.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from assets.common import each_delivery, key_prefix, partitions_for
from assets.common import md_table as _md_table
from assets.registry import asset_factory
from checks.validation import suite_check_spec, suite_report, validated_deliveries
from datalab.contracts.contract import Contract
from datalab.engine import Engine, MemoryWatch
from datalab.quality import validate
from datalab.quality.validate import ValidationReport
from datalab.store.storage import Store
from datalab.timeseries import curate, ingest
from datalab.timeseries.stats import CurationStats
from pipelines.resources import LabResource


def materialize_raw(contract: Contract, context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
    """The raw asset's body: parse each delivery of the run with the contract's types into the long table.

    A module-level function, not the asset's closure, so that it can be
    read and called without building the Dagster definitions.
    """
    s = lab.settings()

    def one(d: str) -> dict[str, Any]:
        with MemoryWatch() as mw:
            st = ingest.ingest_raw(contract, d, s)
        return raw_metadata(d, st, ingest.raw_path(contract, d, s), mw.peak_mb, lab.files(s))

    return each_delivery(context, one)


def raw_metadata(d: str, st: dict[str, Any], path: Path, peak_mb: float, files: Store) -> dict[str, Any]:
    """What the UI shows of a parsed delivery: its counts, timings, memory, where it is and its first rows."""
    return {
        "delivery_id": d,
        "files": st["files"],
        "records": st["records"],
        "rows": dg.MetadataValue.int(st["rows"]),
        "bytes_in": dg.MetadataValue.int(st["bytes_in"]),
        "bytes_out": dg.MetadataValue.int(st["bytes_out"]),
        "seconds": dg.MetadataValue.float(st["seconds"]),
        "parsed_at": st["parsed_at"],
        "peak_rss_mb": dg.MetadataValue.float(round(peak_mb, 1)),
        **_where(path, files),
    }


PREVIEW_ROWS = 10


def _where(path: Path, files: Store, head: pl.DataFrame | None = None) -> dict[str, Any]:
    """The file's location (its path, or its object's URI) and its first rows: ``head``, or read from its first row group.

    A curated delivery's first rows are handed over from the table just
    written: reading them back decoded the first page of every column, 2-4 ms
    of a small delivery's step.
    """
    loc = str(path) if files.is_local else files.uri(files.key(path))
    first = head if head is not None else pl.from_arrow(files.parquet_head(path, PREVIEW_ROWS))
    return {"path": dg.MetadataValue.path(loc), "preview": _md_table(first)}


def materialize_curated(contract: Contract, context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
    """The curated asset's body: curate each delivery of the run, then run the contract's suite as the blocking check."""
    s = lab.settings()
    engine = Engine(s.engine)
    validate.import_in_background(contract)  # if the suite check below needs GX, import it while the plan runs
    files = lab.files(s)

    def one(d: str) -> tuple[dict[str, Any], ValidationReport]:
        path = curate.curated_path(contract, d, s)
        written: list[pl.DataFrame] = []
        parts = validate.PartSuite.start(contract)
        try:
            with MemoryWatch() as mw:
                st = curate.curate_delivery(contract, d, engine, s, on_written=written.append,
                                            on_part=parts.add if parts is not None else None)
                # A delivery curated in one part is checked in memory (no read of the file it was
                # just written to), and one curated in parts part by part while each was in memory;
                # one the suite would validate in chunks, or could not take that way, from its file.
                in_memory = bool(written) and written[0].height <= s.validate_chunk_rows
                report = suite_report(contract, d, written[0] if in_memory else path, st.to_dict(), parts)
                head = written[0].head(PREVIEW_ROWS) if written else None
                written.clear()
            return curated_metadata(d, st, path, mw.peak_mb, files, head), report
        finally:
            files.evict(path)  # with an object store: this worker's copy (the store holds the file)

    return validated_deliveries(context, s, one)


def curated_metadata(d: str, st: CurationStats, path: Path, peak_mb: float, files: Store,
                     head: pl.DataFrame | None = None) -> dict[str, Any]:
    """What the UI shows of a curated delivery: the curation's statistics, how it ran, per-sensor table, first rows (``head``, if known)."""
    sensors = pl.DataFrame([{"sensor": k, **{x: v[x] for x in ("unit", "n", "min", "max", "mean", "out_of_range", "outliers")}}
                            for k, v in st.sensors.items()])
    eng = st.engine
    return {
        "delivery_id": d,
        "rows_in": dg.MetadataValue.int(st.rows_in),
        "rows_out": dg.MetadataValue.int(st.rows_out),
        "exact_duplicates_removed": dg.MetadataValue.int(st.exact_duplicates_removed),
        "values_converted": dg.MetadataValue.int(st.values_converted),
        # issue 23: duplicate keys within the delivery, repeats of earlier deliveries, corrections
        **({"duplicate_share": dg.MetadataValue.float(float(st.duplicate_share))} if st.duplicate_share is not None else {}),
        "repeats_excluded": dg.MetadataValue.int(st.repeats_excluded),
        "correction": st.correction,
        "replaces": dg.MetadataValue.json(st.replaces),
        "warnings": dg.MetadataValue.md("\n".join(f"- **{w}**" for w in st.warnings) or "none"),
        **{f: dg.MetadataValue.int(n) for f, n in st.flags.items()},
        "constant_sensors": ", ".join(st.constant_sensors) or "none",
        "pseudonymised_columns": ", ".join(st.pseudonymised_columns) or "none",
        "engine": eng["engine"],
        "device": eng["device"],
        "engine_fallback": eng["fallback"] or "none",
        "curation_seconds": dg.MetadataValue.float(st.seconds),
        "series_buckets": dg.MetadataValue.int(st.series_buckets),
        "long_series": dg.MetadataValue.int(st.long_series["series"]),
        "long_series_chunks": dg.MetadataValue.int(st.long_series["chunks"]),
        "curation_peak_rss_mb": dg.MetadataValue.float(eng["peak_rss_mb"]),
        "peak_rss_mb": dg.MetadataValue.float(round(peak_mb, 1)),
        "bytes": dg.MetadataValue.int(st.bytes_out),
        "sensors": _md_table(sensors),
        **_where(path, files, head),
    }


@asset_factory("timeseries")
def build_timeseries_assets(contract: Contract) -> list[dg.AssetsDefinition]:
    """The contract's raw and curated assets; their bodies are ``materialize_raw`` and ``materialize_curated``."""
    parts = partitions_for(contract)
    prefix = key_prefix(contract)
    raw_key = dg.AssetKey([*prefix, "raw"])
    tags = {"tenant": contract.tenant, "kind": contract.kind}

    @dg.asset(
        key=raw_key,
        partitions_def=parts,
        group_name=contract.slug,
        description=f"{contract.name}: each delivery parsed with the contract's types into the long table (Parquet).",
        metadata={"contract": contract.id, "contract_version": contract.version},
        tags=tags,
        kinds={"polars", "parquet"},
    )
    def raw(context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
        return materialize_raw(contract, context, lab)

    @dg.asset(
        key=dg.AssetKey([*prefix, "curated"]),
        partitions_def=parts,
        deps=[raw_key],
        group_name=contract.slug,
        description=f"{contract.name}: curated (UTC, de-duplicated, SI units, flags) and validated against the contract's suite.",
        check_specs=[suite_check_spec(contract, dg.AssetKey([*prefix, "curated"]))],
        metadata={"contract": contract.id},
        tags=tags,
        kinds={"polars", "parquet", "great_expectations"},
    )
    def curated(context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
        return materialize_curated(contract, context, lab)

    return [raw, curated]
