"""Dataset specs (``data_contracts/datasets/*.yaml``) and sites (``sites.yaml``).

A dataset spec names the provider contracts it federates, the site it is
published to and columns to leave out. Its effective sovereignty policy is
the combination of its inputs' policies; a spec whose inputs cannot be
combined, or whose site lies outside the residency, never publishes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from datalab.config import safe_segment
from datalab.contracts.contract import Contract, read_yaml
from datalab.contracts.policy import CLASSIFICATIONS, COUNTRIES
from datalab.errors import ContractError, NotFound

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Site:
    name: str
    country: str
    operator: str = ""
    region: str = ""
    # The most sensitive classification the site may host (policy.CLASSIFICATIONS).
    max_classification: str = "restricted"
    # Base URL the site's service answers DSP requests at (federation, issue 18).
    url: str = ""
    # Whether the site may receive export-controlled content (federation: a peer sees it only then).
    export_cleared: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    description: str
    site: str
    inputs: tuple[str, ...]
    drop_columns: tuple[str, ...]
    path: Path


_SITES: dict[str, tuple[int, dict[str, Site]]] = {}


def load_sites(contracts_dir: Path) -> dict[str, Site]:
    """The sites of ``sites.yaml``, parsed again only when the file changed.

    Every consumer request checks its site (residency and classification
    cap), several times when it decides whether a dataset is hidden; parsing
    the YAML each time cost more than the check.
    """
    path = contracts_dir / "sites.yaml"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return _load_sites(contracts_dir)  # the reader names the missing file
    hit = _SITES.get(str(path))
    if hit is None or hit[0] != mtime:
        hit = (mtime, _load_sites(contracts_dir))
        _SITES[str(path)] = hit
    return dict(hit[1])


def _load_sites(contracts_dir: Path) -> dict[str, Site]:
    doc, problems = read_yaml(contracts_dir / "sites.yaml")
    if problems:
        raise ContractError(str(contracts_dir / "sites.yaml"), problems)
    out = {}
    for i, s in enumerate((doc or {}).get("sites") or []):
        if not isinstance(s, dict) or s.get("country") not in COUNTRIES or not s.get("name"):
            raise ContractError(str(contracts_dir / "sites.yaml"), [f"sites[{i}]: needs a name and an ISO 3166 country"])
        try:
            safe_segment(s["name"], "site name")  # a site name goes into URNs, tokens and catalog rows
        except ValueError as e:
            raise ContractError(str(contracts_dir / "sites.yaml"), [f"sites[{i}].name: {e}"]) from None
        if s.get("max_classification", "restricted") not in CLASSIFICATIONS:
            raise ContractError(str(contracts_dir / "sites.yaml"), [f"sites[{i}].max_classification: one of {list(CLASSIFICATIONS)}"])
        out[s["name"]] = Site(s["name"], s["country"], s.get("operator", ""), s.get("region", ""),
                              s.get("max_classification", "restricted"), str(s.get("url") or ""),
                              bool(s.get("export_cleared", False)))
    return out


def load_spec(contracts_dir: Path, name: str, contracts: dict[str, Contract]) -> DatasetSpec:
    if not _NAME.match(name):
        raise NotFound(f"no dataset {name!r}")
    path = contracts_dir / "datasets" / f"{name}.yaml"
    if not path.exists():
        raise NotFound(f"no dataset spec {name!r} in {contracts_dir / 'datasets'}")
    doc, problems = read_yaml(path)
    if not problems and not isinstance(doc, dict):
        problems = ["(document): must be a mapping"]
    if not problems:
        if doc.get("name") != name:
            problems.append(f"name: must be {name!r} (the file's name)")
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            problems.append("inputs: a non-empty list of provider contract ids")
        else:
            for i, cid in enumerate(inputs):
                if cid not in contracts:
                    broken = getattr(contracts, "broken", {})
                    hint = (f" ({len(broken)} provider contract(s) do not load: {', '.join(sorted(Path(b).name for b in broken))}; "
                            "see datalab contract list)") if broken else ""
                    problems.append(f"inputs[{i}]: no provider contract {cid!r}{hint}")
        if not doc.get("site"):
            problems.append("site: required, the site the dataset is published to (sites.yaml)")
        kinds = {contracts[c].kind for c in (inputs or []) if c in contracts}
        times = {contracts[c].time.logical_type for c in (inputs or []) if c in contracts and contracts[c].series}
        if len(kinds) > 1 or len(times) > 1:
            problems.append("inputs: all inputs must have the same kind and time axis (timestamps or an index)")
    if problems:
        raise ContractError(str(path), problems)
    return DatasetSpec(
        name=name, title=doc.get("title", name), description=(doc.get("description") or "").strip(),
        site=doc["site"], inputs=tuple(doc["inputs"]), drop_columns=tuple(doc.get("drop_columns") or ()), path=path,
    )


def list_specs(contracts_dir: Path) -> list[str]:
    return sorted(p.stem for p in (contracts_dir / "datasets").glob("*.yaml"))
