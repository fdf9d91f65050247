"""Publishing and pulling CAD datasets: the Iceberg table of features and the files, versioned together.

``datalab.store.publish`` writes the table (one row per file, streamed to Iceberg
like every dataset) and calls :func:`attach_files`, which puts every
original file and thumbnail of the included deliveries into the dataset's
content-addressed object store (``versions/<name>/objects/<sha[:2]>/<sha>``,
checksummed while copying, shared by all versions, never rewritten) and
lists them in the version's manifest with their sha256. The table rows and
the file list come from the same curated deliveries, so a version's table
and files always agree. ``datalab.store.pull`` calls :func:`pull_files`, which
copies them next to the Parquet files, verifying every checksum.

The sovereignty tags (classification, export_control) are written on the
manifest's ``cad`` section, the Iceberg table properties (by publish) and
every row (``features``); ``datalab.policy.clearance`` enforces them on pull.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from datalab.config import Settings, safe_segment
from datalab.intake import receipts
from datalab.store import state
from datalab.store.manifest import Manifest
from datalab.store.manifests import copy_verified, sha256_file
from datalab.store.markdown import cell
from datalab.store.storage import Fetched, Store, store


def objects_dir(dataset: str, s: Settings) -> Path:
    return s.versions / safe_segment(dataset, "dataset") / "objects"


def _put(src: Path, dst: Path, sha: str, st: Store) -> None:
    """Copy ``src`` into the version objects under its sha256, verifying it, and save it to the lab's store;
    existing objects are kept, read-only."""
    if st.exists(dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    copy_verified(src, dst, sha)
    os.chmod(dst, 0o444)
    st.save(dst)


def attach_files(name: str, included: list[dict[str, Any]], contracts: dict[str, Any],
                 policy: Any, s: Settings) -> dict[str, Any]:
    """Store the included deliveries' files and thumbnails of dataset ``name``; the manifest's ``cad`` section listing them."""
    objs = objects_dir(name, s)
    st = store(s)
    files, thumbs = [], {}
    with st.session() as here:  # the landed files, curated tables and thumbnails, fetched once each
        for d in included:
            c = contracts[d["contract"]]
            if c.kind == "cad":
                files += _delivery_objects(d, c, objs, thumbs, here, s)
    files.sort(key=lambda f: (f["delivery_id"], f["name"]))
    keep = ("rows_out", "values_converted", "duplicates", "same_part_links", "flags", "formats")
    curation = {d["id"]: {k: ((state.get(d["id"], s) or {}).get("stats", {}).get("curated", {})).get(k) for k in keep}
                for d in included if contracts[d["contract"]].kind == "cad"}
    return {
        "curation": curation,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
        "classification": policy.classification,
        "export_control": policy.export_control,
    }


def _delivery_objects(d: dict[str, Any], c: Any, objs: Path, thumbs: dict[str, str], here: Fetched,
                      s: Settings) -> list[dict[str, Any]]:
    """One CAD delivery's files and thumbnails put into the version objects; their manifest entries."""
    st = here.store
    stored = {sha: key for _n, key, sha in receipts.stored_files(d["id"], s)}
    rows = pl.read_parquet(here.path(d["curated_path"]), columns=["file_name", "sha256", "format", "bytes", "thumbnail",
                                                                  "same_part_as", "duplicate_of", "flags"])
    cur_dir = d["curated_path"].rsplit("/", 1)[0]
    out = []
    for r in rows.to_dicts():
        sha = r["sha256"]
        dst = objs / sha[:2] / sha
        if not st.exists(dst):
            _put(here.path(stored[sha]), dst, sha, st)
        entry = {"name": r["file_name"], "delivery_id": d["id"], "contract": c.id, "sha256": sha, "bytes": r["bytes"],
                 "format": r["format"], "path": st.key(dst), "thumbnail": None}
        if r["thumbnail"]:
            src = f"{cur_dir}/{r['thumbnail']}"
            tsha = thumbs.get(src) or sha256_file(here.path(src))
            thumbs[src] = tsha
            tdst = objs / tsha[:2] / tsha
            if not st.exists(tdst):
                _put(here.path(src), tdst, tsha, st)
            entry["thumbnail"] = {"sha256": tsha, "path": st.key(tdst)}
        entry.update(flags=r["flags"], same_part_as=r["same_part_as"], duplicate_of=r["duplicate_of"])
        out.append(entry)
    return out


def pulled_name(entry: dict[str, Any]) -> str:
    """Where a file lands in a pull: ``files/<sha[:12]>-<original name>`` (names may repeat across deliveries)."""
    return f"{entry['sha256'][:12]}-{receipts.safe_name(entry['name'])}"


def pull_files(manifest: Manifest, out: Path, s: Settings, copy: Any) -> list[Path]:
    """Copy a version's CAD files and thumbnails to ``out/files`` with ``copy(key, dst, sha)`` (verifying; the
    key is the file's in the lab's store)."""
    got = []
    fdir = out / "files"
    (fdir / "thumbs").mkdir(parents=True, exist_ok=True)
    for f in manifest.sections["cad"]["files"]:
        dst = fdir / pulled_name(f)
        copy(f["path"], dst, f["sha256"])
        got.append(dst)
        if f["thumbnail"]:
            tdst = fdir / "thumbs" / f"{f['sha256']}.png"
            copy(f["thumbnail"]["path"], tdst, f["thumbnail"]["sha256"])
            got.append(tdst)
    return got


def card_section(m: Manifest) -> list[str]:
    """The CAD part of the dataset card: preparation, files with thumbnails, same parts."""
    cad = m.sections["cad"]
    lines = ["", "## Preparation (CAD)",
             "Every file was identified by its content and parsed in a sandboxed process (time and memory "
             "limits); lengths are in mm (STEP through OpenCASCADE, STL and unitless DXF in the contract's "
             "declared unit, flagged `unit_from_contract`). Defects are kept and flagged, never repaired.", "",
             "| delivery | files | converted to mm | duplicates | same-part links | flags |", "|---|---|---|---|---|---|"]
    for d, st in cad["curation"].items():
        flags = ", ".join(f"{k}: {v}" for k, v in sorted((st.get("flags") or {}).items())) or "none"
        lines.append(f"| {d} | {st.get('rows_out') or 0} | {st.get('values_converted') or 0} | "
                     f"{st.get('duplicates') or 0} | {st.get('same_part_links') or 0} | {flags} |")
    lines += ["", f"## Files ({len(cad['files'])}, {cad['bytes']:,} bytes)",
              f"Classification **{cad['classification']}**; export-controlled: **{'yes' if cad['export_control'] else 'no'}**. "
              "A pull puts each file in `files/` and its thumbnail in `files/thumbs/`.", "",
              "| thumbnail | file | format | sha256 | same part as | flags |", "|---|---|---|---|---|---|"]
    for f in cad["files"]:
        img = f"![{f['name']}](files/thumbs/{f['sha256']}.png)" if f["thumbnail"] else ""
        lines.append(f"| {img} | {cell(f['name'])} | {cell(f['format'])} | `{f['sha256'][:16]}` | {f.get('same_part_as') or ''} | "
                     f"{f.get('flags') or ''} |")
    return lines
