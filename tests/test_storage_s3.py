"""The lab's store on S3-compatible object storage: moto's S3 server on loopback.

Skips with its reason where ``moto[server]`` is not installed (the ``cluster``
extra). The server runs in its own process on a random port and is stopped
by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datalab.config import settings
from datalab.errors import DatalabError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(lab: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pytest.importorskip("moto.server", reason="moto[server] (the cluster extra) is not installed")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.1)
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="lab-bucket")
        monkeypatch.setenv("DATALAB_STORAGE", "s3://lab-bucket/site-a")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_store_defaults_to_home(lab: Path) -> None:
    from datalab.store.storage import store

    st = store()
    assert st.is_local and st.url == str(settings().home)
    st.write_bytes("raw/firm-a/x.parquet", b"abc")
    assert (lab / "raw" / "firm-a" / "x.parquet").read_bytes() == b"abc"
    with pytest.raises(DatalabError, match=r"'\.\.'"):
        st.write_bytes("raw/../../etc/passwd", b"")


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
