"""The lab's settings: every ``DATALAB_*`` environment variable is read and checked here.

Every path the lab writes is derived here from ``$DATALAB_HOME`` so that the
embedded default (one directory, no servers) and a shared deployment use the
same layout; tests point ``DATALAB_HOME`` at a temp dir and get a whole lab.

No other module reads a ``DATALAB_*`` variable: they take a :class:`Settings`
(the Dagster layer hands its ``lab`` resource's settings down; the CLI and the
service call :func:`settings`, which reads the environment each time, so a
test or a command that changes it sees the change). A bad value is refused
here with the variable's name and the rule it breaks. :data:`VARIABLES` lists
every variable; the README's settings table documents exactly those
(``tests/test_settings.py`` compares them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from datalab.contracts.policy import CLASSIFICATIONS
from datalab.errors import UsageError

PROFILES = ("local", "cluster")


class SettingsError(UsageError, ValueError):
    """A ``DATALAB_*`` variable has a value the lab cannot use: the message names it and the rule.

    A usage error for the CLI (exit 2, not "a bug in datalab"), and still a
    ValueError for the code that caught the bare ValueError this used to be.
    """

    hint = "fix or unset that variable (the README's Settings table gives each one's values)"

ENGINES = ("auto", "cpu", "gpu")
# Who evaluates the derived expectation suites (datalab.quality.fast): Polars, or always GX.
VALIDATE_ENGINES = ("fast", "gx")
# The consumer clearances, lowest first: the classifications of datalab.contracts.policy.
CLEARANCES = CLASSIFICATIONS
DEFAULT_CLEARANCE = "confidential"
_TRUE = ("1", "true", "yes", "on")

# Every variable the lab's Python code reads, all of them here (the README's table lists them).
VARIABLES = (
    "DATALAB_HOME", "DATALAB_CATALOG_URL", "DATALAB_CONTRACTS", "DATALAB_ENGINE", "DATALAB_SITE",
    "DATALAB_ACTOR", "DATALAB_CLEARANCE", "DATALAB_EXPORT_CLEARED", "DATALAB_PSEUDONYM_KEY",
    "DATALAB_AUDIT_KEY", "DATALAB_AUDIT_CHECKPOINTS", "DATALAB_RATE_TOKEN_PER_MIN",
    "DATALAB_RATE_ADDRESS_PER_MIN", "DATALAB_INTAKE_MAX_WAITING", "DATALAB_URL", "DATALAB_TOKEN", "DATALAB_DEBUG",
    "DATALAB_CURATE_BUCKET_ROWS", "DATALAB_VALIDATE_CHUNK_ROWS", "DATALAB_VALIDATE_ENGINE", "DATALAB_SITE_URL",
    "DATALAB_DSP_RATE_LIMIT", "DATALAB_DSP_VALIDATE", "DATALAB_DSP_SCHEMAS", "DATALAB_OUTBOX_INTERVAL",
    "DATALAB_OUTBOX_MAX_BACKOFF", "DATALAB_PROFILE", "DATALAB_STORAGE", "DATALAB_SCRATCH", "DATALAB_BROKER_URL",
    "DATALAB_CELERY_QUEUE", "DATALAB_DAGSTER_PG_URL", "DATALAB_MAX_RUNS", "DATALAB_LOCAL_RUNS", "DATALAB_TENANT_RUN_LIMIT",
    "DATALAB_SENSOR_SECONDS", "DATALAB_POLARS_ALLOCATOR", "DATALAB_REALDATA", "DATALAB_PARTITION_KEEP_DAYS",
    "DATALAB_MAX_PARTITIONS", "DATALAB_RUN_BATCH",
)
# Read by the shell scripts only (scripts/setup.sh), documented in the same table.
SCRIPT_VARIABLES = ("DATALAB_SETUP_FORCE",)

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
    # Rows per series bucket in curation: bounds its peak memory (the peak
    # measured per bucket is in docs/performance.md, "Why the code is as it
    # is"); deliveries up to this size run in one go.
    curate_bucket_rows: int = 8_000_000
    # Rows per validation chunk (one sensor each); larger curated partitions
    # are validated chunk by chunk, the results merged exactly.
    validate_chunk_rows: int = 2_000_000
    # ``fast``: a suite whose every expectation Polars can evaluate exactly as
    # GX does (datalab.quality.fast) runs on the Parquet file, without pandas
    # or GX; other suites still run in GX. ``gx``: always GX (and Data Docs).
    validate_engine: str = "fast"
    # Service rate limits, requests per minute (0: off). Per token: what one
    # authenticated caller may send. Per client address: the requests that
    # carry no valid token (anonymous, bad or revoked tokens), so a client
    # without a token cannot fill the audit log or slow the firms' pushes.
    rate_token_per_min: int = 6000
    rate_address_per_min: int = 120
    # Intake pacing (datalab.intake.pacing): while a contract's deliveries are
    # being processed, at most this many of them wait for it; a push beyond
    # is answered 429 with Retry-After and nothing stored, until the runs
    # catch up (0: off). What keeps push-to-validated bounded when firms
    # push faster than the machine curates; no effect while nothing runs.
    intake_max_waiting: int = 12
    # ``local`` (the embedded default: in-process executor, Dagster instance
    # in SQLite under home) or ``cluster`` (Dagster on PostgreSQL, queued
    # runs with per-tenant limits, the Celery executor; docs/scale.md).
    profile: str = "local"
    # Where the lab's data files live: ``None`` for local paths under home,
    # else an ``s3://bucket/prefix`` URL (datalab.store.storage).
    storage: str | None = None
    # With object storage: this machine's scratch folder, where a step writes
    # a file before uploading it and reads a fetched copy (never under home:
    # home keeps no data files then). Default: a folder per store under the
    # system's temporary directory (``DATALAB_SCRATCH``).
    scratch: Path | None = None
    # The cluster profile's services (read here so that the one place that
    # chooses the profile also names what it talks to).
    broker_url: str = "pyamqp://guest:guest@127.0.0.1:5672//"
    dagster_pg_url: str | None = None
    celery_queue: str = "dagster"
    tenant_run_limit: int = 2
    max_concurrent_runs: int = 8
    # The local profile's ``datalab run``: runs of different contracts at once,
    # each in a warm worker process (one contract's runs stay in order; at most
    # one run of a delivery over ``datalab.runs.BATCH_ROWS`` rows at a time).
    # Read from ``DATALAB_LOCAL_RUNS``; default the machine's cores, at most 4.
    local_runs: int = 1
    # Seconds between the delivery sensor's ticks (pipelines.definitions).
    sensor_seconds: int = 30
    # Dynamic partitions (one per delivery, pipelines.rollup): a settled delivery's partition is
    # rolled up this many days after it settled (0: at once), and no contract keeps more live
    # partitions than the bound (half of Dagster's advised 100,000 per asset).
    partition_keep_days: int = 30
    max_partitions: int = 50_000
    # Most deliveries of one contract curated and validated in one Dagster run (a partition range);
    # 1: a run per delivery. A run's fixed cost (~0.3-0.5 s) is most of a small delivery's time.
    run_batch: int = 50
    # The CLI as an HTTP client of another lab (both set) or of this one (unset).
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    # Who the audit log records for this process's own actions (None: local:<user>).
    actor: str | None = None
    # The consumer's clearance: highest classification it may pull, and whether it
    # may pull export-controlled versions (datalab.policy.clearance).
    clearance: str = DEFAULT_CLEARANCE
    export_cleared: bool = False
    # Keys given by the operator (hex; None: the key files under secrets/), never printed.
    pseudonym_key: bytes | None = field(default=None, repr=False)
    audit_key: bytes | None = field(default=None, repr=False)
    audit_checkpoints: Path | None = None
    # Federation (docs/federation.md).
    site_url: str | None = None
    dsp_rate_limit: int = 0
    dsp_validate: bool = False
    dsp_schemas: Path | None = None
    outbox_interval: float = 5.0
    outbox_max_backoff: float = 300.0
    # ``datalab demo``'s real-data folder (None: ../shared/realdata if present).
    realdata: Path | None = None

    @property
    def files_root(self) -> Path:
        """Where the data files are on this machine: home, or with object storage the scratch
        folder (the object store holds them; ``datalab.store.storage`` fetches and uploads)."""
        return self.home if self.storage is None or self.scratch is None else self.scratch

    @property
    def landing(self) -> Path:
        return self.files_root / "landing"

    @property
    def staging(self) -> Path:
        return self.files_root / "staging"

    @property
    def raw(self) -> Path:
        return self.files_root / "raw"

    @property
    def curated(self) -> Path:
        return self.files_root / "curated"

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
        return self.files_root / "warehouse"

    @property
    def versions(self) -> Path:
        return self.files_root / "versions"

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


# The last settings read, by what they were read from (the DATALAB_* variables and the working
# directory, which a relative DATALAB_HOME resolves against). Reading them resolves paths on disk;
# the service reads them several times per request, so an unchanged environment reuses its Settings
# (frozen, so sharing one is safe); any change to a variable reads them afresh.
_CACHE: dict[tuple[object, ...], Settings] = {}


def settings() -> Settings:
    """Read and check the settings from the environment (cheap; call when needed).

    Raises ``ValueError`` naming the variable and the rule when a value is bad.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed: an absolute DATALAB_HOME still works, as before
        cwd = None
    key = (cwd, *sorted((k, v) for k, v in os.environ.items() if k.startswith("DATALAB_")))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    s = _read_settings()
    if cwd is None:
        return s  # a relative path cannot be keyed by a directory that is gone
    if len(_CACHE) > 16:  # tests and tools switch labs; keep the few in use
        _CACHE.clear()
    _CACHE[key] = s
    return s


def _read_settings() -> Settings:
    home = Path(os.environ.get("DATALAB_HOME", ".datalab")).expanduser().resolve()
    url = _env("DATALAB_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}"
    contracts = Path(os.environ.get("DATALAB_CONTRACTS", str(_repo_contracts_dir())))
    engine = _choice("DATALAB_ENGINE", ENGINES, "auto")
    profile = _choice("DATALAB_PROFILE", PROFILES, "local")
    storage = (_env("DATALAB_STORAGE") or "").strip() or None
    if storage is not None and not storage.startswith("s3://"):
        raise SettingsError(f"DATALAB_STORAGE={storage!r}: use s3://bucket/prefix (unset keeps the files under DATALAB_HOME)")
    return Settings(
        home=home,
        profile=profile,
        storage=storage.rstrip("/") if storage else None,
        scratch=_scratch(home, storage.rstrip("/")) if storage else None,
        broker_url=_env("DATALAB_BROKER_URL") or "pyamqp://guest:guest@127.0.0.1:5672//",
        dagster_pg_url=_env("DATALAB_DAGSTER_PG_URL") or _dagster_pg_url(url),
        celery_queue=_env("DATALAB_CELERY_QUEUE") or "dagster",
        tenant_run_limit=_positive_int("DATALAB_TENANT_RUN_LIMIT", 2),
        max_concurrent_runs=_positive_int("DATALAB_MAX_RUNS", 8),
        local_runs=_positive_int("DATALAB_LOCAL_RUNS", min(4, os.cpu_count() or 1)),
        sensor_seconds=_positive_int("DATALAB_SENSOR_SECONDS", 30),
        partition_keep_days=_positive_int("DATALAB_PARTITION_KEEP_DAYS", 30, zero_ok=True),
        max_partitions=_positive_int("DATALAB_MAX_PARTITIONS", 50_000),
        run_batch=_positive_int("DATALAB_RUN_BATCH", 50),
        catalog_url=url,
        contracts_dir=contracts.expanduser().resolve(),
        engine=engine,
        site=os.environ.get("DATALAB_SITE"),
        curate_bucket_rows=_positive_int("DATALAB_CURATE_BUCKET_ROWS", 8_000_000),
        validate_chunk_rows=_positive_int("DATALAB_VALIDATE_CHUNK_ROWS", 2_000_000),
        validate_engine=_choice("DATALAB_VALIDATE_ENGINE", VALIDATE_ENGINES, "fast"),
        rate_token_per_min=_positive_int("DATALAB_RATE_TOKEN_PER_MIN", 6000, zero_ok=True),
        rate_address_per_min=_positive_int("DATALAB_RATE_ADDRESS_PER_MIN", 120, zero_ok=True),
        intake_max_waiting=_positive_int("DATALAB_INTAKE_MAX_WAITING", 12, zero_ok=True),
        url=service_url(),
        token=_env("DATALAB_TOKEN"),
        actor=_env("DATALAB_ACTOR"),
        clearance=_choice("DATALAB_CLEARANCE", CLEARANCES, DEFAULT_CLEARANCE),
        export_cleared=_flag("DATALAB_EXPORT_CLEARED"),
        pseudonym_key=_hex("DATALAB_PSEUDONYM_KEY"),
        audit_key=_hex("DATALAB_AUDIT_KEY"),
        audit_checkpoints=_path("DATALAB_AUDIT_CHECKPOINTS"),
        site_url=(_env("DATALAB_SITE_URL") or "").rstrip("/") or None,
        dsp_rate_limit=_positive_int("DATALAB_DSP_RATE_LIMIT", 0, zero_ok=True),
        dsp_validate=_env("DATALAB_DSP_VALIDATE") == "1",
        dsp_schemas=_path("DATALAB_DSP_SCHEMAS"),
        outbox_interval=_seconds("DATALAB_OUTBOX_INTERVAL", 5.0, zero_ok=True),
        outbox_max_backoff=_seconds("DATALAB_OUTBOX_MAX_BACKOFF", 300.0),
        realdata=_path("DATALAB_REALDATA"),
    )


def _scratch(home: Path, storage: str) -> Path:
    """``DATALAB_SCRATCH``, or a folder per store under the system's temporary directory; never inside home."""
    import hashlib
    import tempfile

    given = _path("DATALAB_SCRATCH")
    path = (given or Path(tempfile.gettempdir()) / "datalab-scratch"
            / hashlib.sha256(f"{storage}|{home}".encode()).hexdigest()[:16]).expanduser().resolve()
    if path == home or home in path.parents:
        raise SettingsError(f"DATALAB_SCRATCH={path}: must not be inside DATALAB_HOME ({home}); with "
                            "DATALAB_STORAGE set, home holds no data files")
    return path


def debug() -> bool:
    """``DATALAB_DEBUG``: print tracebacks (read on its own: the error path must not fail on another variable)."""
    return (_env("DATALAB_DEBUG") or "").strip().lower() in _TRUE


def service_url() -> str | None:
    """``DATALAB_URL``: the lab service the CLI talks to (read on its own for error messages)."""
    return _env("DATALAB_URL")


def home_is_set() -> bool:
    """Whether ``DATALAB_HOME`` was given (else the lab is ``./.datalab``)."""
    return "DATALAB_HOME" in os.environ


def keep_polars_allocator() -> bool:
    """``DATALAB_POLARS_ALLOCATOR=default``: leave Polars' allocator settings alone (read by
    ``datalab/__init__.py`` before Polars is imported, so it needs no Settings)."""
    return (_env("DATALAB_POLARS_ALLOCATOR") or "") == "default"


def _env(name: str) -> str | None:
    """A variable's value; unset and empty are the same (None)."""
    return os.environ.get(name) or None


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (_env(name) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value


def _flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in ("1", "true", "yes")


def _path(name: str) -> Path | None:
    raw = _env(name)
    return Path(raw).expanduser() if raw else None


def _hex(name: str) -> bytes | None:
    raw = _env(name)
    if raw is None:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected hex (e.g. 64 hex digits)") from None


def _seconds(name: str, default: float, zero_ok: bool = False) -> float:
    raw = _env(name)
    if raw is None:
        return default
    what = "a number of seconds, 0 or more (0: off)" if zero_ok else "a positive number of seconds"
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected {what}") from None
    if not value >= 0 or (value == 0 and not zero_ok) or value == float("inf"):
        raise SettingsError(f"{name}={raw!r}: expected {what}")
    return value


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
        raise SettingsError(f"{name}={raw!r}: expected {what}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise SettingsError(f"{name}={raw!r}: expected {what}")
    return value


def lab_key(path: Path) -> bytes:
    """The 32-byte secret kept in ``path`` (64 hex digits, mode 0600), created there on first use.

    Several processes may ask at once for a key no one created yet (a lab's
    first runs side by side): each writes a key whole under a name of its
    own and links it into place, so exactly one wins, and no process ever
    reads a file another is still writing (an empty key would have keyed
    every pseudonym with nothing). A file that is not such a key is refused,
    naming the file and the rule, never replaced.
    """
    import contextlib
    import secrets as _secrets

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{_secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process created it first: its key is the lab's
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise UsageError(f"{path}: not a lab key (rule: 64 hexadecimal digits, a 32-byte secret); "
                         "restore the lab's key file or remove it only if nothing was keyed with it yet")
    return bytes.fromhex(text)
