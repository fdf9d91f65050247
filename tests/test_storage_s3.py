"""The lab's store on S3-compatible object storage: moto's S3 server on loopback.

Skips with its reason where ``moto[server]`` is not installed (the ``cluster``
extra). The server runs in its own process on a random port and is stopped
by its pid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datalab.config import settings
from datalab.errors import DatalabError
from tests.conftest import s3_server


@pytest.fixture
def s3(lab: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with s3_server() as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("DATALAB_STORAGE", "s3://lab-bucket/site-a")
        monkeypatch.setenv("DATALAB_SCRATCH", str(lab.parent / "scratch"))
        yield env["AWS_ENDPOINT_URL"]


def test_store_defaults_to_home(lab: Path) -> None:
    from datalab.store.storage import store

    st = store()
    assert st.is_local and st.url == str(settings().home)
    st.write_bytes("raw/firm-a/x.parquet", b"abc")
    assert (lab / "raw" / "firm-a" / "x.parquet").read_bytes() == b"abc"
    with pytest.raises(DatalabError, match=r"'\.\.'"):
        st.write_bytes("raw/../../etc/passwd", b"")
    # a path is a key only inside the files root, and never climbs out of it
    assert st.key(lab / "raw" / "firm-a" / "x.parquet") == "raw/firm-a/x.parquet"
    with pytest.raises(DatalabError, match=r"'\.\.'"):
        st.key(lab / "raw" / ".." / ".." / "etc")
    with pytest.raises(DatalabError, match="not under the lab's files root"):
        st.fetch(Path("/etc/passwd"))


def test_withdrawal_on_object_storage_leaves_no_object(s3: str, tmp_path: Path) -> None:
    import polars as pl
    import pyarrow.fs as pafs

    from datalab.store.storage import store

    st = store()
    assert not st.is_local
    df = pl.DataFrame({"entity": ["M1", "M2"], "value": [1.0, 2.0]})
    local = tmp_path / "x.parquet"
    df.write_parquet(local)
    for firm in ("firm-a", "firm-b"):
        for area in ("landing", "raw", "curated"):
            st.upload(local, f"{area}/{firm}/d-1.parquet")
    # readable by Polars straight from the object store
    back = pl.read_parquet(st.uri("curated/firm-a/d-1.parquet"),
                           storage_options={"aws_endpoint_url": s3, "aws_access_key_id": "test",
                                            "aws_secret_access_key": "test", "aws_region": "us-east-1"})
    assert back.equals(df)
    n, nbytes = 0, 0
    for area in ("landing", "raw", "curated"):
        k, b = st.delete_prefix(f"{area}/firm-a")
        n, nbytes = n + k, nbytes + b
    assert n == 3 and nbytes == 3 * local.stat().st_size
    # listed by prefix, and scanned object by object: nothing of firm-a remains
    assert [o.key for o in st.list() if "firm-a" in o.key] == []
    raw_fs = pafs.S3FileSystem(endpoint_override=s3.removeprefix("http://"), scheme="http",
                               access_key="test", secret_key="test", region="us-east-1")
    everything = [i.path for i in raw_fs.get_file_info(pafs.FileSelector("lab-bucket", recursive=True))
                  if i.type == pafs.FileType.File]
    assert everything and not [p for p in everything if "firm-a" in p]
    assert sorted(o.key for o in st.list()) == [f"{a}/firm-b/d-1.parquet" for a in ("curated", "landing", "raw")]
    with pytest.raises(DatalabError, match="whole store"):
        st.delete_prefix("/")


def test_iceberg_warehouse_on_object_storage(s3: str, lab: Path) -> None:
    """pyiceberg's FileIO writes and reads a table on the object store; its catalog stays in SQL."""
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    from datalab.store.storage import iceberg_properties, store

    st = store()
    lab.mkdir(parents=True, exist_ok=True)
    ice = SqlCatalog("datalab", uri=f"sqlite:///{lab / 'catalog.db'}", warehouse=st.uri("warehouse"),
                     **iceberg_properties())
    ice.create_namespace_if_not_exists("datalab")
    data = pa.table({"entity": ["M1", "M2", "M3"], "value": [1.0, 2.0, 3.0]})
    tbl = ice.create_table("datalab.t", schema=data.schema)
    tbl.append(data)
    assert tbl.location().startswith("s3://lab-bucket/site-a/warehouse")
    assert ice.load_table("datalab.t").scan().to_arrow().sort_by("entity").equals(data)
    keys = [o.key for o in st.list("warehouse")]
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
    # nothing of the table's data under the local home
    assert not [p for p in lab.rglob("*.parquet")]


def _objects_holding(st, markers: list[bytes]) -> dict[str, list[bytes]]:
    """Every object of the store whose bytes hold one of ``markers`` (the byte-level proof)."""
    out: dict[str, list[bytes]] = {}
    for o in st.list():
        data = st.read_bytes(o.key)
        hit = [m for m in markers if m in data]
        if hit:
            out[o.key] = hit
    return out


DATA_AREAS = ("landing", "staging", "raw", "curated", "warehouse", "versions")


def _data_under(root: Path) -> list[str]:
    """Data files under ``root``: Parquet anywhere, or any file in a data area."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and (p.suffix == ".parquet" or p.relative_to(root).parts[0] in DATA_AREAS))


@pytest.mark.slow
def test_pipeline_on_object_storage_end_to_end(s3: str, lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    """push → Dagster (in-process) → publish → pull → verify → withdrawal, every data file in the object store."""
    import datetime as dt
    import hashlib
    import shutil

    import polars as pl
    import yaml

    from datalab.intake import landing
    from datalab.policy import retention
    from datalab.store import pull, version_check
    from datalab.store.storage import store
    from datalab.timeseries import sample
    from pipelines import runner
    from tests.conftest import PRESS, PUMPS, ROOT

    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    (spec / "datasets" / "mix.yaml").write_text(yaml.safe_dump({"name": "mix", "site": "munich", "inputs": [PUMPS, PRESS]}))
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    recs = []
    for i, cid in enumerate((PUMPS, PRESS, PUMPS)):
        c = contracts[cid]
        f = sample.write(sample.generate(c, 1_500, seed=80 + i, start=start + dt.timedelta(days=i)), tmp_path / f"{c.product}-{i}.csv")
        recs.append(landing.push(c, [f], actor=f"firm:{c.tenant}"))
    assert all(r.accepted for r in recs), [r.reasons for r in recs]
    st = store()
    assert not st.is_local
    keys = [o.key for o in st.list()]
    assert sum(k.startswith("landing/") for k in keys) == 3 and sum(k.startswith("raw/") for k in keys) == 3
    runs = runner.run_pending()
    assert len(runs) == 3 and all(r.success and r.validation_ok for r in runs), runs
    assert sum(k.startswith("curated/") for k in (o.key for o in st.list())) == 3
    v1 = runner.publish("mix")
    assert v1["new_version"] and v1["version"] == "1.0.0"
    s = settings()
    m = publish_manifest("mix", "1.0.0")
    assert m.files and all(st.exists(f.path) for f in m.files)
    assert st.exists("versions/mix/1.0.0/manifest.json") and st.exists("versions/mix/1.0.0/card.md")
    # the Iceberg table is in the object store, its data files those the manifest lists
    from datalab.store.publish import iceberg_catalog

    tbl = iceberg_catalog(s).load_table(m.table)
    assert tbl.location().startswith("s3://lab-bucket/site-a/warehouse/")
    assert tbl.scan().to_arrow().num_rows == m.rows == sum(f.rows for f in m.files)
    # pull copies the objects, verified against the manifest's checksums
    got = pull.pull("mix@1.0.0", "research", tmp_path / "pulled", actor="team:ml")
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in got.files[:len(m.files)]] == [f.sha256 for f in m.files]
    assert (got.directory / "card.md").read_text().startswith("# ")
    assert pl.read_parquet(got.files[:len(m.files)]).height == m.rows
    # read in place: Polars reads the objects itself
    lf = pull.open_dataset("mix", "1.0.0", "research", actor="team:ml")
    assert lf.select(pl.len()).collect().item() == m.rows
    assert version_check.verify("mix", "1.0.0", s)[0] == []
    _served_from_the_object_store(m, tmp_path)
    # home holds no data file; the scratch folder kept none after the steps
    assert _data_under(s.home) == []
    assert [p for p in _data_under(s.files_root) if not p.startswith("staging")] == []

    # the pumps firm withdraws its contract: none of its bytes remain in the store
    pumps_ids = sorted(pl.read_parquet(got.files[:len(m.files)]).filter(pl.col("contract_id") == PUMPS)["entity"].unique().to_list())
    markers = [x.encode() for x in pumps_ids]
    assert markers and _objects_holding(st, markers)  # there before
    rep = retention.withdraw_contract(PUMPS, "firm:oulu-pumps", "end of cooperation", s)
    assert len(rep.deliveries) == 2 and rep.files_deleted >= 6 and rep.versions_withdrawn == ["mix@1.0.0"]
    assert _objects_holding(st, markers) == {}, "the firm's readings are still in the object store"
    tenant = contracts[PUMPS].tenant
    assert [o.key for o in st.list() if f"/{tenant}/" in o.key] == []  # listed by prefix: nothing of the firm
    import boto3  # and the bucket's own listing: not even an empty folder marker names the firm

    raw = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    assert [o["Key"] for o in raw.list_objects_v2(Bucket="lab-bucket").get("Contents", []) if tenant in o["Key"]] == []
    assert st.exists("versions/mix/1.0.0/manifest.json")  # the evidence stays
    assert "WITHDRAWN" in st.read_text("versions/mix/1.0.0/card.md")
    press = [o.key for o in st.list("curated")]
    assert len(press) == 1 and contracts[PRESS].tenant in press[0]  # the other firm untouched


def publish_manifest(name: str, version: str):
    from datalab.store.manifests import read_manifest

    return read_manifest(name, version)


@pytest.mark.slow
def test_cad_on_object_storage(s3: str, lab: Path, tmp_path: Path, realdata: Path, monkeypatch) -> None:
    """A CAD delivery's files, parse cache, curated table, thumbnails and version objects live in the object store."""
    import hashlib

    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.store import pull, version_check
    from datalab.store.storage import store
    from pipelines import runner
    from tests.conftest import ROOT

    c = contract.load_all(ROOT / "data_contracts")["urn:datalab:lyon-presses:tooling-cad"]
    cad = realdata / "cad"
    files = [cad / "step/featuretype.STEP", cad / "stl/featuretype.STL", cad / "dxf/wrench.dxf"]
    rec = landing.push(c, files, actor="firm:lyon-presses")
    assert rec.accepted, rec.reasons
    runs = runner.run_pending(c.id)
    assert len(runs) == 1 and runs[0].success and runs[0].validation_ok, runs
    pub = runner.publish("tooling-cad")
    assert pub["new_version"]
    st = store()
    keys = [o.key for o in st.list()]
    assert any(k.startswith("raw/lyon-presses/cad-parsed/") and k.endswith(".json") for k in keys)
    assert any("/thumbs/" in k for k in keys) and any(k.startswith("versions/tooling-cad/objects/") for k in keys)
    monkeypatch.setenv("DATALAB_EXPORT_CLEARED", "1")  # the tooling contract's files are export-controlled
    got = pull.pull(f"tooling-cad@{pub['version']}", "research", tmp_path / "pulled", actor="team:ml")
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    pulled = {hashlib.sha256(p.read_bytes()).hexdigest() for p in got.files if p.parent.name == "files"}
    assert pulled == originals  # the original bytes, from the object store, verified
    assert version_check.verify("tooling-cad", pub["version"])[0] == []
    s = settings()
    assert _data_under(s.home) == []
    assert [p for p in _data_under(s.files_root) if not p.startswith("staging")] == []


def _served_from_the_object_store(m, tmp_path: Path) -> None:
    """The HTTP service streams a version's file from the object store: whole, and by byte range."""
    import hashlib

    from fastapi.testclient import TestClient

    from datalab.policy import auth
    from datalab.service.app import create_app

    auth.add_principal("team-de", "consumer", None, "munich", None, actor="test")
    token = auth.create_token("team-de", 7, "tests", actor="test")[0]
    url = "/v1/datasets/mix/versions/1.0.0/files/0"
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as c:
        full = c.get(url, params={"purpose": "research"})
        assert full.status_code == 200, full.text
        assert hashlib.sha256(full.content).hexdigest() == full.headers["x-checksum-sha256"] == m.files[0].sha256
        assert int(full.headers["content-length"]) == m.files[0].bytes and full.headers["accept-ranges"] == "bytes"
        part = c.get(url, params={"purpose": "research"}, headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == full.content[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(full.content)}"
        tail = c.get(url, params={"purpose": "research"}, headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == full.content[-5:]
        for bad in (f"bytes={len(full.content) + 10}-", "bytes=50-10", "items=0-1", "bytes=0-1,5-6"):
            assert c.get(url, params={"purpose": "research"}, headers={"Range": bad}).status_code == 416, bad
        card = c.get("/v1/datasets/mix/versions/1.0.0/card", params={"purpose": "research"})
        assert card.status_code == 200 and card.text.startswith("# ")



def test_copies_of_a_killed_process_are_cleaned(s3: str, lab: Path) -> None:
    """A process killed while it held fetched copies leaves them; the next start removes them, not a live one's."""
    import os
    import subprocess
    import sys

    from datalab.policy.retention import clean_interrupted
    from datalab.store.storage import store

    st = store()
    st.write_bytes("curated/firm-a/p/d-1.parquet", b"readings")
    mine = st.fetch("curated/firm-a/p/d-1.parquet")  # this (live) process's copy
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = st.local_root / ".fetch" / f"{gone.stdout.strip()}-1-0" / "curated" / "firm-a" / "p" / "d-1.parquet"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"readings")
    removed = clean_interrupted()
    assert removed == [f".fetch/{gone.stdout.strip()}-1-0"]
    assert not dead.exists() and mine.exists() and f"/.fetch/{os.getpid()}-" in str(mine)
    st.evict(mine)
    assert not mine.exists()
