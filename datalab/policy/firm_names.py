"""Who sees a firm's name: one rule, applied wherever a consumer reads about a version.

The rule (docs/sovereignty.md, "Firm names"): a firm whose input to a version
is ``confidential`` or ``restricted`` appears to consumers only as its
pseudonym ``firm-<keyed HMAC>``. Its name, its contract ids (which hold the
name), its machine ids and its own licence references (``LicenseRef-...``,
which name it as well) are replaced in everything a consumer is given about
the version: the card, the datasheet, the manifest a pull writes, the
manifest and refusal messages served over HTTP. ``public`` and ``internal``
firms are named. The firm itself (its own receipts) and the lab's operators
(the local CLI on the lab's directory: ``policy explain``, ``diff``,
``audit show``; admin principals over HTTP) see names: they run the lab and
answer for it.

The replacements of a version are kept beside it in ``firm_masks.json``, an
operator file that is never shipped (not in ``datasheet.SHIPPED``).

The published rows follow the same rule (:func:`row_mask`): a masked firm's
rows carry its pseudonym in ``tenant``, its masked contract id in
``contract_id`` and its machines' pseudonyms in ``entity`` (the ids the card
masks; the rest name nobody and are kept). The lab maps them back from the
version's lineage (:func:`plain_rows`, :func:`row_contract_ids`): ``diff``
and the withdrawal path read published rows under the real names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from datalab.config import Settings, settings
from datalab.contracts.contract import Contract

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.store.manifest import LineageContract, Manifest

MASKS_FILE = "firm_masks.json"
NAMED = ("public", "internal")


def masked(c: Contract) -> bool:
    """True when consumers see this contract's firm only by its pseudonym."""
    return c.policy.classification not in NAMED


def label(c: Contract, s: Settings) -> str:
    """The firm's name as consumers see it."""
    if not masked(c):
        return c.tenant
    return tenant_label(c.tenant, s)


def tenant_label(tenant: str, s: Settings) -> str:
    """The pseudonym of ``tenant``: ``firm-<keyed HMAC>``, the same in every version."""
    from datalab.policy.pseudonym import key, pseudonym

    return "firm-" + pseudonym(key(s), "datasheet:firm", tenant)[3:11]


def machine_label(tenant: str, machine: str, s: Settings) -> str:
    """The pseudonym of machine ``machine`` of ``tenant``: ``machine-<keyed HMAC>``."""
    from datalab.policy.pseudonym import key, pseudonym

    return "machine-" + pseudonym(key(s), "datasheet:machine", f"{tenant}/{machine}")[3:11]


def contract_label(contract_id: str, tenant: str, s: Settings) -> str:
    """A contract id with its firm's name replaced by the firm's pseudonym (as the card writes it)."""
    return apply(contract_id, {tenant: tenant_label(tenant, s)})


def masks_for(contracts: Iterable[Contract], s: Settings, machines: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """name -> pseudonym for the masked firms of ``contracts``: tenants, licence refs, and ``(tenant, machine)`` ids."""
    out: dict[str, str] = {}
    by_tenant = {c.tenant: c for c in contracts if masked(c)}
    for c in by_tenant.values():
        lab = label(c, s)
        out[c.tenant] = lab
        refs = [x for x in c.policy.license if x.startswith("LicenseRef-")]
        for i, ref in enumerate(refs, 1):
            out[ref] = f"LicenseRef-{lab}-{i}"
    for tenant, machine in machines:
        # a machine id names its firm when it reads like one (BSW-M01); a bare number (C-MAPSS unit 7)
        # does not, and replacing "7" would rewrite every 7 of the card
        if tenant in by_tenant and _distinctive(machine) and machine not in out:
            out[machine] = machine_label(tenant, machine, s)
    return out


def _distinctive(machine: str) -> bool:
    return len(machine) >= 3 and any(ch.isalpha() for ch in machine)


def apply(text: str, masks: dict[str, str]) -> str:
    """Replace every masked name in ``text`` as a whole token (``LP-A1`` never matches inside ``LP-A10``)."""
    if not masks:
        return text
    keys = sorted(masks, key=len, reverse=True)
    rx = re.compile(r"(?<![\w])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])")
    return rx.sub(lambda mt: masks[mt.group(1)], text)


def save(vdir: Path, masks: dict[str, str]) -> None:
    """Written into the version's folder before publish saves the folder to the lab's store."""
    (vdir / MASKS_FILE).write_text(json.dumps(masks, indent=2, sort_keys=True))


def for_version(name: str, version: str | None, s: Settings | None = None) -> dict[str, str]:
    """The masks of a version (saved at publish), else those the lab's contracts imply (older versions)."""
    s = s or settings()
    if version:
        from datalab.store.storage import store, version_key

        try:
            return json.loads(store(s).read_text(version_key(name, version, MASKS_FILE)))
        except (FileNotFoundError, ValueError):  # none saved (an older version), or not a version's name
            pass
    return lab_masks(s)


def lab_masks(s: Settings | None = None) -> dict[str, str]:
    """Tenant and licence masks of every contract of the lab (for messages that are not about one version)."""
    from datalab.contracts import contract as contracts_mod

    s = s or settings()
    try:
        cs = contracts_mod.load_all(s.contracts_dir).values()
    except Exception:  # a broken contract elsewhere must not unmask a message
        return {}
    return masks_for(cs, s)


def consumer_manifest(m: Manifest, s: Settings | None = None) -> dict[str, Any]:
    """The manifest as a consumer receives it (pull, HTTP), as JSON: masked firms replaced everywhere in it."""
    masks = for_version(m.dataset, m.version, s)
    d = m.to_dict()
    return json.loads(apply(json.dumps(d, default=str), masks)) if masks else d


def consumer_message(text: str, name: str | None = None, version: str | None = None, s: Settings | None = None) -> str:
    """A refusal or error text for a consumer, with the masked firms replaced."""
    masks = {**lab_masks(s), **(for_version(name, version, s) if name else {})}
    return apply(text, masks)


# -- the published rows -------------------------------------------------------------------

ROW_COLUMNS = ("tenant", "contract_id", "entity")


@dataclass(frozen=True)
class RowMask:
    """What a masked firm's published rows hold instead of its names (``table_stream.Part`` applies it)."""

    tenant: str
    contract_id: str
    entities: tuple[tuple[str, str], ...] = ()  # (machine id, pseudonym) for the ids that name the firm


def row_mask(c: Contract, entities: Iterable[str], s: Settings) -> RowMask | None:
    """The replacements in ``c``'s published rows (``entities``: the machine ids in them); None for a named firm.

    The same pseudonyms the card uses: the tenant's label, the contract id
    with the tenant replaced, and ``machine-<HMAC>`` for every machine id the
    card would mask (ids without a letter or shorter than three characters
    name nobody and are kept, as on the card).
    """
    if not masked(c):
        return None
    return RowMask(label(c, s), contract_label(c.id, c.tenant, s),
                   tuple((e, machine_label(c.tenant, e, s)) for e in sorted(set(entities)) if _distinctive(e)))


def entity_label(c: Contract, machine: str, s: Settings) -> str:
    """What a masked firm's published rows hold for its machine id ``machine`` (as :func:`row_mask` maps it)."""
    return machine_label(c.tenant, machine, s) if _distinctive(machine) else machine


def mask_digest(mask: RowMask, contract_version: str) -> str:
    """A fingerprint of what a masked firm's published rows hold: its pseudonyms and the machine ids they replace.

    Curation records it with a delivery's published form (the twin of its
    curated file); publishing copies that file only when the mask it would
    apply now has the same fingerprint (same key, names and machines).
    """
    import hashlib

    body = json.dumps([mask.tenant, mask.contract_id, contract_version, [list(e) for e in mask.entities]])
    return hashlib.sha256(body.encode()).hexdigest()


def row_contract_ids(contract_id: str, tenants: Iterable[str], s: Settings) -> list[str]:
    """Every value ``contract_id`` can hold in published rows: the id, and the id masked for each of ``tenants``."""
    return sorted({contract_id, *(contract_label(contract_id, t, s) for t in tenants)})


def plain_rows(lf: pl.LazyFrame, lineage: Iterable[LineageContract], s: Settings) -> pl.LazyFrame:
    """Published rows with ``tenant`` and ``contract_id`` under the real names again (the lab's own view).

    ``lineage``: the ``lineage.contracts`` (id, tenant) of the
    manifests the rows come from. A named firm's rows are unchanged; machine
    ids stay pseudonymised (no reader in the lab needs them back).
    """
    tenants: dict[str, str] = {}
    ids: dict[str, str] = {}
    for c in lineage:
        tenants[tenant_label(c.tenant, s)] = c.tenant
        ids[contract_label(c.id, c.tenant, s)] = c.id
    have = lf.collect_schema()
    back = [pl.col(col).replace({k: v for k, v in m.items() if k != v})
            for col, m in (("tenant", tenants), ("contract_id", ids)) if col in have and have[col] == pl.String]
    return lf.with_columns(back) if back else lf
