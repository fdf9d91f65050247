"""The sovereignty policy matrix on one real lab (module-scoped, built once).

Residency x site (publish, and the provider's decision on a replication),
classification x site, purpose hierarchy x request, unknown purposes,
incompatible inputs with and without an explicit exclusion, personal data
in clear, expired and withdrawn inputs. Every refusal is asserted with its
message, every allowed path is shown to work, and every decision is looked
up in the audit log. The demo dataset's datasheet is checked against its
table at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from datalab.config import settings
from datalab.errors import ContractError, PolicyRefused
from datalab.intake import landing
from datalab.policy import sovereignty, withdrawals
from datalab.store import catalog as cat
from datalab.store import publish, pull, vdiff
from datalab.timeseries import sample
from tests.conftest import CMAPSS, PRESS, PUMPS, ROOT, SPINDLE

START = dt.datetime(2026, 3, 2, 5, tzinfo=dt.UTC)
PRESS_B = "urn:datalab:lyon-presses:press-line-b"


@pytest.fixture(scope="module")
def mlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lab with curated deliveries of four firms' contracts (and press-line-b, badge not yet personal)."""
    from datalab.contracts import contract as contracts_mod
    from pipelines import runner

    root = tmp_path_factory.mktemp("matrix")
    spec = root / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    doc = yaml.safe_load((spec / "providers/lyon-presses/press-line.yaml").read_text())
    doc["id"], doc["dataProduct"], doc["name"] = PRESS_B, "press-line-b", "Press line B"
    for prop in doc["schema"][0]["properties"]:
        if prop["name"] == "operator_badge":
            prop["customProperties"] = [{"property": "role", "value": "attribute"}]
    (spec / "providers/lyon-presses/press-line-b.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATALAB_HOME", str(root / "lab"))
        mp.setenv("DATALAB_CONTRACTS", str(spec))
        mp.setenv("DATALAB_ENGINE", "cpu")
        mp.delenv("DATALAB_SITE", raising=False)
        mp.delenv("DATALAB_CATALOG_URL", raising=False)
        contracts = contracts_mod.load_all(spec)
        for i, cid in enumerate((SPINDLE, PRESS, PUMPS, CMAPSS, PRESS_B)):
            c = contracts[cid]
            defects = sample.Defects.none() if cid == CMAPSS else None  # its suite allows no defect
            f = sample.write(sample.generate(c, 300 if cid == CMAPSS else 1_200, seed=300 + i, start=START, defects=defects), root / f"{c.product}.csv")
            assert landing.push(c, [f], actor=f"firm:{c.tenant}").accepted
        assert all(r.validation_ok for r in runner.run_pending())
        yield spec


def _spec(spec: Path, name: str, inputs: list[str], site: str = "munich", **extra: object) -> str:
    (spec / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "site": site, "inputs": inputs, **extra}))
    return name


@contextlib.contextmanager
def _edited(path: Path, edit) -> Iterator[None]:
    """Edit a contract (or spec) for the duration of a block."""
    old = path.read_text()
    doc = yaml.safe_load(old)
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(old)


def _sov(doc: dict) -> dict:
    return next(cp["value"] for cp in doc["customProperties"] if cp["property"] == "sovereignty")


def _audit(action: str, subject: str | None = None) -> list[cat.AuditEntry]:
    return cat.Catalog(settings().catalog_url).audit_entries(action=action, subject=subject)


RESIDENCY_SITE = [
    ([SPINDLE], "munich", None),
    ([SPINDLE], "kajaani", r"refused by rule 'residency': site 'kajaani' \(FI, LUMI AI Factory\) is outside the residency \['DE'\] of input urn:datalab:bavaria-spindle:spindle-telemetry"),
    ([SPINDLE], "virginia", r"'residency': site 'virginia' \(US.*\['DE'\] of input urn:datalab:bavaria-spindle"),
    ([PUMPS], "kajaani", None),
    ([PUMPS], "virginia", r"'residency': site 'virginia' \(US.*\['EU'\] of input urn:datalab:oulu-pumps:pump-telemetry"),
    ([PUMPS], "garching-open", r"refused by rule 'classification': site 'garching-open' hosts data up to 'public', the dataset is 'internal' \(set by urn:datalab:oulu-pumps"),
    ([CMAPSS], "virginia", None),
    ([CMAPSS], "garching-open", None),
]


@pytest.mark.parametrize(("inputs", "site", "refusal"), RESIDENCY_SITE)
def test_residency_and_classification_by_site(mlab: Path, inputs: list[str], site: str, refusal: str | None) -> None:
    name = _spec(mlab, f"rs-{site}-{len(inputs)}-{inputs[0].split(':')[1]}", inputs, site)
    if refusal:
        with pytest.raises(PolicyRefused, match=refusal):
            publish.publish(name)
        e = _audit("publish", name)[-1]
        assert e.decision == "refused" and e.detail["site"] == site and e.detail["rule"] in ("residency", "classification")
    else:
        r = publish.publish(name)
        assert r.created and r.manifest.site.name == site and r.manifest.rows > 0
        assert _audit("publish", f"{name}@1.0.0")[-1].decision == "published"


def test_replication_needs_every_inputs_residency(mlab: Path) -> None:
    """A copy to another site needs every input's residency, decided where the data lives.

    A peer's ``datalab replicate`` gets the provider's negotiation decision
    (``negotiation.decide``): refused naming the rule and the input, the
    input as a keyed pseudonym (the peer never learns the firm's contract).
    Compute-to-data is not a copy, so residency does not stop it. Publishing
    to such a site is refused by the same rule, audited with it. (The
    negotiation's own audit of a refusal is in test_federation_replicate.)
    """
    from datalab.federation.negotiation import decide, input_label

    _spec(mlab, "rep-plant", [SPINDLE, PRESS, PUMPS])
    _spec(mlab, "rep-eu", [PRESS, PUMPS])
    publish.publish("rep-plant")
    m = publish.publish("rep-eu").manifest
    s = settings()
    # virginia hosts public data only, so its classification cap would refuse first: a US site that may hold more
    us = {"name": "oregon", "country": "US", "region": "non-EU", "operator": "test site outside the EU",
          "max_classification": "restricted"}
    with _edited(mlab / "sites.yaml", lambda d: d["sites"].append(us)):
        with pytest.raises(PolicyRefused, match=r"refused by rule 'residency': site kajaani \(FI\) is outside the residency "
                           rf"\['DE'\] \(rule residency, set by {input_label(SPINDLE, s)}\)") as e:
            decide("rep-plant", "1.0.0", "research", "kajaani", s)
        assert "bavaria" not in str(e.value)
        with pytest.raises(PolicyRefused, match=r"site oregon \(US\) is outside the residency \['EU'\] "
                           rf"\(rule residency, set by {input_label(PRESS, s)}\)"):
            decide("rep-eu", "1.0.0", "research", "oregon", s)
        with pytest.raises(PolicyRefused, match=r"rule 'classification'.*not offered to site virginia"):
            decide("rep-eu", "1.0.0", "research", "virginia", s)
        assert decide("rep-eu", "1.0.0", "research", "kajaani", s).rows == m.rows
        assert decide("rep-plant", "1.0.0", "research", "kajaani", s, data_moves=False).version == "1.0.0"
        for inputs, site, res, who in (([SPINDLE, PRESS, PUMPS], "kajaani", "DE", SPINDLE), ([PRESS, PUMPS], "oregon", "EU", PRESS)):
            name = _spec(mlab, f"rep-at-{site}", inputs, site)
            with pytest.raises(PolicyRefused, match=rf"site '{site}' \(.*\) is outside the residency \['{res}'\] of input {who}"):
                publish.publish(name)
            a = _audit("publish", name)[-1]
            assert a.decision == "refused" and a.detail["site"] == site and a.detail["rule"] == "residency"


PURPOSES = [
    # dataset inputs, requested purpose, refusal (None: allowed)
    ([PUMPS], "model-training", None),
    ([PUMPS], "model-training.fine-tuning", None),  # part of an allowed purpose
    ([PUMPS], "research.publication", None),
    ([PUMPS], "quality-control", r"'purposes': purpose 'quality-control' is not among the allowed purposes"),
    ([PUMPS], "ml-training", r"'purposes': declared purpose 'ml-training' is not in the purpose vocabulary v1\.2\.0"),
    ([PRESS, PUMPS], "predictive-maintenance.anomaly-detection", None),
    ([PRESS, PUMPS], "model-training.fine-tuning", r"'prohibited_purposes': purpose 'model-training.fine-tuning' is prohibited \('model-training' in prohibited_purposes\); set by urn:datalab:lyon-presses:press-line"),
    ([PRESS, PUMPS], "benchmarking", r"not among the allowed purposes \['predictive-maintenance', 'research'\]"),
]


@pytest.mark.parametrize(("inputs", "purpose", "refusal"), PURPOSES)
def test_purpose_hierarchy_by_request(mlab: Path, tmp_path: Path, inputs: list[str], purpose: str, refusal: str | None) -> None:
    name = _spec(mlab, f"pp-{len(inputs)}", inputs)
    publish.publish(name)
    if refusal:
        with pytest.raises(PolicyRefused, match=refusal):
            pull.pull(f"{name}@1.0.0", purpose, tmp_path, actor="team:ml")
        e = _audit("pull", f"{name}@1.0.0")[-1]
        assert e.decision == "refused" and e.detail["purpose"] == purpose
    else:
        r = pull.pull(f"{name}@1.0.0", purpose, tmp_path, actor="team:ml")
        assert pl.read_parquet(r.files).height == r.rows
        assert (r.directory / "card.html").exists() and (r.directory / "coverage.png").exists()
        e = _audit("pull", f"{name}@1.0.0")[-1]
        assert e.decision == "allowed" and e.detail["purpose"] == purpose


def test_unknown_purposes_in_contracts_and_specs_are_errors(mlab: Path) -> None:
    path = mlab / "providers/oulu-pumps/pump-telemetry.yaml"
    with _edited(path, lambda d: _sov(d)["purposes"].append("ml-training")):
        from datalab.contracts import contract as contracts_mod

        with pytest.raises(ContractError, match=r"unknown purpose 'ml-training' \(purpose vocabulary v1\.2\.0"):
            contracts_mod.load(path)
    name = _spec(mlab, "sp-unknown", [PUMPS], purposes=["training"])
    with pytest.raises(ContractError, match=r"purposes\[0\]: unknown purpose 'training'"):
        publish.publish(name)
    # a spec's declared purpose must be allowed by the inputs
    name = _spec(mlab, "sp-declared", [PRESS, PUMPS], purposes=["model-training"])
    with pytest.raises(PolicyRefused, match=r"declares purpose 'model-training'.*prohibited.*lyon-presses"):
        publish.publish(name)
    assert _audit("publish", name)[-1].decision == "refused"


def test_incompatible_inputs_stop_unless_excluded(mlab: Path) -> None:
    pumps = mlab / "providers/oulu-pumps/pump-telemetry.yaml"
    name = _spec(mlab, "inc", [SPINDLE, PUMPS])
    with _edited(pumps, lambda d: _sov(d).update(residency=["FI"])):
        with pytest.raises(PolicyRefused, match=r"(?s)residencies do not overlap.*bavaria-spindle:spindle-telemetry: residency \['DE'\].*oulu-pumps:pump-telemetry: residency \['FI'\]"):
            publish.publish(name)
        assert _audit("publish", name)[-1].detail["rule"] == "residency"
        with _edited(pumps, lambda d: _sov(d).update(residency=["EU"], purposes=["quality-control"])), \
                pytest.raises(PolicyRefused, match=r"(?s)no purpose in common.*purposes \['quality-control'\]"):
            publish.publish(name)
        _spec(mlab, "inc", [SPINDLE, PUMPS], excluded_inputs=[{"contract": PUMPS, "reason": "data must stay in Finland"}])
        r = publish.publish(name)
    assert r.created and set(r.manifest.rows_per_contract) == {SPINDLE}
    assert r.manifest.sovereignty["exclusions"] == [
        {"contract": PUMPS, "reason": "excluded by the dataset spec: data must stay in Finland", "by": "spec"}]
    x = sovereignty.explain(name, "1.0.0")
    assert {f["field"]: f["set_by"] for f in x["fields"]}["residency"] == [SPINDLE]
    assert "data must stay in Finland" in sovereignty.render_explain(x)


def test_policy_explain_names_the_input_of_every_field(mlab: Path) -> None:
    name = _spec(mlab, "explain", [SPINDLE, PRESS, PUMPS])
    publish.publish(name)
    x = sovereignty.explain(name, "1.0.0")
    fields = {f["field"]: f for f in x["fields"]}
    assert set(fields) == {"residency", "purposes", "prohibited_purposes", "classification", "license",
                           "retention_until", "personal_data", "export_control"}
    assert fields["residency"]["value"] == ["DE"] and fields["residency"]["set_by"] == [SPINDLE]
    assert fields["prohibited_purposes"]["set_by"] == [PRESS]
    assert fields["classification"]["value"] == "confidential" and fields["classification"]["set_by"] == [SPINDLE]
    assert fields["retention_until"]["value"] == "2029-06-30" and fields["retention_until"]["set_by"] == [PRESS]
    assert fields["personal_data"]["value"] is True and fields["personal_data"]["set_by"] == [PRESS]
    from typer.testing import CliRunner

    from datalab.cli.commands import app

    out = CliRunner().invoke(app, ["policy", "explain", f"{name}@1.0.0"])
    assert out.exit_code == 0 and "set by: urn:datalab:lyon-presses:press-line" in out.output


def test_personal_data_in_clear_is_refused(mlab: Path) -> None:
    path = mlab / "providers/lyon-presses/press-line-b.yaml"

    def mark_personal(d: dict) -> None:
        d["version"] = "1.1.0"
        for prop in d["schema"][0]["properties"]:
            if prop["name"] == "operator_badge":
                prop["customProperties"].append({"property": "personal", "value": True})

    name = _spec(mlab, "badge", [PRESS_B])
    with _edited(path, mark_personal):
        with pytest.raises(PolicyRefused, match=r"'personal_data': column 'operator_badge' of input urn:datalab:lyon-presses:press-line-b is classified personal and [0-9,]+ of its values are in clear"):
            publish.publish(name)
        assert _audit("publish", name)[-1].detail["rule"] == "personal_data"
        _spec(mlab, "badge", [PRESS_B], drop_columns=["operator_badge"])
        r = publish.publish(name)
        assert r.created and "operator_badge" not in r.manifest.schema
    # the pseudonymised column of the original contract passes, checked on the data
    r = publish.publish(_spec(mlab, "badge-ps", [PRESS]))
    df = pl.read_parquet([settings().home / f.path for f in r.manifest.files])
    assert df["operator_badge"].drop_nulls().str.contains(r"^ps_[0-9a-f]{16}$").all()
    assert r.manifest.sovereignty["personal_columns_checked"] == [f"{PRESS}:operator_badge"]
    key = (settings().secrets / "pseudonym.key")
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    assert not any(key.read_text().strip().encode() in p.read_bytes() for p in (settings().home / "warehouse").rglob("*.parquet"))


def test_expired_and_withdrawn_inputs(mlab: Path) -> None:
    pumps = mlab / "providers/oulu-pumps/pump-telemetry.yaml"
    name = _spec(mlab, "exp", [PRESS, PUMPS])
    v1 = publish.publish(name)
    with _edited(pumps, lambda d: _sov(d).update(retention_until="2026-01-01")):
        r = publish.publish(_spec(mlab, "exp-b", [PRESS, PUMPS]))
        assert set(r.manifest.rows_per_contract) == {PRESS}
        assert r.manifest.sovereignty["exclusions"][0]["reason"].startswith("retention_until 2026-01-01 of urn:datalab:oulu-pumps")
        with pytest.raises(PolicyRefused, match=r"every input is excluded"):
            publish.publish(_spec(mlab, "exp-c", [PUMPS]))
    assert v1.manifest.rows_per_contract.keys() == {PRESS, PUMPS}
    withdrawals.record_contract(PRESS_B, "firm:lyon-presses", "test withdrawal", settings())
    r = publish.publish(_spec(mlab, "wd", [PRESS_B, PRESS], drop_columns=[]))
    assert set(r.manifest.rows_per_contract) == {PRESS}
    assert "contract withdrawn by firm:lyon-presses" in r.manifest.sovereignty["exclusions"][0]["reason"]
    assert _audit("withdraw", PRESS_B)[-1].decision == "recorded"


def test_version_diff(mlab: Path) -> None:
    name = _spec(mlab, "vd", [PUMPS])
    publish.publish(name)
    _spec(mlab, "vd", [PUMPS, PRESS])
    publish.publish(name)
    d = vdiff.diff(name, "1.0.0", "1.1.0")
    assert "operator_badge" in d["schema"]["added"] and d["schema"]["removed"] == []
    per = {r["contract_id"]: r for r in d["rows"]["per_contract"]}
    assert per[PRESS]["rows_a"] == 0 and per[PRESS]["delta"] == d["rows"]["delta"] > 0
    assert per[PUMPS]["delta"] == 0
    assert d["policy"]["prohibited_purposes"] == [[], ["model-training"]]
    pumps_drift = [r for r in d["drift"] if r["contract"] == PUMPS and r["column"].startswith("value[")]
    assert pumps_drift and all(r["mean_shift_sd"] == 0 for r in pumps_drift)
    assert "rows:" in vdiff.render(d)
    from typer.testing import CliRunner

    from datalab.cli.commands import app

    out = CliRunner().invoke(app, ["diff", f"{name}@1.0.0", f"{name}@1.1.0"])
    assert out.exit_code == 0 and "added ['operator_badge']" in out.output
    # a replica never replaces a version: refused before any peer is asked (none is registered here), audited
    out = CliRunner().invoke(app, ["replicate", "munich", f"{name}@1.1.0", "--purpose", "research"])
    assert out.exit_code == 1 and "a replica never replaces a version" in out.output
    assert _audit("replicate", f"{name}@1.1.0")[-1].detail["rule"] == "exists"


def test_demo_dataset_datasheet_matches_the_table(mlab: Path) -> None:
    r = publish.publish("plant-telemetry")
    m = r.manifest.to_dict()
    s = settings()
    vdir = s.versions / "plant-telemetry" / m["version"]
    df = pl.read_parquet([s.home / f["path"] for f in m["files"]])
    f = json.loads((vdir / "datasheet.json").read_text())
    assert f["rows"] == df.height == m["rows"]
    # firms: spindle is confidential -> pseudonymised; press and pumps internal -> named
    labels = f["firm_labels"]
    assert labels["lyon-presses"] == "named" and labels["oulu-pumps"] == "named"
    pseudo = [k for k, v in labels.items() if v == "pseudonymised"]
    assert len(pseudo) == 1 and pseudo[0].startswith("firm-") and "bavaria" not in (vdir / "card.md").read_text()
    assert "bavaria" not in (vdir / "card.html").read_text() and "bavaria" not in (vdir / "datasheet.json").read_text()
    # issue 20: the firm's machine ids and its own licence name it too; a consumer sees neither
    for text in ((vdir / "card.md").read_text(), (vdir / "datasheet.json").read_text()):
        assert "BSW-M0" not in text and "LicenseRef-BSW" not in text
    assert f"LicenseRef-{pseudo[0]}-1" in (vdir / "card.md").read_text()
    masks = json.loads((vdir / "firm_masks.json").read_text())
    assert masks["bavaria-spindle"] == pseudo[0] and masks["BSW-M01"].startswith("machine-")
    df = df.with_columns(pl.col("contract_id").str.replace("bavaria-spindle", pseudo[0], literal=True),
                         pl.col("entity").replace(masks))
    per_tenant = dict(df.group_by("tenant").agg(pl.len()).iter_rows())
    assert sorted(x["rows"] for x in f["firms"]) == sorted(per_tenant.values())
    assert sum(x["share"] for x in f["firm_shares"]) == pytest.approx(1.0, abs=1e-3)
    for x in f["firms"]:  # per firm, from the one grouped pass: machines, sensors, time span, gaps
        if labels.get(x["firm"]) == "named":
            g = df.filter(pl.col("tenant") == x["firm"])
            assert (x["machines"], x["sensors"]) == (g["entity"].n_unique(), g["sensor"].n_unique()), x
            assert x["gaps"] == int(g["flag_gap_before"].sum()) and x["missing"] == int(g["flag_missing"].sum()), x
            assert str(g["time"].min())[:10] in str(x["time_min"]) and str(g["time"].max())[:10] in str(x["time_max"]), x
    per_machine = {(r["entity"]): r["rows"] for r in f["machines"]}
    assert per_machine == dict(df.group_by("entity").agg(pl.len()).iter_rows())
    sensors = {(r["contract_id"], r["sensor"]): r for r in f["sensors"]}
    for (cid, sensor), g in df.group_by("contract_id", "sensor"):
        x = sensors[(cid, sensor)]
        assert x["rows"] == g.height and x["missing"] == g["value"].null_count()
        ok = g.filter(~pl.col("flag_out_of_range") & ~pl.col("flag_outlier"))["value"]
        assert x["flagged"] == g["value"].drop_nulls().len() - ok.drop_nulls().len()
        assert x["mean"] == pytest.approx(ok.mean(), rel=1e-6) and x["max"] == pytest.approx(ok.max())
    assert f["flags"] == {k: int(df[k].sum()) for k in f["flags"]}
    card = (vdir / "card.md").read_text()
    assert f"**{df.height:,} rows**" in card
    for x in f["firms"]:
        assert f"| {x['firm']} | {x['rows']:,} |" in card
    for w in f["warnings"]:
        assert w in card
    for section in ("## Provenance", "## Collection", "## Preparation", "## Validation", "## Quantity and coverage",
                    "## Imbalance and possible bias", "## Known gaps and shortcomings", "## Usage policy", "## Licence and how to cite"):
        assert section in card
    for d in m["lineage"]["deliveries"]:
        assert d in card
    # operating condition shares add up to the table (shift of the reading's hour)
    assert sum(x["rows"] for x in f["condition_shares"]) == df.height
    html = (vdir / "card.html").read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html and 'src="coverage.png"' in html
    for png in ("coverage.png", "distributions.png", "quality.png"):
        data = (vdir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
    from PIL import Image

    with Image.open(vdir / "distributions.png") as im:
        assert im.size[0] > 300 and len(set(im.convert("L").getdata())) > 10  # not a blank canvas
