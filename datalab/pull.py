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
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datalab import catalog as cat
from datalab import contract as contracts_mod
from datalab import datasets
from datalab.clearance import check_clearance
from datalab.config import Settings, settings
from datalab.datasheet import ship as ship_datasheet
from datalab.errors import DatalabError, IntegrityError, NotFound, PolicyRefused
from datalab.policy import Policy, purpose_allowed
from datalab.publish import read_manifest
from datalab.sovereignty import check_pull_purpose


@dataclass
class PullResult:
    dataset: str
    version: str
    directory: Path
    files: list[Path]
    rows: int


def default_actor() -> str:
    return os.environ.get("DATALAB_ACTOR") or f"local:{getpass.getuser()}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, (version or None)


def authorise(name: str, version: str | None, purpose: str | None, actor: str, s: Settings,
              clearance: dict[str, str] | None = None) -> dict[str, Any]:
    """The version's manifest if ``actor`` may use it for ``purpose``; else refuse and audit."""
    catalog = cat.Catalog(s.catalog_url)
    subject = f"{name}@{version or 'latest'}"
    try:
        if not purpose:
            raise PolicyRefused("purposes", "a purpose must be declared (--purpose), e.g. research")
        check_pull_purpose(purpose, s)
        m = read_manifest(name, version, s)
        subject = f"{name}@{m['version']}"
        check_policy(m, purpose, s, clearance)
    except (PolicyRefused, NotFound) as e:
        catalog.audit(actor, "pull", subject, "refused", {"purpose": purpose, "reason": str(e),
                                                         "rule": getattr(e, "rule", "not-found")})
        raise
    return m


def check_policy(m: dict[str, Any], purpose: str, s: Settings, clearance: dict[str, str] | None = None) -> None:
    """Raise PolicyRefused unless manifest ``m`` may be used for ``purpose`` from ``s.site``.

    No audit entry: ``authorise`` audits; the HTTP service also uses this to
    list only the versions a consumer may reach, without logging a refusal
    for each version it merely does not show.
    """
    check_pull_purpose(purpose, s)
    if m.get("status") == "withdrawn":
        raise PolicyRefused("withdrawn", f"version {m['version']} was withdrawn: {(m.get('withdrawn') or {}).get('reason', 'no reason recorded')}")
    pol = Policy.from_dict({k: v for k, v in m["policy"].items() if k != "sources"})
    object.__setattr__(pol, "sources", m["policy"].get("sources", {}))
    pol.check_purpose(purpose)
    pol.check_retention()
    rep = m.get("replica")  # a federated replica is usable only for its agreement's purpose (issue 18)
    if rep and not purpose_allowed(purpose, [rep["purpose"]], [])[0]:
        raise PolicyRefused("agreement", f"replica of {rep['site']} under agreement {rep['agreement']}: "
                            f"usable only for purpose {rep['purpose']!r}, not {purpose!r}")
    check_clearance(pol, clearance)  # None: this process's DATALAB_CLEARANCE / DATALAB_EXPORT_CLEARED
    if s.site:
        sites = datasets.load_sites(s.contracts_dir)
        if s.site not in sites:
            raise PolicyRefused("residency", f"DATALAB_SITE={s.site!r} is not a known site")
        pol.check_site(s.site, sites[s.site].country)


def copy_verified(src: Path, dst: Path, sha: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary name, hashing while copying; refuse a checksum mismatch.

    The temporary name carries the process id, so two processes writing the
    same content-addressed object never share a partial file.
    """
    h = hashlib.sha256()
    tmp = dst.with_suffix(f"{dst.suffix}.{os.getpid()}.part")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(8 << 20):
            h.update(chunk)
            fout.write(chunk)
    if h.hexdigest() != sha:
        tmp.unlink()
        raise IntegrityError(f"{src}: checksum {h.hexdigest()} does not match the manifest's {sha}")
    os.replace(tmp, dst)


def pull(ref: str, purpose: str | None, to: Path, actor: str | None = None, s: Settings | None = None) -> PullResult:
    """Export ``name@version`` as Parquet + manifest.json + card.md into ``to``."""
    s = s or settings()
    actor = actor or default_actor()
    name, version = parse_ref(ref)
    m = authorise(name, version, purpose, actor, s)
    out = Path(to) / f"{name}-{m['version']}"
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = []
    catalog = cat.Catalog(s.catalog_url)
    try:
        for i, f in enumerate(m["files"]):
            dst = data / f"part-{i:05d}.parquet"
            copy_verified(s.home / f["path"], dst, f["sha256"])
            files.append(dst)
        if m.get("cad"):
            from datalab.cad.publish import pull_files  # CAD files and thumbnails beside the table

            files += pull_files(m, out, s, copy_verified)
    except (IntegrityError, OSError) as e:
        catalog.audit(actor, "pull", f"{name}@{m['version']}", "failed", {"purpose": purpose, "reason": str(e)})
        shutil.rmtree(out, ignore_errors=True)
        raise IntegrityError(str(e)) from e
    (out / "manifest.json").write_text(json.dumps(m, indent=2, default=str))
    ship_datasheet(s.versions / name / m["version"], out)
    catalog.audit(actor, "pull", f"{name}@{m['version']}", "allowed", {
        "purpose": purpose, "files": len(files), "rows": m["rows"], "to": str(out)})
    return PullResult(name, m["version"], out, files, m["rows"])


def open_dataset(name: str, version: str | None = None, purpose: str | None = None,
                 actor: str | None = None, s: Settings | None = None) -> pl.LazyFrame:
    """A LazyFrame over a version's files, in place, after the policy check."""
    s = s or settings()
    actor = actor or default_actor()
    m = authorise(name, version, purpose, actor, s)
    paths = [str(s.home / f["path"]) for f in m["files"]]
    cat.Catalog(s.catalog_url).audit(actor, "open", f"{name}@{m['version']}", "allowed", {"purpose": purpose})
    return pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore") if paths else pl.LazyFrame(schema=m["schema"])


def list_datasets(s: Settings | None = None) -> list[dict[str, Any]]:
    """Every dataset spec with its published versions."""
    from datalab.publish import list_versions

    s = s or settings()
    out = []
    for name in datasets.list_specs(s.contracts_dir):
        vs = list_versions(name, s)
        out.append({"dataset": name, "versions": [v["version"] for v in vs],
                    "latest": vs[-1]["version"] if vs else None,
                    "status": {v["version"]: v["status"] for v in vs}})
    return out


__all__ = ["DatalabError", "PullResult", "contracts_mod", "list_datasets", "open_dataset", "pull"]
