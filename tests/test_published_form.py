"""A firm that withholds its name: curation writes its published form, and publishing copies it (issue 21).

The version's rows of such a firm hold its pseudonyms (tenant, contract id,
machine ids). Curation writes those rows once more while its result is in
memory (``curate.PublishedForm``, ``engine.Twin``), in both of its paths (one
plan, written by Polars; buckets, written by the part writer). The tests
check that the form holds exactly the rows the rewrite would give, that a
publish copies it byte for byte, that a form whose mask no longer matches is
not used (the rows are rewritten as before), that a named firm gets no form,
and that withdrawing the firm deletes the forms with its other files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
import yaml

from datalab.config import settings
from datalab.contracts import contract as contracts_mod
from datalab.policy import firm_names, retention
from datalab.store import catalog as cat
from datalab.store import publish, state, table_stream
from datalab.timeseries import curate
from tests.conftest import PUMPS, ROOT, SPINDLE, deliver_validated, lab_with_dataset

START = dt.datetime(2026, 5, 4, 6, tzinfo=dt.UTC)


def _dataset(spec: Path, name: str, inputs: list[str]) -> None:
    (spec / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "site": "munich", "inputs": inputs}))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def flab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The spindle firm (confidential: withheld) with a delivery curated in buckets and one in a single plan,
    and the pumps firm (internal: named) with one delivery."""
    root = tmp_path_factory.mktemp("pubform")
    with lab_with_dataset(root, "forms", [SPINDLE, PUMPS], DATALAB_CURATE_BUCKET_ROWS="1000") as (spec, mp):
        # (the 3,000-reading delivery runs in buckets)
        mp.setattr(curate, "PUBLISHED_FORM_ROWS", 100)  # both spindle deliveries get a form ...
        big = deliver_validated(spec, SPINDLE, 3000, 11, START, root)
        small = deliver_validated(spec, SPINDLE, 400, 12, START + dt.timedelta(days=3), root)
        named = deliver_validated(spec, PUMPS, 500, 13, START, root)
        mp.setattr(curate, "PUBLISHED_FORM_ROWS", 1_000)
        tiny = deliver_validated(spec, SPINDLE, 200, 14, START + dt.timedelta(days=6), root)  # ... this one, under it, none
        yield {"spec": spec, "root": root, "big": big, "small": small, "named": named, "tiny": tiny}


def _expected(d: str, spec: Path) -> pl.DataFrame:
    """What publishing would write for delivery ``d`` without a published form (the rewrite path)."""
    s = settings()
    c = contracts_mod.load_all(spec)[SPINDLE]
    cur = s.home / state.get(d, s)["curated_path"]
    entities = pl.read_parquet(cur, columns=["entity"])["entity"].drop_nulls().unique().to_list()
    mask = firm_names.row_mask(c, entities, s)
    assert mask is not None and mask.entities
    part = table_stream.Part(cur, mask.contract_id, mask.tenant, c.version, d, (), mask.entities)
    return table_stream.conformed(part, dict(pl.read_parquet_schema(cur))).collect()


def test_curation_writes_the_published_form_of_a_withheld_firm(flab: dict) -> None:
    s = settings()
    for d in (flab["big"], flab["small"]):
        st = state.get(d, s)
        cur = s.home / st["curated_path"]
        form = st["stats"]["curated"]["published_form"]
        assert form["key"] == str(Path(st["curated_path"]).with_name(f"{d}.published.parquet"))
        twin = s.home / form["key"]
        got = pl.read_parquet(twin)
        assert list(got.schema.items()) == list(pl.read_parquet_schema(cur).items())  # plain strings, same order
        assert got.equals(_expected(d, flab["spec"])), d
        assert b"bavaria" not in twin.read_bytes() and b"BSW-M" not in twin.read_bytes()
        # the machine ids of its rows, so that a publish need not read them from the file
        assert form["machines"] == sorted(pl.read_parquet(cur, columns=["entity"])["entity"].drop_nulls().unique())
    assert state.get(flab["big"], s)["stats"]["curated"]["series_buckets"] > 1  # the part writer's path
    assert state.get(flab["small"], s)["stats"]["curated"]["series_buckets"] == 1  # the single plan's
    # a named firm's delivery has none, nor has a delivery under PUBLISHED_FORM_ROWS
    for d in (flab["named"], flab["tiny"]):
        st = state.get(d, s)
        assert "published_form" not in st["stats"]["curated"]
        assert not (s.home / st["curated_path"]).with_name(f"{d}.published.parquet").exists()


def test_publish_copies_the_form_and_rewrites_when_the_mask_changed(flab: dict) -> None:
    s = settings()
    forms = {d: s.home / state.get(d, s)["stats"]["curated"]["published_form"]["key"] for d in (flab["big"], flab["small"])}
    v = publish.publish("forms")
    assert flab["tiny"] in v.manifest.lineage.deliveries  # rewritten at publish, as before forms
    files = {f.sha256: s.home / f.path for f in v.manifest.files}
    assert {_sha(p) for p in forms.values()} <= set(files)  # byte for byte
    assert "published_form" not in json.dumps(v.manifest.to_dict()) and "BSW-M" not in json.dumps(v.manifest.to_dict())
    rows = pl.concat([pl.read_parquet(p) for p in files.values()], how="diagonal_relaxed")
    mine = rows.filter(pl.col("contract_id") == firm_names.contract_label(SPINDLE, "bavaria-spindle", s))
    expected = pl.concat([_expected(d, flab["spec"]) for d in sorted([*forms, flab["tiny"]])])
    assert mine.sort(mine.columns).equals(expected.sort(expected.columns))
    # the fingerprint no longer matches (as after a new pseudonym key): the rows are rewritten, the same rows
    big = state.get(flab["big"], s)
    stats = big["stats"]
    stats["curated"]["published_form"]["mask_sha256"] = "0" * 64
    with cat.Catalog(s.catalog_url).begin() as conn:
        conn.execute(sa.update(cat.processing).where(cat.processing.c.delivery_id == flab["big"]).values(stats=json.dumps(stats)))
    _dataset(flab["spec"], "forms-again", [SPINDLE])
    again = publish.publish("forms-again")
    shas = {f.sha256 for f in again.manifest.files}
    assert _sha(forms[flab["small"]]) in shas and _sha(forms[flab["big"]]) not in shas
    rows2 = pl.concat([pl.read_parquet(s.home / f.path) for f in again.manifest.files], how="diagonal_relaxed")
    assert rows2.sort(rows2.columns).equals(expected.sort(expected.columns))


def test_withdrawal_deletes_the_published_forms(flab: dict) -> None:
    s = settings()
    forms = [s.home / state.get(d, s)["stats"]["curated"]["published_form"]["key"] for d in (flab["big"], flab["small"])]
    assert all(p.exists() for p in forms)
    retention.withdraw_contract(SPINDLE, "firm:bavaria-spindle", "end of cooperation", s)
    assert not any(p.exists() for p in forms)
    assert not list((s.home / "curated" / "bavaria-spindle").rglob("*.parquet"))


def test_the_published_form_on_object_storage(lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 (moto's server on loopback): the form is uploaded, not left on this machine, copied into the
    version from the bucket, and deleted from it with the firm's other objects."""
    from datalab.store.storage import store
    from tests.conftest import s3_server

    with s3_server() as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("DATALAB_STORAGE", "s3://lab-bucket/site-a")
        monkeypatch.setenv("DATALAB_SCRATCH", str(lab.parent / "scratch"))
        spec = tmp_path / "contracts"
        shutil.copytree(ROOT / "data_contracts", spec)
        _dataset(spec, "forms-s3", [SPINDLE])
        monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
        monkeypatch.setattr(curate, "PUBLISHED_FORM_ROWS", 0)
        d = deliver_validated(spec, SPINDLE, 800, 21, START, tmp_path)
        s, st = settings(), store()
        key = state.get(d, s)["stats"]["curated"]["published_form"]["key"]
        assert st.exists(key) and not st.local(key).exists()  # uploaded, no copy left here
        twin_sha = hashlib.sha256(st.read_bytes(key)).hexdigest()
        v = publish.publish("forms-s3")
        assert [f.sha256 for f in v.manifest.files] == [twin_sha]
        assert st.read_bytes(v.manifest.files[0].path) == st.read_bytes(key)
        retention.withdraw_contract(SPINDLE, "firm:bavaria-spindle", "end of cooperation", s)
        assert not st.exists(key)
        assert [o.key for o in st.list("curated")] == []
