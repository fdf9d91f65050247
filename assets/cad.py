"""Asset factories for CAD contracts: parsed and curated, one partition per delivery.

``<tenant>/<product>/raw``: every stored file of the delivery has its
sandboxed parse facts (cached by the push check, parsed again if missing).
``<tenant>/<product>/curated``: one row per file in the canonical unit,
with flags, signature, duplicate and same-part links, thumbnails; the CAD
expectation suite runs as its blocking check (``checks/validation.py``),
exactly like the sensor suites. Thumbnails are shown in the metadata.
"""

import base64
from typing import TYPE_CHECKING, Any, cast

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from assets.common import each_delivery, key_prefix, partitions_for
from assets.common import md_table as _md_table
from assets.registry import asset_factory
from checks.validation import suite_check_spec, suite_report, validated_deliveries
from datalab.contracts.contract import Contract
from datalab.engine import MemoryWatch
from datalab.kinds import kind_of
from datalab.quality.validate import ValidationReport
from datalab.store.storage import Store
from pipelines.resources import LabResource

if TYPE_CHECKING:  # the CAD package loads with the first CAD contract (datalab.kinds), not with the assets
    from datalab.cad.curate import CadCurationStats

MAX_THUMBS = 8
PREVIEW = ["file_name", "format", "schema", "length_unit", "faces", "triangles", "volume_mm3", "area_mm2",
           "bbox_x_mm", "bbox_y_mm", "bbox_z_mm", "flags", "same_part_as", "duplicate_of"]


def thumbnails_md(df: pl.DataFrame, thumbs_root: str, files: Store) -> dg.MetadataValue:
    """Markdown with the parts' PNGs inlined (data URIs), so the Dagster UI shows them.

    ``thumbs_root``: the key of the folder beside the curated table, in the lab's store.
    """
    cells = []
    for name, rel in df.select("file_name", "thumbnail").head(MAX_THUMBS).iter_rows():
        if not rel:
            continue
        try:
            b64 = base64.b64encode(files.read_bytes(f"{thumbs_root}/{rel}")).decode()
        except OSError:
            continue
        cells.append(f"**{name}**\n\n![{name}](data:image/png;base64,{b64})")
    return dg.MetadataValue.md("\n\n".join(cells) or "no thumbnails")


@asset_factory("cad")
def build_cad_assets(contract: Contract) -> list[dg.AssetsDefinition]:
    parts = partitions_for(contract)
    kind = kind_of(contract)  # datalab.cad.kind: parse, curate (through the registry, like the core)
    prefix = key_prefix(contract)
    raw_key = dg.AssetKey([*prefix, "raw"])
    tags = {"tenant": contract.tenant, "kind": contract.kind}

    @dg.asset(key=raw_key, partitions_def=parts, group_name=contract.slug,
              description=f"{contract.name}: each file parsed in the sandbox (STEP header + OpenCASCADE, STL, DXF).",
              metadata={"contract": contract.id, "contract_version": contract.version}, tags=tags,
              kinds={"python", "json"})
    def raw(context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
        s = lab.settings()

        def one(d: str) -> dict[str, Any]:
            with MemoryWatch() as mw:
                st = kind.read_raw(contract, d, s)
            return {"delivery_id": d, "files": st["files"], "cached": st["cached"], "parsed": st["parsed"],
                    "bytes_in": dg.MetadataValue.int(st["bytes_in"]), "seconds": dg.MetadataValue.float(st["seconds"]),
                    "peak_rss_mb": dg.MetadataValue.float(round(mw.peak_mb, 1))}

        return each_delivery(context, one)

    curated_key = dg.AssetKey([*prefix, "curated"])

    @dg.asset(key=curated_key, partitions_def=parts, deps=[raw_key], group_name=contract.slug,
              description=f"{contract.name}: one row per file in {contract.section.canonical_unit}, flags, signature, "
                          "thumbnails; validated by the CAD suite.",
              check_specs=[suite_check_spec(contract, curated_key)], metadata={"contract": contract.id}, tags=tags,
              kinds={"polars", "parquet", "great_expectations"})
    def curated(context: AssetExecutionContext, lab: LabResource) -> dg.MaterializeResult:
        s = lab.settings()
        files = lab.files(s)

        def one(d: str) -> tuple[dict[str, Any], ValidationReport]:
            path = kind.curated_path(contract, d, s)
            try:
                with MemoryWatch() as mw:
                    st = cast("CadCurationStats", kind.curate(contract, d, s))  # the CAD kind's record (datalab.cad.curate)
                    report = suite_report(contract, d, path)
                df = pl.read_parquet(path)
            finally:
                files.evict(path)  # with an object store: this worker's copy (the store holds the file)
            return {
                "delivery_id": d,
                "files": dg.MetadataValue.int(st.rows_out),
                "formats": ", ".join(f"{k}: {v}" for k, v in sorted(st.formats.items())),
                "flags": ", ".join(f"{k}: {v}" for k, v in sorted(st.flags.items())) or "none",
                "duplicates": dg.MetadataValue.int(st.duplicates),
                "same_part_links": dg.MetadataValue.int(st.same_part_links),
                "converted_to_canonical_unit": dg.MetadataValue.int(st.values_converted),
                "classification": contract.policy.classification,
                "export_control": contract.policy.export_control,
                "curation_seconds": dg.MetadataValue.float(st.seconds),
                "peak_rss_mb": dg.MetadataValue.float(round(mw.peak_mb, 1)),
                "path": dg.MetadataValue.path(str(path) if files.is_local else files.uri(files.key(path))),
                "preview": _md_table(df.select(PREVIEW).head(10)),
                "thumbnails": thumbnails_md(df, files.key(path.parent), files),  # thumbnails lie in thumbs/ beside the table
            }, report

        return validated_deliveries(context, s, one)

    return [raw, curated]
