"""Where the lab keeps things, read from the environment once per call.

Every path the lab writes is derived here from ``$DATALAB_HOME`` so that the
embedded default (one directory, no servers) and a shared deployment use the
same layout; tests point ``DATALAB_HOME`` at a temp dir and get a whole lab.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local", "cluster")

_SAFE_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def safe_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be used as one path segment, else raise.

    Tenant names, contract slugs and delivery ids end up in file paths; they
    come from contracts and requests, so they are checked here rather than
    trusted (no ``..``, no separators, no hidden files).
    """
    if not isinstance(value, str) or not _SAFE_SEGMENT.match(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not allowed in a path: use 1-64 characters "
            "of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _repo_contracts_dir() -> Path:
    # The package is installed editable from the repository, whose top level
    # holds data_contracts/ (the design card's layout).
    return Path(__file__).resolve().parent.parent / "data_contracts"


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one lab."""

    home: Path
    catalog_url: str
    contracts_dir: Path
    engine: str
    site: str | None
    # Rows per series bucket in curation: bounds its peak memory (the
    # process peaked at about 3.7 GB for a 7.5 M-row bucket of the benchmark
    # contract); deliveries up to this size run in one go.
    curate_bucket_rows: int = 8_000_000
    # Rows per validation chunk (one sensor each); larger curated partitions
    # are validated chunk by chunk, the results merged exactly.
    validate_chunk_rows: int = 2_000_000
    # Service rate limits, requests per minute (0: off). Per token: what one
    # authenticated caller may send. Per client address: the requests that
    # carry no valid token (anonymous, bad or revoked tokens), so a client
    # without a token cannot fill the audit log or slow the firms' pushes.
    rate_token_per_min: int = 6000
    rate_address_per_min: int = 120
    # ``local`` (the embedded default: in-process executor, Dagster instance
    # in SQLite under home) or ``cluster`` (Dagster on PostgreSQL, queued
    # runs with per-tenant limits, the Celery executor; docs/scale.md).
    profile: str = "local"
    # Where the lab's data files live: ``None`` for local paths under home,
    # else an ``s3://bucket/prefix`` URL (datalab.storage).
    storage: str | None = None
    # The cluster profile's services (read here so that the one place that
    # chooses the profile also names what it talks to).
    broker_url: str = "pyamqp://guest:guest@127.0.0.1:5672//"
    dagster_pg_url: str | None = None
    celery_queue: str = "dagster"
    tenant_run_limit: int = 2
    max_concurrent_runs: int = 8

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def staging(self) -> Path:
        return self.home / "staging"

    @property
    def raw(self) -> Path:
        return self.home / "raw"

    @property
    def curated(self) -> Path:
        return self.home / "curated"

    @property
    def validation(self) -> Path:
        return self.home / "validation"

    @property
    def gx_root(self) -> Path:
        return self.home / "gx"

    @property
    def data_docs(self) -> Path:
        return self.home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse"

    @property
    def versions(self) -> Path:
        return self.home / "versions"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    def tenant_landing(self, tenant: str, area: str) -> Path:
        """The firm's own landing area: ``accepted`` or ``quarantine``."""
        if area not in ("accepted", "quarantine"):
            raise ValueError(f"unknown landing area {area!r}")
        return self.landing / safe_segment(tenant, "tenant") / area


def settings() -> Settings:
    """Read the settings from the environment (cheap; call when needed)."""
    home = Path(os.environ.get("DATALAB_HOME", ".datalab")).expanduser().resolve()
    url = os.environ.get("DATALAB_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}"
    contracts = Path(os.environ.get("DATALAB_CONTRACTS", str(_repo_contracts_dir())))
    engine = os.environ.get("DATALAB_ENGINE", "auto").lower()
    if engine not in ("auto", "cpu", "gpu"):
        raise ValueError(f"DATALAB_ENGINE={engine!r}: use auto, cpu or gpu")
    profile = (os.environ.get("DATALAB_PROFILE") or "local").strip().lower()
    if profile not in PROFILES:
        raise ValueError(f"DATALAB_PROFILE={profile!r}: use local or cluster")
    storage = (os.environ.get("DATALAB_STORAGE") or "").strip() or None
    if storage is not None and not storage.startswith("s3://"):
        raise ValueError(f"DATALAB_STORAGE={storage!r}: use s3://bucket/prefix (unset keeps the files under DATALAB_HOME)")
    return Settings(
        home=home,
        profile=profile,
        storage=storage.rstrip("/") if storage else None,
        broker_url=os.environ.get("DATALAB_BROKER_URL") or "pyamqp://guest:guest@127.0.0.1:5672//",
        dagster_pg_url=os.environ.get("DATALAB_DAGSTER_PG_URL") or _dagster_pg_url(url),
        celery_queue=os.environ.get("DATALAB_CELERY_QUEUE") or "dagster",
        tenant_run_limit=_positive_int("DATALAB_TENANT_RUN_LIMIT", 2),
        max_concurrent_runs=_positive_int("DATALAB_MAX_RUNS", 8),
        catalog_url=url,
        contracts_dir=contracts.expanduser().resolve(),
        engine=engine,
        site=os.environ.get("DATALAB_SITE"),
        curate_bucket_rows=_positive_int("DATALAB_CURATE_BUCKET_ROWS", 8_000_000),
        validate_chunk_rows=_positive_int("DATALAB_VALIDATE_CHUNK_ROWS", 2_000_000),
        rate_token_per_min=_positive_int("DATALAB_RATE_TOKEN_PER_MIN", 6000, zero_ok=True),
        rate_address_per_min=_positive_int("DATALAB_RATE_ADDRESS_PER_MIN", 120, zero_ok=True),
    )


def _dagster_pg_url(catalog_url: str) -> str | None:
    """The Dagster instance's PostgreSQL URL, by default the catalog's database.

    dagster-postgres speaks psycopg2 (LISTEN/NOTIFY), named in the URL since
    SQLAlchemy 2.1 defaults to psycopg 3 for a plain ``postgresql://``;
    its tables (runs, event_logs, ...) do not collide with the lab's ``dl_*``
    and pyiceberg's ``iceberg_*`` tables, so one database serves both.
    """
    if not catalog_url.startswith("postgresql"):
        return None
    return "postgresql+psycopg2://" + catalog_url.split("://", 1)[1]


def _positive_int(name: str, default: int, zero_ok: bool = False) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    what = "a non-negative integer (0: off)" if zero_ok else "a positive integer"
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {what}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name}={raw!r}: expected {what}")
    return value
