"""Shared fixtures: a whole lab in a temp directory, and the real data files."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# The lab-service harness's fixtures (one template lab and one served lab per session).
pytest_plugins = ["tests.service_harness", "tests.federation_harness"]

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("DATALAB_REALDATA", ROOT.parent / "shared" / "realdata"))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``DATALAB_HOME`` using the repository's contracts."""
    home = tmp_path / "lab"
    monkeypatch.setenv("DATALAB_HOME", str(home))
    monkeypatch.setenv("DATALAB_CONTRACTS", str(ROOT / "data_contracts"))
    monkeypatch.setenv("DATALAB_ENGINE", "cpu")
    monkeypatch.delenv("DATALAB_SITE", raising=False)
    monkeypatch.delenv("DATALAB_CATALOG_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def contracts():
    from datalab.contracts import contract

    return contract.load_all(ROOT / "data_contracts")


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real data not found at {REALDATA} (set DATALAB_REALDATA)")
    return REALDATA


SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"
PRESS = "urn:datalab:lyon-presses:press-line"
PUMPS = "urn:datalab:oulu-pumps:pump-telemetry"
CMAPSS = "urn:datalab:open-benchmarks:cmapss-fd001"
HYDRAULIC = "urn:datalab:open-benchmarks:hydraulic-rig"


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards; skips the test without a server.

    The server is the one ``DATALAB_TEST_PG_URL`` names (``scripts/test.sh``
    sets it when 127.0.0.1:5432 answers); CI without PostgreSQL skips.
    """
    import sqlalchemy as sa

    from datalab.store import catalog as cat

    pg = os.environ.get("DATALAB_TEST_PG_URL")
    if not pg:
        pytest.skip("no PostgreSQL server: set DATALAB_TEST_PG_URL (scripts/test.sh does when 127.0.0.1:5432 answers)")
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        eng = cat._ENGINES.pop(url, None)
        if eng is not None:
            eng.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def s3_server(bucket: str = "lab-bucket") -> Iterator[dict[str, str]]:
    """moto's S3 server with ``bucket`` (tests/s3_harness.py); skips the test where ``moto[server]`` is missing."""
    pytest.importorskip("moto.server", reason="moto[server] (the cluster extra) is not installed")
    from tests.s3_harness import S3ServerError, moto_s3

    try:
        with moto_s3(bucket) as env:
            yield env
    except S3ServerError as e:
        pytest.fail(str(e))


def covered(request, order: list[str]) -> list[str]:
    """The deliveries a sensor's run request covers: its partition, or its range in the partitions' ``order``."""
    from assets.common import RANGE_END, RANGE_START

    if request.partition_key:
        return [request.partition_key]
    return order[order.index(request.tags[RANGE_START]):order.index(request.tags[RANGE_END]) + 1]


@contextlib.contextmanager
def lab_with_dataset(root: Path, dataset: str, inputs: list[str], **env: str) -> Iterator[tuple[Path, pytest.MonkeyPatch]]:
    """A lab of its own under ``root`` (for a module's fixture): the repository's contracts copied to
    ``root/contracts`` with a dataset spec ``dataset`` over ``inputs`` (site munich), the CPU engine,
    ``env`` as further DATALAB_* variables, and no site, catalog, pseudonym key or store from outside.
    Yields the contracts folder and the monkeypatch (undone on exit)."""
    import shutil

    import yaml

    spec = root / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    (spec / "datasets" / f"{dataset}.yaml").write_text(yaml.safe_dump({"name": dataset, "site": "munich", "inputs": inputs}))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"DATALAB_HOME": str(root / "lab"), "DATALAB_CONTRACTS": str(spec), "DATALAB_ENGINE": "cpu", **env}.items():
            mp.setenv(k, v)
        for k in ("DATALAB_SITE", "DATALAB_CATALOG_URL", "DATALAB_PSEUDONYM_KEY", "DATALAB_STORAGE"):
            mp.delenv(k, raising=False)
        yield spec, mp


def deliver_validated(spec: Path, cid: str, rows: int, seed: int, start, tmp: Path) -> str:
    """Push one sample delivery of contract ``cid`` (from the contracts in ``spec``) and take it through
    ingest, curation and validation with the core alone; its delivery id. The suite must pass."""
    from datalab.config import settings
    from datalab.contracts import contract as contracts_mod
    from datalab.intake import landing
    from datalab.quality import validate
    from datalab.store import state
    from datalab.timeseries import curate, ingest, sample

    s = settings()
    c = contracts_mod.load_all(spec)[cid]
    f = sample.write(sample.generate(c, rows, seed=seed, start=start), tmp / f"{c.product}-{seed}.csv")
    rec = landing.push(c, [f], actor=f"firm:{c.tenant}")
    assert rec.accepted, rec.reasons
    ingest.ingest_raw(c, rec.delivery_id, s)
    curate.curate_delivery(c, rec.delivery_id, s=s)
    rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False)
    state.set_stage(rec.delivery_id, "validated", s=s, validation_ok=rep.success, validation=rep.to_dict())
    assert rep.success
    return rec.delivery_id


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh catalog URL on each backend: SQLite in the test's folder, a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    with fresh_pg_database("datalab_test") as url:
        yield url
