"""Ingest and curation of an accepted CAD delivery: the curated table of one row per file.

``ingest`` makes sure every stored file of the delivery has its parse facts
(the push check cached them; a delivery landed before, or a cache that was
cleared, is parsed again in the sandbox). ``curate_delivery`` turns them
into rows in the canonical unit (``features``), links duplicates and the
same part across formats and deliveries (``signature``) against every row
curated before for the contract, copies each thumbnail next to the table
(content-addressed) and writes ``curated/<tenant>/<product>/<delivery>.parquet``.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from datalab.cad import check, features, signature
from datalab.config import Settings, safe_segment, settings
from datalab.contracts.contract import Contract
from datalab.errors import DatalabError
from datalab.intake import receipts
from datalab.store import state
from datalab.store.storage import store


def curated_path(contract: Contract, delivery_id: str, s: Settings) -> Path:
    return s.curated / contract.tenant / contract.product / f"{safe_segment(delivery_id, 'delivery id')}.parquet"


def thumbs_dir(contract: Contract, s: Settings) -> Path:
    return s.curated / contract.tenant / contract.product / "thumbs"


def ingest(contract: Contract, delivery_id: str, s: Settings | None = None) -> dict[str, Any]:
    """Parse facts for every file of an accepted delivery (from the push's cache, else parsed again)."""
    s = s or settings()
    t0 = time.perf_counter()
    rec = receipts.get_receipt(delivery_id, tenant=contract.tenant, s=s)
    if rec.status != "accepted":
        raise DatalabError(f"delivery {delivery_id} was {rec.status}; only accepted deliveries are ingested")
    files = receipts.stored_files(delivery_id, s)
    hits = sum(1 for _, _, sha in files if check.cached(contract, sha, s) is not None)
    misses = [(p, sha) for _n, p, sha in files if check.cached(contract, sha, s) is None]
    with store(s).fetched(*(p for p, _sha in misses)) as here:  # only the files to parse again are fetched
        local = {sha: p for (_p, sha), p in zip(misses, here, strict=True)}
        outcomes = check.parse_files(contract, [(n, local.get(sha, p), sha) for n, p, sha in files], s)
    bad = [o.reason for o in outcomes.values() if not o.ok]
    if bad:
        raise DatalabError(f"delivery {delivery_id}: {'; '.join(str(b) for b in bad[:5])}")
    stats = {"files": len(files), "cached": hits, "parsed": len(files) - hits, "bytes_in": rec.bytes,
             "seconds": round(time.perf_counter() - t0, 3)}
    state.set_stage(delivery_id, "raw", s=s, stats={"raw": stats})
    return stats


def earlier_rows(contract: Contract, delivery_id: str, s: Settings) -> list[dict[str, Any]]:
    """Rows of the contract's other curated deliveries (for duplicates and same-part links)."""
    rows: list[dict[str, Any]] = []
    st = store(s)
    for d in state.accepted(contract.id, s):
        if d["id"] == delivery_id or not d["curated_path"] or d["stage"] not in ("curated", "validated"):
            continue
        if not st.exists(d["curated_path"]):
            continue
        with st.fetched(d["curated_path"]) as (p,):
            rows += pl.read_parquet(p, columns=["delivery_id", "file_name", "sha256", "format", "bbox_x_mm", "bbox_y_mm",
                                                "bbox_z_mm", "area_mm2", "volume_mm3", "curve_length_mm"]).to_dicts()
    return rows


@dataclass(frozen=True)
class CadCurationStats:
    """The counts of one curated CAD delivery; ``to_dict()`` is what the catalog stores under ``stats.curated``.

    Typed like the time series' ``CurationStats`` (both are the
    ``datalab.kinds.CurationRecord`` a kind's curation returns), so the asset
    reads fields, not keys; the stored dict keeps its keys and their order.
    """

    rows_in: int  # files delivered
    rows_out: int  # rows of the curated table: one per file
    exact_duplicates_removed: int  # none: a repeated file is linked (duplicate_of), not removed
    values_converted: int  # files whose lengths were scaled to the canonical unit
    formats: dict[str, int]  # files per format (step, stl, dxf)
    flags: dict[str, int]  # files per flag word (the table's one flags column)
    duplicates: int
    same_part_links: int
    volume_mm3_total: float
    engine: dict[str, str]
    bytes_out: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def curate_delivery(contract: Contract, delivery_id: str, s: Settings | None = None) -> CadCurationStats:
    """Curate one ingested CAD delivery into one row per file; writes the curated Parquet and returns its counts."""
    s = s or settings()
    t0 = time.perf_counter()
    files = receipts.stored_files(delivery_id, s)
    pol = contract.policy
    rows = []
    st = store(s)
    tdir = thumbs_dir(contract, s)
    for name, _path, sha in files:
        parsed = check.cached(contract, sha, s)
        if parsed is None:
            raise DatalabError(f"delivery {delivery_id}: {name} has no parse result; run the raw stage first")
        thumb = None
        _, png = check.cache_paths(contract, sha, s)
        if st.exists(png):
            dst = tdir / f"{sha}.png"
            if not st.exists(dst):
                with st.fetched(png) as (src,):
                    tdir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                st.save(dst)
            thumb = f"thumbs/{sha}.png"
        rows.append(features.row(parsed, contract.section, delivery_id=delivery_id, file_name=name, sha256=sha,
                                 classification=pol.classification, export_control=pol.export_control, thumbnail=thumb))
    signature.link(rows, earlier_rows(contract, delivery_id, s))
    df = features.frame(rows)
    out = curated_path(contract, delivery_id, s)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    df.write_parquet(tmp, compression="zstd")
    tmp.replace(out)
    flag_counts = Counter(f for r in rows for f in (r["flags"] or "").split(",") if f)
    stats = CadCurationStats(
        rows_in=len(files), rows_out=len(rows), exact_duplicates_removed=0,
        values_converted=sum(1 for r in rows if r["unit_scale"] != 1.0),
        formats=dict(Counter(r["format"] for r in rows)),
        flags=dict(flag_counts),
        duplicates=sum(1 for r in rows if r["duplicate_of"]),
        same_part_links=sum(1 for r in rows if r["same_part_as"]),
        volume_mm3_total=sum(r["volume_mm3"] or 0.0 for r in rows),
        engine={"engine": "cad-sandbox", "device": "cpu"},
        bytes_out=out.stat().st_size, seconds=round(time.perf_counter() - t0, 3),
    )
    st.save(out, keep=True)  # the suite check reads it next; the asset drops this machine's copy
    state.set_stage(delivery_id, "curated", s=s, curated_path=st.key(out), stats={"curated": stats.to_dict()})
    return stats
