"""The kinds of data are plug-ins: one registry (datalab.kinds), no kind named by the core.

* both kinds are registered and implement the ``Kind`` protocol;
* a contract naming an unknown kind is refused with the kinds the lab knows;
* a third kind registered here, in the test (a fake "images" kind), loads its
  contract section, lands a push, gives the GX runner its suite, its card
  section and its Dagster factory, without a change to any core module;
* no module outside a kind's package names a kind (scanned with ``ast``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from datalab import kinds
from datalab.contracts import contract as contracts_mod
from datalab.errors import ContractError
from datalab.kinds import sections
from datalab.store.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
TOOLING = ROOT / "data_contracts" / "providers" / "lyon-presses" / "tooling-cad.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def test_both_kinds_are_registered_and_implement_the_protocol():
    assert set(kinds.registered()) >= {"timeseries", "cad"}
    assert sections.names() == kinds.registered()  # one list: the contract reads the registry's
    for name in ("timeseries", "cad"):
        k = kinds.get_kind(name)
        assert isinstance(k, kinds.Kind)
        assert k.name == name and k.asset_factory == name
        assert kinds.get_kind(name) is k  # loaded once
    assert kinds.get_kind("cad").section.key == "cad" and kinds.get_kind("timeseries").section.columns


def test_kind_of_a_contract_and_of_a_manifest(contracts):
    tooling = contracts["urn:datalab:lyon-presses:tooling-cad"]
    spindle = contracts["urn:datalab:bavaria-spindle:spindle-telemetry"]
    assert kinds.kind_of(tooling).name == "cad" and kinds.kind_of(spindle).name == "timeseries"
    assert tooling.section.canonical_unit == "mm"  # the CAD section, as cad/settings.py built it
    assert spindle.section is None and spindle.series and not tooling.series
    assert kinds.kind_of_manifest(_m(cad={})).name == "timeseries"  # an empty section: nothing attached
    assert kinds.kind_of_manifest(_m(cad={"files": [{"name": "a"}]})).name == "cad"
    assert kinds.kind_of_manifest(_m()).name == "timeseries"


def test_reading_a_series_manifest_loads_no_other_kind():
    import subprocess
    import sys

    code = ("import sys; from datalab import kinds; from datalab.store.manifest import Manifest; "
            f"kinds.kind_of_manifest(Manifest.from_dict({_MANIFEST!r})); "
            "print(sorted(m for m in sys.modules if m.startswith('datalab.cad')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_curated_schema_is_declared_by_the_kind(contracts):
    from datalab.cad.features import SCHEMA
    from datalab.timeseries.curate import FLAGS

    spindle = contracts["urn:datalab:bavaria-spindle:spindle-telemetry"]
    ts = kinds.kind_of(spindle).curated_schema(spindle)
    assert ts.flags == tuple(FLAGS) and set(ts.flags) <= set(ts.columns)
    assert ts.columns[:3] == ("delivery_id", "entity", "time")
    assert [a.name for a in spindle.attributes] == [c for c in ts.columns if c in {a.name for a in spindle.attributes}]
    tooling = contracts["urn:datalab:lyon-presses:tooling-cad"]
    cad = kinds.kind_of(tooling).curated_schema(tooling)
    assert cad.columns == tuple(SCHEMA) and cad.flags == ("flags",)


def test_each_kind_names_its_flags_once(contracts):
    """The flags a kind's table carries and the words the datasheet and the manifest use for them: one list."""
    from datalab.timeseries import schema

    spindle = contracts["urn:datalab:bavaria-spindle:spindle-telemetry"]
    tooling = contracts["urn:datalab:lyon-presses:tooling-cad"]
    for c in (spindle, tooling):
        k = kinds.kind_of(c)
        assert tuple(k.flag_words) == k.curated_schema(c).flags and all(k.flag_words.values())
    assert dict(kinds.kind_of(spindle).flag_words) == {f.column: f.meaning for f in schema.FLAGS}


def _contract_text(kind: str, section: str = "") -> str:
    text = TOOLING.read_text().replace("  - property: kind\n    value: cad\n", f"  - property: kind\n    value: {kind}\n")
    start = text.index("  - property: cad\n")
    end = text.index("  - property: limits\n")
    return text[:start] + section + text[end:]


def test_an_unknown_kind_names_the_contract_and_the_known_kinds(lab, tmp_path):
    p = tmp_path / "photos.yaml"
    p.write_text(_contract_text("images"))
    with pytest.raises(ContractError) as e:
        contracts_mod.load(p)
    msg = str(e.value)
    assert str(p) in msg and "'images'" in msg and "timeseries" in msg and "cad" in msg
    with pytest.raises(ContractError) as e:
        kinds.get_kind("images", "urn:x:photos")
    assert "contract urn:x:photos" in str(e.value) and "unknown kind 'images'" in str(e.value)
    assert "known kinds: timeseries, cad" in str(e.value)


# --------------------------------------------------------------------------
# a third kind, registered by the test alone


def _lint_images(value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: the images section must be a mapping"]
    px = value.get("max_pixels")
    return [] if isinstance(px, int) and px > 0 else [f"{where}.max_pixels: a positive number of pixels, got {px!r}"]


@dataclass(frozen=True)
class _Counted:
    """The images kind's curation statistics (a ``kinds.CurationRecord``)."""

    rows_in: int
    rows_out: int

    def to_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out}


class ImagesKind:
    """A minimal kind: a PNG is accepted by its magic bytes; its table is one row per image."""

    name = "images"
    asset_factory = "images"
    manifest_key = "images"
    validate_in_chunks = False
    datasheet_facts = False
    flag_words = MappingProxyType({"flags": "image flags"})

    @property
    def section(self) -> sections.Section:
        return sections.get(self.name)

    def check_staged(self, contract, staged, s):
        from datalab.intake.receipts import FileReceipt

        out = []
        for name, path, sha, size, _over in staged:
            fr = FileReceipt(name=name, sha256=sha, bytes=size, rows=1, format="png", compression=None)
            if path.read_bytes()[:8] != PNG:
                fr.reasons.append(f"{name}: not a PNG (rule: images.format)")
                fr.rows = 0
            out.append(fr)
        return out

    def raw_writer(self, contract, delivery_id, s):
        return None

    def read_file(self, contract, name, path, sniffed, sink, side):
        raise AssertionError("check_staged checks every file")

    def read_raw(self, contract, delivery_id, s=None):
        return {}

    def curate(self, contract, delivery_id, s=None, engine=None):
        return _Counted(0, 0)

    def curated_path(self, contract, delivery_id, s):
        return s.curated / contract.tenant / contract.product / f"{delivery_id}.parquet"

    def curated_schema(self, contract):
        return kinds.CuratedSchema(columns=("file_name", "width", "height", "flags"), flags=("flags",))

    def sample(self, contract, out_dir, rows, **kw):
        raise ValueError(f"{contract.id}: images are not generated")

    def suite(self, contract):
        from datalab.quality.expectations import ExpectationSpec

        return [ExpectationSpec("expect_column_values_to_be_between",
                                {"column": "width", "min_value": 1, "max_value": contract.section["max_pixels"]},
                                "images.max_pixels")]

    def attach_files(self, dataset, included, contracts, policy, s):
        return {"files": [d["id"] for d in included]}

    def card_section(self, manifest):
        return ["", "## Preparation (images)", f"{len(manifest.sections['images']['files'])} deliveries of PNG images."]

    def pull_files(self, manifest, out, s, copy):
        return []

    def attached(self, manifest):
        return []

    def download_folders(self, manifest):
        return []


_MANIFEST = {"title": "Photos", "version": "1.0.0", "dataset": "photos", "rows": 1, "rows_per_contract": {},
             "version_reason": "first version", "created_at": "2026-01-01T00:00:00Z", "files": [],
             "site": {"name": "lyon", "country": "FR"},
             "lineage": {"contracts": [], "deliveries": ["d-1"], "excluded": []}, "validation": {}, "schema": {},
             "policy": {}}


def _m(**sections: object) -> Manifest:
    """A manifest carrying the given kinds' sections."""
    return Manifest.from_dict({**_MANIFEST, **sections})


@pytest.fixture
def images_kind():
    kinds.register("images", ImagesKind, lambda: sections.Section(key="images", lint=_lint_images, build=dict),
                   manifest_key="images")
    try:
        yield kinds.get_kind("images")
    finally:
        kinds.unregister("images")


def test_a_third_kind_plugs_in_through_the_registry_alone(lab, tmp_path, images_kind):
    from datalab.intake import landing
    from datalab.quality import validate
    from datalab.store import card

    assert "images" in kinds.registered() and isinstance(images_kind, kinds.Kind)
    # its contract section, linted and built by its own parser
    bad = tmp_path / "bad.yaml"
    bad.write_text(_contract_text("images", "  - property: images\n    value: {max_pixels: -1}\n"))
    with pytest.raises(ContractError, match=r"customProperties\[1\]\.value\.max_pixels: a positive number"):
        contracts_mod.load(bad)
    good = tmp_path / "photos.yaml"
    good.write_text(_contract_text("images", "  - property: images\n    value: {max_pixels: 4096}\n"))
    c = contracts_mod.load(good)
    assert c.kind == "images" and c.section == {"max_pixels": 4096} and not c.series
    assert kinds.kind_of(c) is images_kind
    # landing asks the kind to check the staged files
    png, txt = tmp_path / "part.png", tmp_path / "part.txt"
    png.write_bytes(PNG + b"rest of the image")
    txt.write_text("not an image")
    ok = landing.push(c, [png], actor="firm:lyon-presses")
    assert ok.accepted and ok.rows == 1 and ok.files[0].format == "png"
    no = landing.push(c, [txt], actor="firm:lyon-presses")
    assert not no.accepted and no.reasons == ["part.txt: not a PNG (rule: images.format)"]
    # the GX runner's suite, the card's section, the manifest's kind
    assert [sp.source for sp in validate._suite_for(c)] == ["images.max_pixels"]
    m = _m(images={"files": ["d-1"]})
    assert kinds.kind_of_manifest(m) is images_kind
    md = card.render_card(m.replace(policy=c.policy.to_dict()), {}, images_kind.card_section(m))
    assert "## Preparation (images)" in md and "## Preparation\n" not in md


def test_a_third_kind_finds_its_dagster_factory_by_name(lab, tmp_path, images_kind):
    from assets import registry

    p = tmp_path / "photos.yaml"
    p.write_text(_contract_text("images", "  - property: images\n    value: {max_pixels: 4096}\n"))
    c = contracts_mod.load(p)
    assert registry.factory_for(c) is None  # no assets/images.py: the kind has no assets, the definitions skip it
    built = []

    @registry.asset_factory("images")
    def build_images_assets(contract):
        built.append(contract.id)
        return []

    try:
        assert registry.factory_for(c) is build_images_assets
    finally:
        registry._FACTORIES.pop("images", None)


def test_the_repositorys_kinds_find_their_asset_factories(contracts):
    from assets import registry
    from assets.cad import build_cad_assets
    from assets.timeseries import build_timeseries_assets

    assert registry.factory_for(contracts["urn:datalab:lyon-presses:tooling-cad"]) is build_cad_assets
    assert registry.factory_for(contracts["urn:datalab:bavaria-spindle:spindle-telemetry"]) is build_timeseries_assets


# --------------------------------------------------------------------------
# no module outside a kind names a kind: what a new kind would have to edit

KIND_PACKAGES = ("datalab.cad", "datalab.timeseries")
REGISTRY = ("datalab/kinds/",)


def _kind_words() -> set[str]:
    words = set(kinds.registered())
    words |= {k for k in (kinds.get_kind(n).manifest_key for n in kinds.registered()) if k}
    return words


def _str_consts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def kind_mentions(source: str, words: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` names a kind: imports of a kind's package, ``x.kind == "cad"``
    (or ``in (...)``), and ``m.get("cad")`` / ``m["cad"]`` on a kind's manifest key."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, f"import {a.name}") for a in node.names if a.name.startswith(KIND_PACKAGES)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(KIND_PACKAGES):
            out.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("import_module", "__import__"):
                out += [(node.lineno, f"import_module({v!r})") for v in _str_consts(node.args[0])
                        if v.startswith(KIND_PACKAGES)]
            elif node.func.attr == "get":
                out += [(node.lineno, f".get({v!r})") for v in _str_consts(node.args[0]) if v in words]
        elif isinstance(node, ast.Subscript):
            out += [(node.lineno, f"[{v!r}]") for v in _str_consts(node.slice) if v in words]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(x, ast.Attribute) and x.attr == "kind" for x in sides):
                out += [(node.lineno, f"kind compared with {v!r}") for x in sides for v in _str_consts(x) if v in words]
    return out


def test_the_scan_finds_what_a_new_kind_would_have_to_edit():
    words = {"cad", "timeseries"}
    caught = [
        'if contract.kind == "cad":\n    pass',
        'if c.kind not in ("timeseries", "cad"):\n    pass',
        'if m.get("cad"):\n    pass',
        'x = m["cad"]["files"]',
        "from datalab.cad.publish import card_section",
        "import datalab.timeseries.kind",
        'importlib.import_module("datalab.cad.suite")',
    ]
    for src in caught:
        assert kind_mentions(src, words), src
    clean = ['if kind_of(contract).datasheet_facts:\n    pass', 'x = m.get("files")', 'tags = {"kind": contract.kind}',
             "from datalab.kinds import kind_of"]
    for src in clean:
        assert not kind_mentions(src, words), src


def test_no_core_module_names_a_kind():
    """The files a new kind must touch outside its own package and the registries: none."""
    words = _kind_words()
    files = [p for p in sorted((ROOT / "datalab").rglob("*.py"))
             if not str(p.relative_to(ROOT)).startswith(("datalab/cad/", "datalab/timeseries/", *REGISTRY))]
    files += [ROOT / "pipelines" / p.name for p in sorted((ROOT / "pipelines").glob("*.py"))]
    files += [ROOT / "checks" / p.name for p in sorted((ROOT / "checks").glob("*.py"))]
    files += [ROOT / "assets" / n for n in ("__init__.py", "registry.py", "datasets.py")]
    assert len(files) > 60  # the scan covers the core
    offenders = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in files for line, what in kind_mentions(p.read_text(), words)]
    assert offenders == []
