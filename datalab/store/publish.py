"""Publishing: immutable, semantically versioned Iceberg snapshots with a manifest.

Each publish that changes the data writes an Iceberg snapshot (pyiceberg SQL
catalog in the lab's catalog database, warehouse in the lab's store: under
``$DATALAB_HOME`` or in an object store),
tags it ``v<version>`` and writes a manifest and a card beside it. The
version number comes from the schema diff: patch for new data, minor for an
added column, major for a removed or retyped column. A major change starts a
new table (``<name>__v<major>``) because Iceberg cannot retype columns, so
every older version keeps pointing at its own, untouched data files; that is
what makes an old version pullable bit for bit a year later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts import datasets
from datalab.errors import DatalabError
from datalab.kinds import kind_of
from datalab.policy import firm_names, sovereignty
from datalab.store import catalog as cat
from datalab.store import row_facts, state, table_stream
from datalab.store.manifest import DataFile, Excluded, Lineage, LineageContract, Manifest, SiteRef
from datalab.store.manifests import list_versions, read_manifest, sha256_file
from datalab.store.storage import Fetched, Store, iceberg_properties, store

NAMESPACE = "datalab"
log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    dataset: str
    version: str | None
    created: bool
    message: str
    manifest: Manifest | None = None


def preload() -> None:
    """Import what every publish imports: pyiceberg's SQL catalog and its Arrow IO (which imports pyarrow's
    dataset and compute modules), and matplotlib for the card's plots; 0.9 s of one core in a fresh process.

    For long-lived processes, once (``datalab.warm``); a publish imports them anyway.
    """
    import pyiceberg.catalog.sql
    import pyiceberg.io.pyarrow  # noqa: F401

    from datalab.store import datasheet

    datasheet.preload()


def iceberg_catalog(s: Settings) -> Any:
    """pyiceberg's SQL catalog in the lab's catalog database, its warehouse in the lab's store
    (``warehouse/`` under home, or in the object store with the same endpoint and keys)."""
    from pyiceberg.catalog.sql import SqlCatalog

    st = store(s)
    if st.is_local:
        s.warehouse.mkdir(parents=True, exist_ok=True)
    c = SqlCatalog("datalab", uri=s.catalog_url, warehouse=st.uri("warehouse"),
                   **({} if st.is_local else iceberg_properties()))
    c.create_namespace_if_not_exists(NAMESPACE)
    return c


def bump(prev: str | None, old: dict[str, str] | None, new: dict[str, str]) -> tuple[str, str]:
    """Next version and why: major (removed/retyped), minor (added), patch (data)."""
    if prev is None or old is None:
        return "1.0.0", "first version"
    ma, mi, pa = (int(x) for x in prev.split("."))
    removed = sorted(set(old) - set(new))
    retyped = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    added = sorted(set(new) - set(old))
    if removed or retyped:
        return f"{ma + 1}.0.0", f"major: removed {removed} retyped {retyped}"
    if added:
        return f"{ma}.{mi + 1}.0", f"minor: added {added}"
    return f"{ma}.{mi}.{pa + 1}", "patch: new data"


def latest(dataset: str, s: Settings) -> dict[str, Any] | None:
    versions = list_versions(dataset, s)
    return versions[-1] if versions else None


def correction_parts(included: list[dict[str, Any]], here: Fetched) -> dict[str, tuple[Path, ...]]:
    """Per included delivery, the curated files of the later included corrections that replace some of its readings.

    A correction (``datalab push --correction``) records at curation, per
    earlier delivery of its contract, how many of its readings replace ones
    there (``replaces``); those earlier rows are left out of the version.
    """
    ids = {d["id"] for d in included}
    out: dict[str, list[Path]] = {}
    for d in included:
        cur = _curated_stats(d)
        if not cur.get("correction"):
            continue
        for earlier, n in (cur.get("replaces") or {}).items():
            if n and earlier in ids and earlier != d["id"]:
                out.setdefault(earlier, []).append(here.path(d["curated_path"]))
    return {k: tuple(v) for k, v in out.items()}


def _part(d: dict[str, Any], contracts: dict[str, Any], replaced_by: dict[str, tuple[Path, ...]], here: Fetched,
          mask: firm_names.RowMask | None = None) -> table_stream.Part:
    """One included delivery as a part of the version; ``mask``: what its rows hold instead of its firm's names.

    A masked delivery whose curation wrote its published form under this very
    mask (``curate.PublishedForm``: same fingerprint) is that file, whose rows
    already hold the pseudonyms: it is copied, not rewritten (table_stream).
    A correction that replaces some of its rows still rewrites it.
    """
    replaced = replaced_by.get(d["id"], ())
    if mask is None:
        return table_stream.Part(here.path(d["curated_path"]), d["contract"], contracts[d["contract"]].tenant,
                                 d["contract_version"], d["id"], replaced)
    form = _published_form(d)
    if form and not replaced and here.store.exists(form["key"]) and form.get("mask_sha256") == firm_names.mask_digest(mask, d["contract_version"]):
        return table_stream.Part(here.path(form["key"]), mask.contract_id, mask.tenant, d["contract_version"], d["id"])
    return table_stream.Part(here.path(d["curated_path"]), mask.contract_id, mask.tenant,
                             d["contract_version"], d["id"], replaced, mask.entities)


def _curated_stats(d: dict[str, Any]) -> dict[str, Any]:
    """The curation statistics of an included delivery (its state's ``stats.curated``; JSON text or parsed)."""
    st = json.loads(d["stats"]) if isinstance(d.get("stats"), str) else (d.get("stats") or {})
    return st.get("curated") or {}


def _published_form(d: dict[str, Any]) -> dict[str, Any] | None:
    """The published form curation recorded for delivery ``d`` (a firm that withholds its name), if any."""
    return _curated_stats(d).get("published_form")


def row_masks(included: list[dict[str, Any]], contracts: dict[str, Any], here: Fetched,
              s: Settings) -> dict[str, firm_names.RowMask]:
    """Per included delivery of a firm that withholds its name, the pseudonyms its published rows carry.

    The rule is the card's (``datalab.policy.firm_names``): such a firm's rows hold
    its pseudonym in ``tenant``, its contract id with the pseudonym in
    ``contract_id`` and ``machine-<HMAC>`` for its machine ids in ``entity``.
    The machine ids are those curation recorded with the delivery's published
    form, else read from the curated file (one column, streamed: 0.5 s of a
    10 M-row publish).
    """
    out: dict[str, firm_names.RowMask] = {}
    for d in included:
        c = contracts[d["contract"]]
        if not firm_names.masked(c):
            continue
        form = _published_form(d)
        entities = form["machines"] if form and "machines" in form else _entities(here.path(d["curated_path"]))
        mask = firm_names.row_mask(c, entities, s)
        if mask is not None:
            out[d["id"]] = mask
    return out


def _entities(path: Path) -> list[str]:
    """The machine ids of a curated file (its ``entity`` column, streamed; none where it holds no text ids)."""
    if pl.read_parquet_schema(path).get("entity") != pl.String:
        return []
    return pl.scan_parquet(path).select(pl.col("entity").unique()).collect(engine="streaming")["entity"].drop_nulls().to_list()


def stored_facts(vp: VersionPlan, flags: tuple[str, ...]) -> row_facts.StoredFacts | None:
    """The card's counts that curation stored with each delivery (``datalab.store.row_facts``), if they hold for this version.

    A delivery some of whose rows a later correction replaces holds fewer
    rows in the version than it was counted with: the card is then counted
    from the rows, as for a delivery curated before facts were stored.
    """
    deliveries: list[tuple[dict[str, str], dict[str, Any] | None]] = []
    for d in vp.included:
        if vp.replaced_by.get(d["id"]):
            log.info("dataset %s: the card is counted from the rows (rows of %s are replaced by a correction)", vp.name, d["id"])
            return None
        c = vp.contracts[d["contract"]]
        deliveries.append(({"tenant": c.tenant, "contract_id": c.id}, _curated_stats(d).get("card_facts")))
    stored, why = row_facts.stored_for(deliveries, vp.schema, vp.types, flags)
    if why is not None:
        log.info("dataset %s: the card is counted from the rows (%s)", vp.name, why)
    return stored


def _rows_pseudonymised(m: Manifest | None) -> set[str]:
    """The contracts whose rows version ``m`` holds under pseudonyms (none before rows were masked)."""
    return set(((m.sovereignty if m else {}).get("rows_pseudonymised") or {}).get("contracts") or [])


def publish(name: str, actor: str = "cli", s: Settings | None = None) -> PublishResult:
    """Publish a new version of dataset ``name`` if its inputs changed.

    One publish of a dataset at a time (datalab.store.locks): two racing publishes
    give one version each for what each saw new, never two claims on one number.
    """
    from datalab.store.locks import publish_lock

    s = s or settings()
    with publish_lock(name, s):
        return _publish(name, actor, s)


@dataclass
class VersionPlan:
    """What a publish found to put in the next version: its inputs, rows and policy, before anything is written."""

    name: str
    spec: datasets.DatasetSpec
    sites: dict[str, Any]
    contracts: dict[str, Any]
    plan: sovereignty.PublishPlan
    included: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    replaced_by: dict[str, tuple[Path, ...]]
    rows: pl.LazyFrame
    personal: list[str]
    schema: dict[str, str]  # column -> type as text (the manifest's, the content key's)
    types: dict[str, pl.DataType]  # the same types, as Polars types (resolved once: a footer read per delivery)
    prev: dict[str, Any] | None
    prev_manifest: Manifest | None
    delivery_ids: list[str]
    masked_rows: list[str]
    content_key: str
    kinds: list[Any]
    here: Fetched  # the curated files on this machine (fetched from an object store for this publish)

    @property
    def policy(self) -> Any:
        return self.plan.policy


@dataclass(frozen=True)
class WrittenTable:
    """The Iceberg snapshot a publish committed: its table, snapshot and data files."""

    ident: str
    snapshot_id: int
    files: tuple[DataFile, ...]


def plan_version(name: str, actor: str, s: Settings, here: Fetched) -> VersionPlan:
    """Inputs, exclusions and the effective policy of the next version of ``name`` (refusals audited), and its content key.

    ``here``: where the curated files are read on this machine (``store(s).session()``).
    """
    contracts = contracts_mod.load_all(s.contracts_dir)
    spec = datasets.load_spec(s.contracts_dir, name, contracts)
    sites = datasets.load_sites(s.contracts_dir)
    catalog = cat.Catalog(s.catalog_url)
    plan = sovereignty.gate(lambda: sovereignty.plan_publish(spec, contracts, sites, s), catalog, actor, name, spec.site)
    included, excluded = [], []
    for cid in plan.inputs:
        for d in state.accepted(cid, s):
            if d["stage"] == "validated" and d["validation_ok"]:
                included.append({"contract": cid, **d})
            else:
                why = "validation failed" if d["stage"] == "failed" or d["validation_ok"] is False else f"not yet processed (stage {d['stage'] or 'landed'})"
                excluded.append({"delivery_id": d["id"], "contract": cid, "reason": why})
    if not included:
        raise DatalabError(f"dataset {name}: no validated delivery to publish yet ({len(excluded)} excluded)")
    replaced_by = correction_parts(included, here)
    frames = []
    for d in included:
        c = contracts[d["contract"]]
        frames.append(_part(d, contracts, replaced_by, here).rows().with_columns(
            tenant=pl.lit(c.tenant), contract_id=pl.lit(c.id), contract_version=pl.lit(d["contract_version"])))
    # Align attribute columns across inputs; order columns deterministically.
    lf = pl.concat(frames, how="diagonal_relaxed")
    lf = lf.drop([c for c in spec.drop_columns if c in lf.collect_schema()])
    personal = sovereignty.gate(lambda: sovereignty.check_personal(lf, plan.inputs, contracts), catalog, actor, name, spec.site)
    types = dict(lf.collect_schema())
    new_schema = {k: str(v) for k, v in types.items()}
    prev = latest(name, s)
    prev_manifest = read_manifest(name, prev["version"], s) if prev else None
    delivery_ids = sorted(d["id"] for d in included)
    # Firms whose rows are published under their pseudonym (datalab.policy.firm_names); part of the
    # content only when there are any, so a version without them keeps its key.
    masked_rows = sorted({d["contract"] for d in included if firm_names.masked(contracts[d["contract"]])})
    key_parts: list[Any] = [delivery_ids, new_schema, plan.policy.to_dict(), spec.site] + ([{"rows_pseudonymised": masked_rows}] if masked_rows else [])
    content_key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()
    kinds = list({k.name: k for k in (kind_of(contracts[c]) for c in spec.inputs)}.values())
    return VersionPlan(name, spec, sites, contracts, plan, included, excluded, replaced_by, lf, personal, new_schema, types,
                       prev, prev_manifest, delivery_ids, masked_rows, content_key, kinds, here)


def write_table(vp: VersionPlan, version: str, why: str, s: Settings) -> WrittenTable:
    """Write the version's data files and commit them as one Iceberg snapshot tagged ``v<version>``.

    A patch on the same table appends the new deliveries' files; anything
    else (a new major, a correction, a firm whose name is now masked or now
    shown) rewrites the table, so every row of the version is as its policy says.
    """
    name, prev, prev_manifest, contracts, policy = vp.name, vp.prev, vp.prev_manifest, vp.contracts, vp.policy
    major = version.split(".")[0]
    ident = f"{NAMESPACE}.{name.replace('-', '_')}__v{major}"
    ice = iceberg_catalog(s)
    prev_ids = set(prev_manifest.lineage.deliveries) if prev_manifest else set()
    same_table = prev_manifest is not None and prev_manifest.table == ident
    # A correction changes published files; so does a firm that now withholds its name, or now gives it.
    append_only = same_table and why.startswith("patch") and prev_ids <= set(vp.delivery_ids) \
        and not any(vp.replaced_by.get(i) for i in prev_ids) \
        and _rows_pseudonymised(prev_manifest) == set(vp.masked_rows) & set(prev_manifest.rows_per_contract if prev_manifest else {})
    if append_only and prev is not None:
        # A publish killed after its Iceberg commit but before its catalog row
        # leaves a snapshot no version names; appending on top of it would
        # count those rows twice, so rewrite the table instead.
        current = ice.load_table(ident).current_snapshot()
        append_only = current is not None and current.snapshot_id == prev["snapshot_id"]
    # Data files written by Polars, then registered in one transaction (one
    # commit): see table_stream.
    new_ids = [d for d in vp.delivery_ids if d not in prev_ids]
    masks = row_masks([d for d in vp.included if not append_only or d["id"] in new_ids], contracts, vp.here, s)  # the parts written
    parts = [_part(d, contracts, vp.replaced_by, vp.here, masks.get(d["id"])) for d in vp.included]
    arrow_schema = table_stream.arrow_schema(vp.types)
    if not ice.table_exists(ident):
        tbl = ice.create_table(ident, schema=arrow_schema)
    else:
        tbl = ice.load_table(ident)
        if not append_only:
            with tbl.update_schema() as upd:
                upd.union_by_name(arrow_schema)
            tbl = ice.load_table(ident)
    st = store(s)
    data_dir = st.local(f"{st.key_of_uri(tbl.location())}/data")  # refused if the table is outside the lab's store
    paths = table_stream.write_files(parts, vp.types, data_dir, set(new_ids) if append_only else None)
    fresh = _save_data_files(paths, st)

    def register(t: Any) -> None:
        with t.transaction() as tx:
            if not append_only and t.current_snapshot() is not None:
                from pyiceberg.expressions import AlwaysTrue

                tx.delete(AlwaysTrue())  # a rewrite: the new files replace every row
            tx.add_files([st.uri(k) for k in fresh])

    try:
        tbl = commit_retrying(ice, ident, "registering the data files", register)
    except BaseException:
        for k in fresh:  # not committed: nothing refers to them
            st.remove(k)
        raise
    snap = tbl.current_snapshot()
    tbl = commit_retrying(ice, ident, f"tagging v{version}",
                          lambda t: t.manage_snapshots().create_tag(snap.snapshot_id, f"v{version}").commit())

    def describe(t: Any) -> None:
        with t.transaction() as tx:
            tx.set_properties({
                "datalab.dataset": name, "datalab.version": version,
                "datalab.contracts.policy": json.dumps(policy.to_dict(), sort_keys=True, default=str),
                "datalab.export_control": str(policy.export_control).lower(),
                "datalab.classification": policy.classification,
            })

    tbl = commit_retrying(ice, ident, "setting its properties", describe)
    return WrittenTable(ident, snap.snapshot_id, _data_files(tbl, snap.snapshot_id, prev_manifest, fresh, st))


def _data_files(tbl: Any, snapshot_id: int, prev: Manifest | None, fresh: dict[str, tuple[str, int]],
                st: Store) -> tuple[DataFile, ...]:
    """The snapshot's data files for the manifest: the previous version's records, the checksums taken
    while writing, and (for a file neither knows) a checksum read from the store."""
    known = {f.path: f for f in (prev.files if prev else ())}
    files = []
    for task in tbl.scan(snapshot_id=snapshot_id).plan_files():
        key = st.key_of_uri(task.file.file_path)
        if key in known:
            files.append(known[key])
        else:
            sha, size = fresh[key] if key in fresh else _checksum(st, key)
            files.append(DataFile(key, sha, size, task.file.record_count))
    return tuple(sorted(files, key=lambda f: f.path))


# Tries of one Iceberg commit that another writer's commit beat (pyiceberg's optimistic concurrency).
COMMIT_TRIES = 5


def commit_retrying(ice: Any, ident: str, what: str, apply: Callable[[Any], None]) -> Any:
    """Apply a change to the table as it is now and commit it; the table after.

    Publishes of one dataset are serialised (datalab.store.locks), but the
    table has other writers: a retention purge deleting a firm's rows, an
    operator's maintenance, another tool on the same catalog. pyiceberg
    commits optimistically: it retries a plain append itself, but refuses a
    rewrite (delete every row, add the version's files) when rows were added
    meanwhile (``ValidationException``), and a change its own retries could
    not place (``CommitFailedException``). The change is then applied again
    to the table as it is now, after a short back-off: a rewrite replaces
    what is there then, an append goes on top of it.
    """
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    for attempt in range(COMMIT_TRIES):
        tbl = ice.load_table(ident)
        try:
            apply(tbl)
            return ice.load_table(ident)
        except (CommitFailedException, ValidationException) as e:
            if attempt == COMMIT_TRIES - 1:
                raise DatalabError(f"table {ident}: {what} lost to a concurrent commit {COMMIT_TRIES} times: {e}") from e
            time.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def _save_data_files(paths: list[Path], st: Store) -> dict[str, tuple[str, int]]:
    """Each data file written on this machine, checksummed and saved to the store: (sha256, bytes) by key.

    Checksummed here, before an object store takes it, so the manifest's
    checksums are of the bytes written, and no file is read back.
    """
    out: dict[str, tuple[str, int]] = {}
    try:
        for p in paths:
            sha, size = sha256_file(p), p.stat().st_size
            out[st.save(p)] = (sha, size)
    except BaseException:
        for p in paths:
            st.remove(p)
        raise
    return out


def _checksum(st: Store, key: str) -> tuple[str, int]:
    """A data file's checksum and size, read from the store (one no version recorded and this publish did not write)."""
    with st.fetched(key) as (p,):
        return sha256_file(p), p.stat().st_size


# What the manifest keeps of each delivery's curation statistics (the curated stage's record in the
# catalog): these counts, then the kind's flag columns (Kind.flag_words), then the rest.
CURATION_COUNTS: tuple[str, ...] = ("rows_in", "rows_out", "exact_duplicates_removed", "values_converted")
CURATION_REST: tuple[str, ...] = (
    "constant_sensors", "engine", "time_bases", "repeats_excluded", "correction", "replaces", "duplicate_rows",
    "duplicate_share", "max_duplicate_share", "warnings",
)


def build_manifest(vp: VersionPlan, version: str, why: str, written: WrittenTable, s: Settings,
                   t0: float) -> Manifest:
    """The version's manifest: lineage, counts, curation and validation per delivery, policy and sovereignty."""
    contracts, included = vp.contracts, vp.included
    # Counts from each curated file's metadata: a group-by on the literal
    # contract_id column of the concatenated version is not streamed (3.2 GB
    # at 200 M rows).
    rows_of: dict[str, int] = {}
    for d in included:
        n = _part(d, contracts, vp.replaced_by, vp.here).rows().select(pl.len()).collect().item()
        rows_of[d["contract"]] = rows_of.get(d["contract"], 0) + n
    val = {d["id"]: (state.get(d["id"], s) or {}).get("validation") for d in included}
    curated_stats = {d["id"]: (state.get(d["id"], s) or {}).get("stats", {}).get("curated", {}) for d in included}
    # each delivery's flag counts under its kind's flag columns (Kind.flag_words: one per flag for a series, one for CAD)
    flags_of = {d["id"]: tuple(kind_of(contracts[d["contract"]]).flag_words) for d in included}
    sov = sovereignty.manifest_section(vp.plan, vp.personal)
    if vp.masked_rows:  # which rows a consumer reads under pseudonyms (docs/sovereignty.md, "Firm names")
        sov["rows_pseudonymised"] = {"contracts": vp.masked_rows, "columns": list(firm_names.ROW_COLUMNS)}
    sections = {}
    for kind in vp.kinds:  # what a kind versions with the table (CAD: the files and thumbnails)
        section = kind.attach_files(vp.name, included, contracts, vp.policy, s)
        if section is not None and kind.manifest_key:
            sections[kind.manifest_key] = section
    site = vp.sites[vp.spec.site]
    return Manifest(
        dataset=vp.name, title=vp.spec.title, description=vp.spec.description, version=version, version_reason=why,
        created_at=cat.now_iso(), site=SiteRef(vp.spec.site, site.country, site.operator), table=written.ident,
        snapshot_id=written.snapshot_id, schema=vp.schema, rows=sum(rows_of.values()),
        rows_per_contract=dict(sorted(rows_of.items())), files=written.files,
        lineage=Lineage(
            tuple(LineageContract(c, contracts[c].version, contracts[c].tenant, str(contracts[c].path.relative_to(s.contracts_dir)))
                  for c in vp.plan.inputs),
            tuple(vp.delivery_ids),
            tuple(Excluded(e["delivery_id"], e["contract"], e["reason"]) for e in vp.excluded)),
        curation={k: {x: v.get(x) for x in (*CURATION_COUNTS, *flags_of[k], *CURATION_REST)}
                  | {"rows_replaced_by_corrections": sum(int(n) for c2 in curated_stats.values() for dd, n in (c2.get("replaces") or {}).items() if dd == k)}
                  for k, v in curated_stats.items()},
        validation={k: {"success": (v or {}).get("success"), "evaluated": (v or {}).get("evaluated"), "failed": (v or {}).get("failed")} for k, v in val.items()},
        policy=vp.policy.to_dict(), sovereignty=sov, seconds=round(time.perf_counter() - t0, 3), sections=sections,
    )


def _publish(name: str, actor: str, s: Settings) -> PublishResult:
    """Plan the version, write its table, describe it: manifest, card and datasheet, then its catalog row."""
    t0 = time.perf_counter()
    with store(s).session() as here:
        return _publish_with(name, actor, s, here, t0)


def _publish_with(name: str, actor: str, s: Settings, here: Fetched, t0: float) -> PublishResult:
    """``_publish`` with the curated files read through ``here``."""
    vp = plan_version(name, actor, s, here)
    prev = vp.prev
    if prev is not None and prev["content_key"] == vp.content_key:
        return PublishResult(name, prev["version"], False, f"nothing changed since {prev['version']}: no new version")
    version, why = bump(prev["version"] if prev else None, vp.prev_manifest.schema if vp.prev_manifest else None, vp.schema)
    from datalab.store import datasheet

    # The card's passes over the rows (Polars) run beside the Iceberg work
    # below (Python): datasheet.RowPasses.
    flags = tuple(dict.fromkeys(f for k in vp.kinds for f in k.flag_words))
    passes = datasheet.start_row_passes(vp.schema, flags, vp.rows, stored_facts(vp, flags)) \
        if all(k.datasheet_facts for k in vp.kinds) else None
    written = write_table(vp, version, why, s)
    manifest = build_manifest(vp, version, why, written, s, t0)
    vdir = s.versions / name / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=str))
    manifest = manifest.replace(datasheet=datasheet.write(vdir, manifest, vp.contracts, vp.rows, s, passes))
    (vdir / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=str))
    st = store(s)
    st.save_tree(vdir)  # with an object store: the version's files are there before its catalog row
    catalog = cat.Catalog(s.catalog_url)
    with catalog.begin() as conn:
        conn.execute(cat.dataset_versions.insert().values(
            dataset=name, version=version, table_ident=written.ident, snapshot_id=written.snapshot_id,
            content_key=vp.content_key, manifest_path=st.key(vdir / "manifest.json"),
            status="active", created_at=manifest.created_at))
        catalog.audit(actor, "publish", f"{name}@{version}", "published", {
            "reason": why, "rows": manifest.rows, "deliveries": len(vp.delivery_ids), "excluded": len(vp.excluded),
            "site": vp.spec.site, "snapshot_id": written.snapshot_id}, conn=conn)
    return PublishResult(name, version, True, why, manifest)
