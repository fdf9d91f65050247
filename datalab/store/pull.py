"""Pulling a dataset version for a declared purpose.

Every pull is checked against the version's effective policy (purpose,
retention, site residency when ``DATALAB_SITE`` is set, withdrawal) and
written to the audit log, allowed or refused. Files are copied as they are
stored (the Iceberg data files of the version's snapshot), with every
checksum verified while copying, so a pull of an old version is bit for bit
what was published.
"""

from __future__ import annotations

import getpass
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts import datasets
from datalab.contracts.policy import CLASSIFICATIONS, purpose_allowed
from datalab.errors import DatalabError, IntegrityError, NotFound, PolicyRefused
from datalab.kinds import kind_of_manifest
from datalab.policy.clearance import check_clearance
from datalab.policy.sovereignty import check_pull_purpose, policy_from_manifest
from datalab.store import catalog as cat
from datalab.store.datasheet import ship as ship_datasheet
from datalab.store.manifest import Manifest
from datalab.store.manifests import copy_verified, list_versions, read_manifest
from datalab.store.storage import store


@dataclass
class PullResult:
    dataset: str
    version: str
    directory: Path
    files: list[Path]
    rows: int


def default_actor(s: Settings | None = None) -> str:
    return (s or settings()).actor or f"local:{getpass.getuser()}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, (version or None)


def authorise(name: str, version: str | None, purpose: str | None, actor: str, s: Settings,
              clearance: dict[str, str] | None = None, hidden_as_missing: bool = False) -> Manifest:
    """The version's manifest if ``actor`` may use it for ``purpose``; else refuse and audit.

    With ``hidden_as_missing`` (the HTTP service), a dataset none of whose
    versions the consumer's site and clearance may ever reach is refused
    exactly like one that does not exist, so the refusal does not tell it
    exists, which versions it has or whose data it holds. Refusal reasons
    name the firms behind a rule by the pseudonym the dataset card uses; the
    audit entry keeps the full reason for the lab.
    """
    catalog = cat.Catalog(s.catalog_url)
    subject = f"{name}@{version or 'latest'}"
    m: Manifest | None = None
    hidden = False
    try:
        if not purpose:
            raise PolicyRefused("purposes", "a purpose must be declared (--purpose), e.g. research")
        check_pull_purpose(purpose, s)
        if hidden_as_missing and not dataset_reachable(name, s, clearance):
            hidden = True
            raise NotFound(f"dataset {name!r} has no published version")  # read_manifest's words for a missing one
        m = read_manifest(name, version, s)
        subject = f"{name}@{m.version}"
        check_policy(m, purpose, s, clearance)
    except (PolicyRefused, NotFound) as e:
        catalog.audit(actor, "pull", subject, "refused", {
            "purpose": purpose, "reason": "no version reachable from the site and clearance" if hidden else str(e),
            "rule": "hidden" if hidden else getattr(e, "rule", "not-found")})
        if isinstance(e, PolicyRefused) and m is not None:
            e.args = (pseudonymise(str(e), m, s),)  # the caller sees the card's labels, the audit the ids
        raise
    return m


def pseudonymise(message: str, m: Manifest, s: Settings) -> str:
    """``message`` with the contract ids of the version's policy named as the dataset card names their firms.

    A confidential or restricted firm appears on the card only as a keyed
    pseudonym (``datasheet._firm_label``); its refusals say the same.
    """
    ids = sorted({cid for v in (m.policy.get("sources") or {}).values() for cid in (v or [])},
                 key=len, reverse=True)
    ids = [cid for cid in ids if cid in message]
    if not ids:
        return message
    from datalab.policy.pseudonym import key, pseudonym
    from datalab.store.datasheet import _firm_label

    contracts = contracts_mod.load_all(s.contracts_dir)
    for cid in ids:
        c = contracts.get(cid)
        if c is not None and _firm_label(c, s) == c.tenant:
            continue  # public or internal data: the card names the firm, so may the refusal
        tenant = cid.split(":")[2] if cid.count(":") >= 3 else cid
        label = _firm_label(c, s) if c is not None else "firm-" + pseudonym(key(s), "datasheet:firm", tenant)[3:11]
        message = message.replace(cid, label)
    return message


def check_site_cap(m: Manifest, s: Settings) -> None:
    """Refuse unless ``s.site`` may hold version ``m``: inside its residency, and within the site's classification cap.

    The same rules publish checks (``sovereignty.check_site``) and a provider applies to a replication,
    applied to every pull, listing, ``show`` and ``datalab.open``: a site
    registered for public data only never receives confidential data.
    """
    if not s.site:
        return
    sites = datasets.load_sites(s.contracts_dir)
    if s.site not in sites:
        raise PolicyRefused("residency", f"DATALAB_SITE={s.site!r} is not a known site")
    site = sites[s.site]
    pol = policy_from_manifest(m)
    pol.check_site(site.name, site.country)
    if CLASSIFICATIONS.index(pol.classification) > CLASSIFICATIONS.index(site.max_classification):
        who = ", ".join(pol.sources.get("classification", [])) or "the dataset policy"
        raise PolicyRefused("classification", f"site '{site.name}' may hold data up to '{site.max_classification}'; "
                            f"the version is '{pol.classification}' (set by {who})")


def reachable(m: Manifest, s: Settings, clearance: dict[str, str] | None = None) -> bool:
    """Whether the caller's site and clearance may ever receive version ``m`` (whatever the purpose)."""
    try:
        check_clearance(policy_from_manifest(m), clearance, s)
        check_site_cap(m, s)
    except PolicyRefused:
        return False
    return True


def dataset_reachable(name: str, s: Settings, clearance: dict[str, str] | None = None) -> bool:
    """Whether any published version of ``name`` is ``reachable``: else the dataset is hidden from the caller."""

    for v in list_versions(name, s):
        if reachable(read_manifest(name, v["version"], s), s, clearance):
            return True
    return False


def check_policy(m: Manifest, purpose: str, s: Settings, clearance: dict[str, str] | None = None) -> None:
    """Raise PolicyRefused unless manifest ``m`` may be used for ``purpose`` from ``s.site``.

    No audit entry: ``authorise`` audits; the HTTP service also uses this to
    list only the versions a consumer may reach, without logging a refusal
    for each version it merely does not show.
    """
    check_pull_purpose(purpose, s)
    if m.status == "withdrawn":
        raise PolicyRefused("withdrawn", f"version {m.version} was withdrawn: {(m.withdrawn or {}).get('reason', 'no reason recorded')}")
    pol = policy_from_manifest(m)
    pol.check_purpose(purpose)
    pol.check_retention()
    rep = m.replica  # a federated replica is usable only for its agreement's purpose (issue 18)
    if rep and not purpose_allowed(purpose, [rep["purpose"]], [])[0]:
        raise PolicyRefused("agreement", f"replica of {rep['site']} under agreement {rep['agreement']}: "
                            f"usable only for purpose {rep['purpose']!r}, not {purpose!r}")
    check_clearance(pol, clearance, s)  # None: the settings' DATALAB_CLEARANCE / DATALAB_EXPORT_CLEARED
    check_site_cap(m, s)


def pull(ref: str, purpose: str | None, to: Path, actor: str | None = None, s: Settings | None = None) -> PullResult:
    """Export ``name@version`` as Parquet + manifest.json + card.md into ``to``."""
    s = s or settings()
    actor = actor or default_actor()
    name, version = parse_ref(ref)
    m = authorise(name, version, purpose, actor, s)
    out = Path(to) / f"{name}-{m.version}"
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = []
    catalog = cat.Catalog(s.catalog_url)
    st = store(s)

    def copy(key: str, dst: Path, sha: str) -> None:  # from the lab's store (a local file or an object), verified
        copy_verified(key, dst, sha, st)

    try:
        for i, f in enumerate(m.files):
            dst = data / f"part-{i:05d}.parquet"
            copy(f.path, dst, f.sha256)
            files.append(dst)
        files += kind_of_manifest(m).pull_files(m, out, s, copy)  # attached files (CAD: files, thumbnails)
    except (IntegrityError, OSError) as e:
        catalog.audit(actor, "pull", f"{name}@{m.version}", "failed", {"purpose": purpose, "reason": str(e)})
        shutil.rmtree(out, ignore_errors=True)
        raise IntegrityError(str(e)) from e
    # the consumer's copy of the manifest names masked firms by their pseudonym (datalab/policy/firm_names.py)
    from datalab.policy.firm_names import consumer_manifest

    (out / "manifest.json").write_text(json.dumps(consumer_manifest(m, s), indent=2, default=str))
    ship_datasheet(name, m.version, out, s)
    catalog.audit(actor, "pull", f"{name}@{m.version}", "allowed", {
        "purpose": purpose, "files": len(files), "rows": m.rows, "to": str(out)})
    return PullResult(name, m.version, out, files, m.rows)


def open_dataset(name: str, version: str | None = None, purpose: str | None = None,
                 actor: str | None = None, s: Settings | None = None) -> pl.LazyFrame:
    """A LazyFrame over a version's files, in place, after the policy check."""
    s = s or settings()
    actor = actor or default_actor()
    m = authorise(name, version, purpose, actor, s)
    cat.Catalog(s.catalog_url).audit(actor, "open", f"{name}@{m.version}", "allowed", {"purpose": purpose})
    if not m.files:
        return pl.LazyFrame(schema=m.schema)
    return store(s).scan_parquet([f.path for f in m.files], missing_columns="insert", extra_columns="ignore")


def _site_may_hold(name: str, version: str, s: Settings) -> bool:
    try:
        check_site_cap(read_manifest(name, version, s), s)
    except PolicyRefused:
        return False
    return True


def list_datasets(s: Settings | None = None) -> list[dict[str, Any]]:
    """Every dataset spec with its published versions."""

    s = s or settings()
    out = []
    for name in datasets.list_specs(s.contracts_dir):
        vs = list_versions(name, s)
        if s.site:  # only what the site may hold (residency and its classification cap)
            vs = [v for v in vs if _site_may_hold(name, v["version"], s)]
        out.append({"dataset": name, "versions": [v["version"] for v in vs],
                    "latest": vs[-1]["version"] if vs else None,
                    "status": {v["version"]: v["status"] for v in vs}})
    return out


__all__ = ["DatalabError", "PullResult", "contracts_mod", "list_datasets", "open_dataset", "pull"]
