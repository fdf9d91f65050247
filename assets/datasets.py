"""Dataset assets: publish a new version of a federated dataset from its inputs' curated data."""


import dagster as dg
from dagster import AssetExecutionContext

from assets.common import key_prefix
from datalab.config import Settings
from datalab.contracts.contract import Contract
from datalab.contracts.datasets import DatasetSpec
from datalab.store import publish
from datalab.store.manifest import Manifest
from datalab.store.storage import Store
from pipelines.resources import LabResource

VERIFY_CHECK = "version_verifies"


def build_dataset_asset(spec: DatasetSpec, contracts: dict[str, Contract]) -> dg.AssetsDefinition:
    deps = [dg.AssetKey([*key_prefix(contracts[c]), "curated"]) for c in spec.inputs]
    key = dg.AssetKey(["datasets", spec.name.replace("-", "_")])

    @dg.asset(
        key=key,
        deps=deps,
        group_name="datasets",
        description=f"{spec.title}: Iceberg table with semantic versions, manifest and card (site {spec.site}).",
        kinds={"iceberg", "parquet"},
        tags={"site": spec.site},
        check_specs=[dg.AssetCheckSpec(
            VERIFY_CHECK, asset=key, blocking=True,
            description="the version's data files, CAD files and thumbnails match the manifest's SHA-256 and "
                        "sizes, and its row counts add up (files, per contract, total)")],
    )
    def dataset(context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
        s = lab.settings()
        res = publish.publish(spec.name, actor="dagster", s=s)
        m = res.manifest or publish.read_manifest(spec.name, res.version, s)
        context.log.info(res.message)
        return dg.MaterializeResult(metadata={
            "version": res.version or "",
            "new_version": res.created,
            "why": res.message,
            "rows": dg.MetadataValue.int(m.rows),
            "files": len(m.files),
            "snapshot_id": str(m.snapshot_id),
            "table": m.table,
            "site": spec.site,
            "residency": ", ".join(m.policy["residency"]),
            "purposes": ", ".join(m.policy["purposes"]),
            "prohibited_purposes": ", ".join(m.policy["prohibited_purposes"]) or "none",
            "classification": m.policy["classification"],
            "excluded_deliveries": len(m.lineage.excluded),
            "publish_seconds": dg.MetadataValue.float(m.seconds),
            **_card_metadata(spec.name, m, s, lab.files(s)),
        }, check_results=[_verify_check(spec.name, m.version, s)])

    return dataset


def _card_metadata(name: str, m: Manifest, s: Settings, files: Store) -> dict:
    """The version's datasheet (Markdown) and its warnings, shown in the Dagster UI."""
    from datalab.store.version_check import card_with_inline_images

    card = card_with_inline_images(name, m, s)
    if card is None:
        return {}
    from datalab.store.storage import version_key

    html = version_key(name, m.version, "card.html")
    return {
        # the plots and thumbnails inline (data URIs): the UI has no base directory for relative links
        "card": dg.MetadataValue.md(card),
        "card_html": dg.MetadataValue.path(str(files.local(html)) if files.is_local else files.uri(html)),
        "datasheet_warnings": dg.MetadataValue.int((m.datasheet or {}).get("warnings", 0)),
    }


def _verify_check(name: str, version: str, s: Settings) -> dg.AssetCheckResult:
    """The asset check: the published version verifies against its manifest (``datalab.store.version_check``)."""
    from datalab.store.version_check import verify

    problems, facts = verify(name, version, s)
    return dg.AssetCheckResult(
        check_name=VERIFY_CHECK, passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        metadata={**{k: (dg.MetadataValue.int(v) if isinstance(v, int) else v) for k, v in facts.items()},
                  "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")})
