"""Published rows follow the card's rule for firm names (docs/sovereignty.md, "Firm names").

A firm that withholds its name (classification ``confidential`` or
``restricted``) has its rows published under the pseudonyms the card uses:
``tenant``, ``contract_id`` and its machine ids in ``entity``. Every string
column of every data file is read and searched for the plain names. The card's
counts still add up over the published rows, ``diff`` still reports per
contract (under the real ids: it is the lab's), a version whose firm changed
its classification is rewritten rather than appended to, withdrawing the
firm's contract finds and deletes its pseudonymised rows, and a firm that
allows its name keeps plain values.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from datalab.config import settings
from datalab.contracts import contract as contracts_mod
from datalab.policy import retention
from datalab.policy.firm_names import contract_label, machine_label, tenant_label
from datalab.store import publish, pull, state, vdiff
from tests.conftest import PUMPS, SPINDLE, deliver_validated, lab_with_dataset

START = dt.datetime(2026, 3, 2, 5, tzinfo=dt.UTC)
NAME = "rows-mixed"


def _classify(spec: Path, classification: str) -> None:
    """Set the spindle contract's classification (its firm withholds its name unless public or internal)."""
    path = spec / "providers" / "bavaria-spindle" / "spindle-telemetry.yaml"
    doc = yaml.safe_load(path.read_text())
    for cp in doc["customProperties"]:
        if cp["property"] == "sovereignty":
            cp["value"]["classification"] = classification
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _rows(m: dict) -> pl.DataFrame:
    s = settings()
    return pl.concat([pl.read_parquet(s.home / f["path"]) for f in m["files"]], how="diagonal_relaxed")


def _curated_entities(cid: str, spec: Path) -> set[str]:
    s = settings()
    c = contracts_mod.load_all(spec)[cid]
    return {e for d in state.accepted(cid, s) if d.get("curated_path")
            for e in pl.read_parquet(s.home / d["curated_path"], columns=["entity"])["entity"].drop_nulls().to_list()} \
        if c else set()


def _plain_strings(m: dict, plain: list[str]) -> list[str]:
    """Every value of every string column of the version's data files that holds one of ``plain``."""
    s = settings()
    hits = []
    for f in m["files"]:
        df = pl.read_parquet(s.home / f["path"])
        for col, dtype in df.schema.items():
            if dtype not in (pl.String, pl.Categorical):
                continue
            for v in df[col].cast(pl.String).drop_nulls().unique().to_list():
                hits += [f"{f['path']}:{col}={v!r}" for p in plain if p in v]
    return hits


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A lab whose dataset holds the spindle firm (confidential: withheld) and the pumps firm (internal: named).

    1.0.0 is published while the spindle contract is still ``internal`` (its
    rows plain), 1.0.1 after it became ``confidential`` (one more delivery),
    1.0.2 after another spindle delivery (append only).
    """
    root = tmp_path_factory.mktemp("rowpseudo")
    with lab_with_dataset(root, NAME, [SPINDLE, PUMPS]) as (spec, _):
        _classify(spec, "internal")
        deliver_validated(spec, SPINDLE, 600, 1, START, root)
        deliver_validated(spec, PUMPS, 600, 2, START, root)
        v1 = publish.publish(NAME)
        _classify(spec, "confidential")
        d2 = deliver_validated(spec, SPINDLE, 400, 3, START + dt.timedelta(days=2), root)
        v2 = publish.publish(NAME)
        d3 = deliver_validated(spec, SPINDLE, 300, 4, START + dt.timedelta(days=4), root)
        v3 = publish.publish(NAME)
        assert (v1.version, v2.version, v3.version) == ("1.0.0", "1.0.1", "1.0.2")
        yield {"spec": spec, "root": root, "v1": v1.manifest.to_dict(), "v2": v2.manifest.to_dict(), "v3": v3.manifest.to_dict(), "d2": d2, "d3": d3}


def test_withheld_firm_has_no_plain_name_or_machine_id_in_its_rows(rlab: dict) -> None:
    s = settings()
    spindle_ids = sorted(_curated_entities(SPINDLE, rlab["spec"]))
    assert spindle_ids and all(x.startswith("BSW-M") for x in spindle_ids)
    plain = ["bavaria", "Bavaria", SPINDLE, *spindle_ids]
    # the version from before the firm withheld its name is what it was (bit for bit: never rewritten)
    assert _plain_strings(rlab["v1"], plain)
    for m in (rlab["v2"], rlab["v3"]):
        assert _plain_strings(m, plain) == [], m["version"]
        assert m["sovereignty"]["rows_pseudonymised"] == {"contracts": [SPINDLE], "columns": ["tenant", "contract_id", "entity"]}
        # nor in the files' bytes (Parquet statistics and metadata are not compressed)
        for f in m["files"]:
            data = (s.home / f["path"]).read_bytes()
            assert b"bavaria" not in data and b"BSW-M" not in data, f["path"]
        df = _rows(m)
        label = tenant_label("bavaria-spindle", s)
        mine = df.filter(pl.col("tenant") == label)
        assert mine.height == m["rows_per_contract"][SPINDLE] > 0
        assert set(mine["contract_id"].unique()) == {contract_label(SPINDLE, "bavaria-spindle", s)} \
            == {"urn:datalab:" + label + ":spindle-telemetry"}
        assert set(mine["entity"].unique()) == {machine_label("bavaria-spindle", e, s) for e in spindle_ids}
        # the card's pseudonyms are the rows' pseudonyms
        vdir = s.versions / NAME / m["version"]
        sheet = json.loads((vdir / "datasheet.json").read_text())
        assert sheet["firm_labels"] == {label: "pseudonymised", "oulu-pumps": "named"}
        masks = json.loads((vdir / "firm_masks.json").read_text())
        assert masks["bavaria-spindle"] == label and {masks[e] for e in spindle_ids} == set(mine["entity"].unique())
    # 1.0.1 was rewritten (the firm withheld its name since 1.0.0); 1.0.2 appended to it
    assert not {f["path"] for f in rlab["v1"]["files"]} & {f["path"] for f in rlab["v2"]["files"]}
    assert {f["path"] for f in rlab["v2"]["files"]} < {f["path"] for f in rlab["v3"]["files"]}


def test_a_named_firm_keeps_plain_values_and_a_pull_gets_what_was_published(rlab: dict, tmp_path: Path) -> None:
    s = settings()
    m = rlab["v3"]
    pumps_ids = _curated_entities(PUMPS, rlab["spec"])
    df = _rows(m)
    named = df.filter(pl.col("tenant") == "oulu-pumps")
    assert named.height == m["rows_per_contract"][PUMPS] > 0
    assert set(named["contract_id"].unique()) == {PUMPS} and set(named["entity"].unique()) == pumps_ids
    got = pull.pull(f"{NAME}@{m['version']}", "research", tmp_path, actor="team:ml")
    pulled = pl.concat([pl.read_parquet(p) for p in got.files], how="diagonal_relaxed")
    assert pulled.sort(pulled.columns).equals(df.sort(df.columns))
    assert set(pulled["tenant"].unique()) == {"oulu-pumps", tenant_label("bavaria-spindle", s)}
    assert "bavaria" not in (got.directory / "manifest.json").read_text()


def test_card_counts_add_up_over_the_published_rows(rlab: dict) -> None:
    s = settings()
    m = rlab["v3"]
    df = _rows(m)
    sheet = json.loads((s.versions / NAME / m["version"] / "datasheet.json").read_text())
    assert sheet["rows"] == df.height == m["rows"] == sum(x["rows"] for x in sheet["firms"])
    assert {x["firm"]: x["rows"] for x in sheet["firms"]} == dict(df.group_by("tenant").agg(pl.len()).iter_rows())
    for x in sheet["firms"]:
        g = df.filter(pl.col("tenant") == x["firm"])
        assert (x["machines"], x["sensors"]) == (g["entity"].n_unique(), g["sensor"].n_unique()), x
    assert {(r["firm"], r["entity"]): r["rows"] for r in sheet["machines"]} \
        == {(t, e): n for t, e, n in df.group_by("tenant", "entity").agg(pl.len()).iter_rows()}
    assert {(r["contract_id"], r["sensor"]): r["rows"] for r in sheet["sensors"]} \
        == {(c, x): n for c, x, n in df.group_by("contract_id", "sensor").agg(pl.len()).iter_rows()}
    card = (s.versions / NAME / m["version"] / "card.md").read_text()
    for x in sheet["firms"]:
        assert f"| {x['firm']} | {x['rows']:,} |" in card


def test_diff_reports_per_contract_under_the_real_ids(rlab: dict) -> None:
    s = settings()
    new_rows = {d: pl.read_parquet(s.home / state.get(d, s)["curated_path"]).height for d in (rlab["d2"], rlab["d3"])}
    for a, b, added in (("1.0.0", "1.0.1", rlab["d2"]), ("1.0.1", "1.0.2", rlab["d3"])):
        d = vdiff.diff(NAME, a, b)
        per = {r["contract_id"]: r for r in d["rows"]["per_contract"]}
        assert set(per) == {SPINDLE, PUMPS}, per  # plain in 1.0.0, pseudonymised since: one contract each
        assert per[SPINDLE]["tenant"] == "bavaria-spindle" and per[SPINDLE]["delta"] == new_rows[added] > 0
        assert per[PUMPS]["delta"] == 0
        assert d["deliveries"]["added"] == [added]
        assert {r["contract"] for r in d["drift"] if r["column"].startswith("value[")} == {SPINDLE, PUMPS}
        assert f"{SPINDLE} (bavaria-spindle): " in vdiff.render(d)


def test_withdrawing_the_firm_finds_its_pseudonymised_rows(rlab: dict) -> None:
    from datalab.store.publish import iceberg_catalog

    s = settings()
    masked_id = contract_label(SPINDLE, "bavaria-spindle", s)
    ident = rlab["v3"]["table"]
    before = iceberg_catalog(s).load_table(ident).scan(selected_fields=("contract_id",)).to_arrow()
    n = sum(1 for x in before.column("contract_id").to_pylist() if x == masked_id)
    assert n == rlab["v3"]["rows_per_contract"][SPINDLE]
    rep = retention.withdraw_contract(SPINDLE, "firm:bavaria-spindle", "end of cooperation", s)
    assert set(rep.versions_withdrawn) == {f"{NAME}@1.0.0", f"{NAME}@1.0.1", f"{NAME}@1.0.2"}
    assert rep.iceberg[ident]["rows_deleted"] == n
    after = iceberg_catalog(s).load_table(ident).scan().to_arrow()
    assert set(after.column("contract_id").to_pylist()) == {PUMPS}
    # no data file left under the table holds the firm's rows, under its name or its pseudonym
    data = Path(iceberg_catalog(s).load_table(ident).location().removeprefix("file://")) / "data"
    for p in data.rglob("*.parquet"):
        ids = set(pl.read_parquet(p, columns=["contract_id"])["contract_id"].unique())
        assert not ids & {SPINDLE, masked_id}, p
    nxt = publish.publish(NAME)
    assert nxt.created and set(nxt.manifest.rows_per_contract) == {PUMPS}
    df = _rows(nxt.manifest.to_dict())
    assert set(df["contract_id"].unique()) == {PUMPS} and set(df["tenant"].unique()) == {"oulu-pumps"}
    assert "rows_pseudonymised" not in nxt.manifest.sovereignty
