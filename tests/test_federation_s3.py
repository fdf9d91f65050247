"""A federated replica on object storage: stuttgart keeps its files in an S3 store (moto, on loopback).

The DSP transfer lands the replica's files in stuttgart's scratch folder and
uploads them under the version's key; a pull reads them back verified; the
provider's withdrawal reaches stuttgart, which deletes the objects (listed by
prefix) and keeps the manifest as evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SPINDLE, s3_server
from tests.federation_harness import build
from tests.test_federation import audit_of
from tests.test_federation_replicate import datalab
from tests.test_federation_transfer import catalog_row
from tests.test_federation_withdrawal import _wait

pytestmark = pytest.mark.slow
PREFIX = "site-stuttgart"


@pytest.fixture(scope="module")
def s3_pair(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """munich (local files, plant-telemetry 1.0.0 published) and stuttgart (files in an S3 store), served."""
    base = tmp_path_factory.mktemp("fed-s3")
    with s3_server() as aws:
        sites = build(published_template, base, ("munich", "stuttgart"))
        sites["stuttgart"].extra_env.update(aws, DATALAB_STORAGE=f"s3://lab-bucket/{PREFIX}",
                                            DATALAB_SCRATCH=str(base / "stuttgart-scratch"))
        try:
            for s in sites.values():
                s.start()
            yield {"sites": sites, "aws": aws}
        finally:
            for s in sites.values():
                s.stop()


def _objects(aws: dict[str, str]) -> dict[str, bytes]:
    """Every object under stuttgart's prefix, with its bytes (the scan the byte-level proof needs)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lab-bucket", Prefix=PREFIX + "/")
            for o in page.get("Contents", [])]
    out = {k.removeprefix(PREFIX + "/"): s3.get_object(Bucket="lab-bucket", Key=k)["Body"].read() for k in keys}
    # pyarrow's empty folder markers ("<folder>/") hold no bytes; they are not files of the lab
    assert all(v == b"" for k, v in out.items() if k.endswith("/"))
    return {k: v for k, v in out.items() if not k.endswith("/")}


def test_replica_on_object_storage_replicated_pulled_withdrawn(s3_pair: dict, tmp_path: Path) -> None:
    a, b = s3_pair["sites"]["munich"], s3_pair["sites"]["stuttgart"]
    r = datalab(b, "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "s3://lab-bucket/site-stuttgart/versions/plant-telemetry/1.0.0" in " ".join(r.stdout.split())
    objs = _objects(s3_pair["aws"])
    row = catalog_row(b, "plant-telemetry", "1.0.0")
    assert row is not None and row.manifest_path in objs
    import json

    m = json.loads(objs[row.manifest_path])
    shas = {f["sha256"] for f in m["files"]}
    assert {hashlib.sha256(objs[f["path"]]).hexdigest() for f in m["files"]} == shas  # the objects are the files
    # nothing of the replica under stuttgart's home or left in its scratch folder
    for root in (b.home, Path(b.env()["DATALAB_SCRATCH"])):
        held = [p for p in root.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() in shas]
        assert held == [], held
    # pulled from the object store, verified against the manifest's checksums
    r = datalab(b, "pull", "plant-telemetry@1.0.0", "--purpose", "research", "--to", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    pulled = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").rglob("part-*.parquet")}
    assert pulled == shas

    # munich's firm withdraws its contract: the event reaches stuttgart, which deletes the objects
    from datalab.federation import events
    from datalab.policy import retention

    with a.here():
        assert "plant-telemetry@1.0.0" in retention.withdraw_contract(SPINDLE, "test", "withdrawn").versions_withdrawn

    def confirmed() -> bool:
        with a.here():
            return any(o["subject"] == "plant-telemetry@1.0.0" and o["state"] == "confirmed" for o in events.outbox())

    assert _wait(confirmed), "the withdrawal never reached stuttgart"
    assert catalog_row(b, "plant-telemetry", "1.0.0").status == "withdrawn"
    left = _objects(s3_pair["aws"])
    assert not [k for k, v in left.items() if hashlib.sha256(v).hexdigest() in shas]
    vdir = row.manifest_path.rsplit("/", 1)[0]
    assert sorted(k for k in left if k.startswith(vdir)) == [f"{vdir}/card.md", f"{vdir}/manifest.json"]
    assert b"WITHDRAWN" in left[f"{vdir}/card.md"]
    deleted = [e for e in audit_of(b, "delete") if e["actor"] == "site:munich"]
    assert {f["sha256"] for e in deleted for f in e["detail"]["files"]} >= shas
