"""Validation of curated time-series tables with Great Expectations (GX 1.x).

The contract is the single source of the rules: the contract's kind
(``datalab.kinds``) derives from it a list of :class:`ExpectationSpec` (plain
data, no GX objects, so it is cheap, testable and printable; the time-series
suite is ``datalab/timeseries/suite.py``), hand-written additions come
from ``checks/suites/<slug>.json`` (:func:`load_handwritten`), and
:func:`validate` runs both against one curated table and returns a
:class:`ValidationReport` of typed results (``datalab.quality.results.ExpectationResult``)
that name, for every failure, the column, the sensor, how many values broke the
rule and a few of them.

The table being validated is the curated *long* table: one row per reading
with ``delivery_id, entity, time, sensor, value, unit, raw_value, raw_unit``,
the contract's attribute columns and the curation flags. Curation keeps
out-of-range readings and key duplicates (it flags them, it never deletes
them), so range and uniqueness expectations carry the tolerance the contract
grants (``mostly``) instead of demanding perfection.

GX is heavy (seconds to import) and is only needed when a table is actually
validated, so it is imported inside the functions that run it; importing this
module stays cheap for the CLI and the pull client. A suite whose every
expectation the Polars path (``datalab.quality.fast``) evaluates exactly as GX
does runs there instead, on a scan of the curated file, without pandas or GX
(``DATALAB_VALIDATE_ENGINE=gx`` keeps GX for every suite); hand-written
expectations it cannot evaluate send the whole suite to GX.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datalab.config import safe_segment, settings
from datalab.kinds import kind_of
from datalab.quality import fast, heap, validate_chunks
from datalab.quality.expectations import _EQ_CONDITION, ExpectationSpec, _jsonable, lab_rules
from datalab.quality.fast import PARTIAL_UNEXPECTED_COUNT, SAMPLE_SIZE  # noqa: F401 - the runner's names since ever
from datalab.quality.results import ExpectationResult

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import polars as pl

    from datalab.contracts.contract import Contract

log = logging.getLogger(__name__)

# Names GX gives the objects of one contract; all keyed by the contract slug so
# that contracts never step on each other's suites or validation definitions.
DATASOURCE_NAME = "datalab"
BATCH_DEFINITION_NAME = "whole_table"
DOCS_SITE_NAME = "local_site"
# How many unexpected values GX keeps per expectation (SUMMARY format,
# PARTIAL_UNEXPECTED_COUNT); the report shows the first SAMPLE_SIZE distinct
# ones, Data Docs show them all. Defined with the fast path, which lists them alike.
ENGINE_POLARS = "polars"
ENGINE_GX = "great_expectations"

_DEFAULT_SUITES_DIR = Path(__file__).resolve().parents[2] / "checks" / "suites"
# "notes" is a comment for the people who maintain the file; it is not run.
_HANDWRITTEN_KEYS = {"type", "kwargs", "sensor", "notes"}
# --------------------------------------------------------------------------
# the data model


@dataclass
class ValidationReport:
    """The outcome of one validation run, independent of GX's own objects."""

    success: bool
    suite: str
    evaluated: int
    successful: int
    failed: int
    results: list[ExpectationResult]
    docs_path: str | None
    seconds: float
    run_name: str = ""
    contract_id: str = ""
    contract_version: str = ""
    rows: int = 0
    report_path: str | None = None
    notes: list[str] = field(default_factory=list)
    # Who evaluated the suite: "polars" (datalab.quality.fast) or "great_expectations".
    engine: str = ENGINE_GX

    def failed_results(self) -> list[ExpectationResult]:
        """The results of the expectations that failed, in suite order."""
        return [r for r in self.results if not r.success]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (values already made JSON-safe): the report file, and the delivery's state."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["results"] = [r.to_dict() for r in self.results]
        return _jsonable(out)

    def summary(self) -> str:
        """One line per failure, for logs and the CLI."""
        head = (
            f"suite {self.suite}: {'passed' if self.success else 'FAILED'} "
            f"({self.successful}/{self.evaluated} expectations, {self.rows} rows, {self.seconds:.1f}s)"
        )
        return "\n".join([head, *(f"  - {r.message}" for r in self.failed_results())])


# --------------------------------------------------------------------------
# hand-written suites


def load_handwritten(contract: Contract, suites_dir: Path | None = None) -> list[ExpectationSpec]:
    """Hand-written expectations from ``<suites_dir>/<contract.slug>.json``.

    The file is a JSON list of ``{"type": ..., "kwargs": {...}}`` (optional
    ``sensor`` to label the result, ``notes`` for people). A missing file
    means no additions. A
    malformed file raises ``ValueError`` naming the file and the entry, because
    silently skipping a check someone wrote is worse than stopping.
    """
    base = Path(suites_dir) if suites_dir is not None else _DEFAULT_SUITES_DIR
    path = base / f"{contract.slug}.json"
    if not path.is_file():
        return []
    shown = f"checks/suites/{path.name}" if suites_dir is None else str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, list):
        raise ValueError(
            f"{path}: a suite file must be a JSON list of {{'type': ..., 'kwargs': {{...}}}}"
        )
    specs: list[ExpectationSpec] = []
    for i, entry in enumerate(doc):
        at = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(
                f"{at}: must be an object with 'type' and 'kwargs', got {type(entry).__name__}"
            )
        unknown = set(entry) - _HANDWRITTEN_KEYS
        if unknown:
            raise ValueError(
                f"{at}: unknown key(s) {sorted(unknown)} (allowed: {sorted(_HANDWRITTEN_KEYS)})"
            )
        etype = entry.get("type")
        if not isinstance(etype, str) or not re.match(r"^expect_[a-z0-9_]+$", etype):
            raise ValueError(
                f"{at}: 'type' must be a GX expectation name like 'expect_column_values_to_be_between', got {etype!r}"
            )
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ValueError(f"{at}: 'kwargs' must be an object, got {type(kwargs).__name__}")
        sensor = entry.get("sensor")
        if sensor is not None and not isinstance(sensor, str):
            raise ValueError(f"{at}: 'sensor' must be a string")
        specs.append(
            ExpectationSpec(etype, dict(kwargs), f"{shown}[{i}]", sensor or validate_chunks.condition_sensor(kwargs))
        )
    return specs


# --------------------------------------------------------------------------
# running GX


_preload: threading.Thread | None = None


# Modules GX imports when it loads but calls only inside expectations the
# lab's suites do not use (KS tests, KL divergence): scipy.stats is 1.3-2 s
# of GX's 4-7 s import on two cores.
DEFERRED_IMPORTS = ("scipy.stats",)


def _defer_unused_imports() -> None:
    """Put lazy modules for ``DEFERRED_IMPORTS`` in ``sys.modules`` (standard ``importlib.util.LazyLoader``).

    A lazy module runs its code on the first attribute access, so a suite
    (or any other code in the process) that does use ``scipy.stats`` gets
    the whole module then; nothing changes but when the cost is paid. Runs
    on the caller's thread, before any GX import.
    """
    for name in DEFERRED_IMPORTS:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def needs_gx(contract: Contract, suites_dir: Path | None = None) -> bool:
    """Whether validating ``contract``'s curated table will (probably) run GX, judged from the suite's text.

    False when the fast path is on and takes every expectation as written; a
    table whose columns it cannot take still goes to GX (then imported on the spot).
    """
    if settings().validate_engine == "gx":
        return True
    try:
        specs = _suite_for(contract) + load_handwritten(contract, suites_dir)
    except ValueError:  # a malformed hand-written suite: validate() says so
        return True
    return not fast.may_evaluate(specs)


def import_in_background(contract: Contract | None = None) -> None:
    """Start importing GX on a background thread, so the import overlaps other work.

    Importing GX (with pandas, scipy and pydantic models) takes 3-5 s of
    pure Python; the curated asset runs its suite right after curation, in
    the same process, and curation spends its time in Polars' native code
    with the GIL released. Starting the import when curation starts hides
    most of it (measured in docs/performance.md). ``_import_gx`` waits for
    the thread, so a failed background import fails there, as before. Given
    the ``contract`` whose table will be validated, nothing is imported when
    its suite runs on the fast path (:func:`needs_gx`): the import would
    only take the GIL from curation.
    """
    global _preload
    if _preload is not None or "great_expectations" in sys.modules:
        return
    if contract is not None and not needs_gx(contract):
        return
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    _defer_unused_imports()

    def run() -> None:
        with contextlib.suppress(Exception):  # _import_gx imports again and raises there
            import great_expectations  # noqa: F401

    _preload = threading.Thread(target=run, name="datalab-gx-import", daemon=True)
    _preload.start()


def _import_gx() -> Any:
    """Import GX with analytics off.

    The lab holds other firms' data under sovereignty rules; nothing about
    it, not even usage events, may leave the machine. GX reads the switch
    when it is imported, so the environment is set first.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    if _preload is not None:
        _preload.join()
    elif "great_expectations" not in sys.modules:
        _defer_unused_imports()
    import great_expectations as gx

    return gx


@contextlib.contextmanager
def _gx_lock(root: Path) -> Iterator[None]:
    """Serialise GX work on one lab across processes.

    The file context keeps its datasources in one YAML file and checks that
    a suite is unchanged on disk before running it; two processes updating
    the same suite (or the Data Docs index) at once would trip over each
    other. An advisory lock on the GX root keeps them in turn.
    """
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / ".datalab-gx.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _context(root: Path) -> Any:
    """The lab's file data context, created on first use, progress bars off."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    with contextlib.suppress(Exception):
        ctx.enable_analytics(False)
    bars = ctx.variables.progress_bars
    if bars is None or bars.get("globally", True) or bars.get("metric_calculations", True):
        # tqdm bars on every validation clutter logs of batch runs (Dagster).
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        ctx.variables.save()
    return ctx


def _batch_definition(ctx: Any, slug: str) -> Any:
    """Get or create datasource, dataframe asset and batch definition.

    Get-or-create (not add_or_update) keeps their ids stable, so stored
    validation definitions of other contracts stay valid.
    """
    try:
        ds = ctx.data_sources.get(DATASOURCE_NAME)
    except (KeyError, ValueError, LookupError):
        ds = ctx.data_sources.add_pandas(DATASOURCE_NAME)
    try:
        asset = ds.get_asset(slug)
    except (KeyError, ValueError, LookupError):
        asset = ds.add_dataframe_asset(slug)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except (KeyError, ValueError, LookupError):
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)


def _fingerprint(contract: Contract, specs: list[ExpectationSpec], gx_version: str) -> str:
    """What the stored suite was built from; equal means it can be reused as is."""
    body = json.dumps(
        [contract.id, contract.version, gx_version, [s.to_dict() for s in specs]],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _stored_validation_definition(ctx: Any, slug: str, fingerprint: str, batch_def: Any) -> Any:
    """The stored validation definition of ``slug`` if it is current, else None.

    Updating a suite in GX compares every new expectation with every stored
    one, and storing a validation definition or checkpoint updates the suite
    again: seconds per run for a contract with many sensors. Most runs
    validate against an unchanged contract, so an unchanged suite (same
    fingerprint) and batch definition are reused as stored.
    """
    try:
        vd = ctx.validation_definitions.get(slug)
    except Exception:  # not stored yet, or stored by an older layout
        return None
    meta = vd.suite.meta or {}
    if meta.get("datalab_fingerprint") != fingerprint or vd.batch_definition.id != batch_def.id:
        return None
    return vd


def _stored_checkpoint(ctx: Any, slug: str, vd: Any, result_format: dict[str, Any]) -> Any:
    """The stored checkpoint of ``slug`` if it runs ``vd`` the lab's way, else None."""
    try:
        cp = ctx.checkpoints.get(slug)
    except Exception:
        return None
    actions = [(a.type, list(getattr(a, "site_names", []) or [])) for a in cp.actions]
    stored_format = cp.result_format if isinstance(cp.result_format, dict) else {}
    same_format = {k: getattr(v, "value", v) for k, v in stored_format.items()} == result_format
    if (
        [v.id for v in cp.validation_definitions] != [vd.id]
        or actions != [("update_data_docs", [DOCS_SITE_NAME])]
        or not same_format
    ):
        return None
    return cp


def _runner(
    ctx: Any,
    contract: Contract,
    specs: list[ExpectationSpec],
    *,
    build_docs: bool,
    result_format: dict[str, Any],
) -> Any:
    """The checkpoint (with Data Docs) or validation definition to run.

    Everything is named by the contract slug: one suite, one validation
    definition and one checkpoint per contract, rewritten when the contract
    (or the hand-written suite) changes and reused when it does not.
    """
    gx = _import_gx()
    from great_expectations.checkpoint import UpdateDataDocsAction

    slug = contract.slug
    batch_def = _batch_definition(ctx, slug)
    fingerprint = _fingerprint(contract, specs, gx.__version__)
    vd = _stored_validation_definition(ctx, slug, fingerprint, batch_def)
    if vd is None:
        suite = gx.ExpectationSuite(
            name=slug,
            expectations=[_build_expectation(spec, i) for i, spec in enumerate(specs)],
            meta={
                "contract_id": contract.id,
                "contract_version": contract.version,
                "derived_by": __name__,
                "datalab_fingerprint": fingerprint,
            },
        )
        vd = gx.ValidationDefinition(name=slug, data=batch_def, suite=suite)
        if not build_docs:
            # stores the suite too (GX cascades), once
            return ctx.validation_definitions.add_or_update(vd)
    elif not build_docs:
        log.debug("suite %s unchanged: reusing the stored validation definition", slug)
        return vd
    else:
        checkpoint = _stored_checkpoint(ctx, slug, vd, result_format)
        if checkpoint is not None:
            log.debug("suite %s unchanged: reusing the stored checkpoint", slug)
            return checkpoint
    # stores the validation definition and the suite too (GX cascades)
    return ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=slug,
            validation_definitions=[vd],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE_NAME])],
            result_format=result_format,
        )
    )


def _row_condition(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn ``col=="x"`` (pandas parser) into a GX Condition object.

    String row conditions are deprecated since GX 1.9 and warn on every
    expectation; the simple equality the lab writes maps exactly onto
    ``Column(col) == "x"``. Anything else is passed on as written.
    """
    rc = kwargs.get("row_condition")
    if not isinstance(rc, str) or kwargs.get("condition_parser") not in (None, "pandas"):
        return kwargs
    m = _EQ_CONDITION.match(rc)
    if not m:
        return kwargs
    from great_expectations.expectations.row_conditions import Column as GxColumn

    out = {k: v for k, v in kwargs.items() if k != "condition_parser"}
    out["row_condition"] = GxColumn(m.group(1)) == m.group(3)
    return out


def _build_expectation(spec: ExpectationSpec, index: int) -> Any:
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        cls = get_expectation_impl(spec.type)
    except Exception as e:
        raise ValueError(f"{spec.source}: unknown expectation type {spec.type!r}") from e
    kwargs = _row_condition(dict(spec.kwargs))
    kwargs.setdefault("catch_exceptions", True)
    kwargs["meta"] = {
        **(kwargs.get("meta") or {}),
        "datalab": {"index": index, "source": spec.source, "sensor": spec.sensor},
    }
    kwargs.setdefault("notes", f"From {spec.source}")
    try:
        return cls(**kwargs)
    except Exception as e:  # pydantic validation of the kwargs
        raise ValueError(f"{spec.source}: invalid kwargs for {spec.type}: {e}") from e


def _to_pandas(frame: pl.DataFrame | pl.LazyFrame | Path | str, regex_columns: frozenset[str] = frozenset()) -> pd.DataFrame:
    import polars as pl

    if isinstance(frame, (str, Path)):
        path = Path(frame)
        if not path.exists():
            raise FileNotFoundError(f"no curated table at {path}")
        if path.is_dir():
            frame = pl.scan_parquet(path / "**" / "*.parquet")
        elif path.suffix == ".parquet":
            frame = pl.scan_parquet(path)
        else:
            raise ValueError(f"{path}: expected a Parquet file or a directory of Parquet files")
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(
            f"expected a polars DataFrame, LazyFrame or a path, got {type(frame).__name__}"
        )
    # One conversion; Datetime("us", "UTC") stays tz-aware in pandas. Text
    # columns become pandas categoricals: the suite's per-sensor row
    # conditions, set and uniqueness checks then work on a few categories
    # and integer codes instead of millions of strings (3-5x faster at 1 M
    # rows, same results). Not the columns a regex checks: GX matches with
    # ``column.astype(str).str.contains``, and ``astype(str)`` on a
    # categorical builds one string per row (3.0 s at 10 M rows); pandas'
    # own Arrow-backed strings go straight to the Arrow kernel (0.8 s).
    text = [n for n, t in frame.schema.items() if t == pl.String and n not in regex_columns]
    return frame.with_columns(pl.col(text).cast(pl.Categorical)).to_pandas()


REGEX_EXPECTATIONS = frozenset({
    "expect_column_values_to_match_regex", "expect_column_values_to_not_match_regex",
    "expect_column_values_to_match_regex_list", "expect_column_values_to_not_match_regex_list",
})


def _regex_columns(specs: list[ExpectationSpec]) -> frozenset[str]:
    """Columns some expectation matches against a regular expression (see _to_pandas)."""
    return frozenset(str(sp.kwargs["column"]) for sp in specs if sp.type in REGEX_EXPECTATIONS and "column" in sp.kwargs)


def _plain_text_columns(specs: list[ExpectationSpec]) -> frozenset[str]:
    """Text columns _to_pandas must not make categorical: those a regex reads, and those compared pairwise.

    pandas compares two categoricals only when their categories are the same,
    and raises otherwise, so GX reported an error instead of a result for the
    CAD suite's ``format`` = ``name_format`` whenever the two columns held
    different sets of formats (found by the fast path's parity test, issue 21).
    """
    pairs = {str(sp.kwargs[k]) for sp in specs if sp.type.startswith("expect_column_pair_")
             for k in ("column_A", "column_B") if k in sp.kwargs}
    return _regex_columns(specs) | pairs


@contextlib.contextmanager
def _without_batch_fingerprint() -> Iterator[None]:
    """Skip GX's per-batch fingerprint while validating chunks.

    GX's pandas engine stores an md5 over every cell of each batch as a batch
    marker (``pandas_data_fingerprint``) when the batch is under
    ``HASH_THRESHOLD`` bytes: 2.4 s per 10 M rows, for a marker of a chunk
    that nothing keeps (a chunked run stores only datalab's merged report).
    The threshold is read per batch, so it is lowered for the chunk loop
    and restored after it.
    """
    from great_expectations.execution_engine import pandas_execution_engine as engine

    before = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = before


# --------------------------------------------------------------------------
# turning GX results into the lab's (datalab.quality.results)


def _exception_message(info: Any) -> str | None:
    """The message of an exception GX caught while computing a result.

    GX gives either one ``{raised_exception, exception_message, ...}`` dict
    or, when several metrics failed, a dict of them keyed by metric.
    """
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _result(res: Any, specs: list[ExpectationSpec]) -> ExpectationResult:
    """The lab's result of one GX result: the spec it ran (found by the suite index GX carries in its meta), JSON-safe.

    Written by ``fast.record``, the function the fast path writes its results
    with, so both engines give the same fields and messages for the same GX result.
    """
    cfg = res.expectation_config
    meta = ((cfg.meta or {}) if cfg is not None else {}).get("datalab") or {}
    idx = meta.get("index")
    spec = specs[idx] if isinstance(idx, int) and 0 <= idx < len(specs) else None
    if spec is None:  # not one of ours: described by what GX ran
        spec = ExpectationSpec(cfg.type, dict(cfg.kwargs if cfg is not None else {}), meta.get("source", ""),
                               meta.get("sensor"))
    return fast.record(spec, idx if isinstance(idx, int) else len(specs), bool(res.success), res.result or {},
                       _exception_message(res.exception_info))


def _docs_index(ctx: Any, root: Path) -> str | None:
    """The local Data Docs index.html, as GX reports it (absolute path)."""
    from urllib.parse import unquote, urlparse

    try:
        sites = ctx.get_docs_sites_urls(site_name=DOCS_SITE_NAME, only_if_exists=True)
    except Exception:  # an unusual site config: fall back to the lab's layout
        sites = []
    for site in sites or []:
        url = site.get("site_url") if isinstance(site, dict) else None
        if url and url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return str(path.resolve())
    fallback = settings().data_docs / "index.html"
    return str(fallback) if fallback.is_file() else None


def validate(
    contract: Contract,
    frame: pl.DataFrame | pl.LazyFrame | Path,
    *,
    run_name: str,
    build_docs: bool = True,
    suites_dir: Path | None = None,
    curation_stats: dict[str, Any] | None = None,
    parts: PartSuite | None = None,
) -> ValidationReport:
    """Validate a curated long table against ``contract`` (and its hand-written suite).

    ``curation_stats`` (default: the curated stats the lab recorded for the
    delivery ``run_name``) feed the lab's own rules (:func:`lab_rules`).
    ``parts``: the suite already evaluated on the parts of a delivery curated
    in parts (:class:`PartSuite`); its report is the answer when it saw every
    row the curation wrote, else ``frame`` is validated.

    Suites, validation definitions, results and Data Docs persist in the
    lab's GX file context (``settings().gx_root``); the suite is rewritten on
    every run so contract changes take effect. ``run_name`` (the delivery id)
    becomes the GX run name, so Data Docs list each delivery's run, and names
    the report written to ``settings().validation / f"{run_name}.json"``.

    pandas' large copies stay on glibc's heap while the suite runs
    (:func:`datalab.quality.heap.pandas_heap`): 3.3 s instead of 3.9 s at 10 M rows.
    """
    if parts is not None:
        curation_stats = curation_stats if curation_stats is not None else _curation_stats(run_name)
        rows_out = (curation_stats or {}).get("rows_out")
        report = parts.report(run_name, curation_stats, int(rows_out)) if rows_out is not None else None
        if report is not None:
            return report
    t0 = _time.perf_counter()
    with heap.pandas_heap():
        report = _validate(contract, frame, run_name=run_name, build_docs=build_docs, suites_dir=suites_dir)
    return _with_lab_rules(report, contract, curation_stats, t0)


def _with_lab_rules(report: ValidationReport, contract: Contract, curation_stats: dict[str, Any] | None,
                    t0: float) -> ValidationReport:
    """The suite's report with the lab's own rules on the curation's counts appended, written (timed from ``t0``)."""
    if curation_stats is None:
        curation_stats = _curation_stats(report.run_name)
    for r in lab_rules(contract, curation_stats):
        report.results.append(replace(r, index=report.evaluated))
        report.evaluated += 1
        report.successful += int(r.success)
        report.failed += int(not r.success)
        report.success = report.success and r.success
    return _write_report(report, t0)


def _curation_stats(run_name: str) -> dict[str, Any] | None:
    """The curation counts of the delivery ``run_name`` names, if it is one the lab curated."""
    from datalab.store import state

    try:
        st = state.get(run_name)
    except Exception:  # no catalog, or not a delivery id: the lab rules need curation counts
        return None
    return ((st or {}).get("stats") or {}).get("curated")


def _validate(
    contract: Contract,
    frame: pl.DataFrame | pl.LazyFrame | Path,
    *,
    run_name: str,
    build_docs: bool,
    suites_dir: Path | None,
) -> ValidationReport:
    safe_segment(run_name, "run name")
    specs = _suite_for(contract) + load_handwritten(contract, suites_dir)
    s = settings()
    notes: list[str] = []
    whole_file = isinstance(frame, (str, Path)) and Path(frame).suffix == ".parquet" and Path(frame).is_file()
    chunkable = kind_of(contract).validate_in_chunks and whole_file \
        and all(validate_chunks.mergeable(sp.type, sp.kwargs) for sp in specs)
    by_time = validate_chunks.splittable_by_time(specs)  # a long series may be cut into time ranges
    if s.validate_engine == "fast":
        lf = fast.scan(frame)
        planned, need_gx = fast.plans(specs, lf.collect_schema())
        if not need_gx:
            chunks = validate_chunks.plan_chunks(Path(frame), s.validate_chunk_rows, by_time) if chunkable else None
            if chunks is not None:
                return _validate_fast_chunked(contract, Path(frame), chunks, specs, run_name)
            return _validate_fast(contract, lf, specs, run_name, planned)
        log.info("suite %s: %d expectation(s) need GX, validating with it: %s", contract.slug, len(need_gx), need_gx)
        notes.append(f"validated by Great Expectations: {len(need_gx)} expectation(s) the Polars path does not "
                     f"evaluate, e.g. {need_gx[0]}")
    chunks = None
    if chunkable:
        chunks = validate_chunks.plan_chunks(Path(frame), s.validate_chunk_rows, by_time)
    if chunks is not None:
        return _validate_chunked(contract, Path(frame), chunks, specs, run_name, notes)
    df = _to_pandas(frame, _plain_text_columns(specs))

    _import_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT,
    }
    run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
    root = s.gx_root
    with _gx_lock(root):
        ctx = _context(root)
        runner = _runner(ctx, contract, specs, build_docs=build_docs, result_format=result_format)
        if build_docs:
            cp_result = runner.run(batch_parameters={"dataframe": df}, run_id=run_id)
            suite_results = list(cp_result.run_results.values())
        else:
            suite_results = [
                runner.run(
                    batch_parameters={"dataframe": df}, result_format=result_format, run_id=run_id
                )
            ]
        docs_path = _docs_index(ctx, root) if build_docs else None

    results = [_result(r, specs) for sr in suite_results for r in sr.results]
    results.sort(key=lambda r: r.index)  # GX may reorder; reports follow the suite
    report = _report(contract, specs, results, run_name, len(df), docs_path, notes)
    if len(results) != len(specs):
        report.notes.append(f"{len(specs)} expectations in the suite but {len(results)} results")
    return report


def _validate_fast(contract: Contract, lf: pl.LazyFrame, specs: list[ExpectationSpec], run_name: str,
                   planned: dict[int, Any] | None = None) -> ValidationReport:
    """The suite evaluated by Polars on the curated table (``datalab.quality.fast``): no pandas copy, no GX import.

    Data Docs are GX's pages of GX's stored results, so a fast run does not
    rebuild them (``DATALAB_VALIDATE_ENGINE=gx`` does); the report, the
    delivery's state and the manifest carry the same results either way.
    """
    results, rows = fast.evaluate(specs, lf, planned=planned)
    note = ("validated by Polars (datalab.quality.fast), results as Great Expectations computes them; "
            "Data Docs are not rebuilt (DATALAB_VALIDATE_ENGINE=gx rebuilds them)")
    report = _report(contract, specs, results, run_name, rows, None, [note])
    report.engine = ENGINE_POLARS
    return report


def _validate_fast_chunked(contract: Contract, path: Path, chunks: list[Any], specs: list[ExpectationSpec],
                           run_name: str) -> ValidationReport:
    """The fast path on a large curated file, chunk by chunk (one sensor each), merged exactly as the GX chunks are.

    One aggregate query over a whole 10 M-row file held every column it read
    and the key's hash table at once: 3.1 GB, twice the rest of the
    pipeline's peak. A chunk holds at most ``validate_chunk_rows`` rows
    (:func:`validate_chunks.plan_chunks`), its expectations are chosen and
    merged by the same functions as the GX chunks', so the results are the
    same as the unchunked fast path's and GX's.
    """
    import polars as pl

    sensors = {ch.sensor for ch in chunks}
    got: list[ExpectationResult] = []
    rows = 0
    for n, ch in enumerate(chunks):
        chosen = validate_chunks.chunk_suite([sp.kwargs for sp in specs], ch, sensors, n == 0)
        lf = pl.scan_parquet(path).filter(ch.filter)
        if not chosen:
            rows += lf.select(pl.len()).collect().item()
            continue
        run = list(specs)
        for i, kw in chosen:
            run[i] = replace(specs[i], kwargs=kw)
        part, n_rows = fast.evaluate(run, lf, [i for i, _ in chosen], record_as=specs)
        rows += n_rows
        got += part
    results = [r.with_message() for r in validate_chunks.merge_by_index(got)]
    if len(results) != len(specs):
        raise RuntimeError(f"{len(specs)} expectations in the suite but {len(results)} merged results")
    note = (f"validated by Polars (datalab.quality.fast) in {len(chunks)} chunks of at most "
            f"{settings().validate_chunk_rows:,} rows (one sensor each), results merged exactly as Great "
            "Expectations' chunks are; Data Docs are not rebuilt (DATALAB_VALIDATE_ENGINE=gx rebuilds them)")
    report = _report(contract, specs, results, run_name, rows, None, [note])
    report.engine = ENGINE_POLARS
    return report


class PartSuite:
    """The suite evaluated on each part of a large delivery while curation holds it in memory (fast path).

    A delivery larger than a curation bucket is curated in parts
    (``Engine.sink_parquet_parts``), and its suite then read the finished
    file back in chunks of one sensor (:func:`_validate_fast_chunked`): a
    second decoding of every row and a pass to plan the chunks. Here each
    part, as it is written, is cut into the runs of one sensor it is sorted
    in (slices, no copy), and each run is evaluated like a file chunk:
    chosen and merged by the same functions (``validate_chunks``), so the
    counts and verdicts are those of the file's chunks. Samples of
    unexpected values come in the file's row order, as GX lists them on
    the whole table (the file's chunks listed them sensor by sensor).

    An expectation conditioned on a sensor the delivery does not hold runs,
    as written, on the first run (as on the first file chunk); its result is
    kept only if no later part holds that sensor. Anything the fast path
    does not take (a suite that needs GX, a column it cannot type) leaves
    ``report`` None: the caller validates the file as before.
    """

    def __init__(self, contract: Contract, specs: list[ExpectationSpec]):
        self.contract, self.specs = contract, specs
        self._kwargs = [sp.kwargs for sp in specs]
        self._got: list[ExpectationResult] = []
        self._if_absent: dict[str | None, list[ExpectationResult]] = {}  # from the first run, by condition sensor
        self._seen: set[str | None] = set()
        self.rows = 0
        self.runs = 0
        self.seconds = 0.0
        self.broken: str | None = None

    @classmethod
    def start(cls, contract: Contract, suites_dir: Path | None = None) -> PartSuite | None:
        """A part suite for ``contract``, or None where only the file can be validated (GX, unmergeable or unsplittable suites)."""
        if settings().validate_engine != "fast" or not kind_of(contract).validate_in_chunks:
            return None
        specs = _suite_for(contract) + load_handwritten(contract, suites_dir)
        if not (fast.may_evaluate(specs) and all(validate_chunks.mergeable(sp.type, sp.kwargs) for sp in specs)
                and validate_chunks.splittable_by_time(specs)):  # a long series' time chunks are parts of their own
            return None
        return cls(contract, specs)

    def add(self, part: pl.DataFrame) -> None:
        """Evaluate one part (the rows as the file holds them, in its order); an error makes ``report`` None."""
        if self.broken is not None:
            return
        t0 = _time.perf_counter()
        try:
            for run in _sensor_runs(part):
                self._evaluate(run)
        except Exception as e:  # the file is validated instead, which reports it
            self.broken = f"{type(e).__name__}: {e}"
            log.info("suite %s: parts not evaluated in memory (%s); the file is validated", self.contract.slug, self.broken)
        self.seconds += _time.perf_counter() - t0

    def _evaluate(self, rows: pl.DataFrame) -> None:
        import polars as pl

        sensor = rows.get_column("sensor")[0]
        chunk = validate_chunks.Chunk(pl.lit(True), sensor)
        first = self.runs == 0
        # The first run also runs what is conditioned on every other sensor, as written (kept if none holds it).
        chosen = validate_chunks.chunk_suite(self._kwargs, chunk, {sensor} if not first else set(), first)
        self.runs += 1
        self.rows += rows.height
        self._seen.add(sensor)
        if not chosen:
            return
        run = list(self.specs)
        for i, kw in chosen:
            run[i] = replace(self.specs[i], kwargs=kw)
        results, _ = fast.evaluate(run, rows, [i for i, _ in chosen], record_as=self.specs,
                                   grouped_by=SERIES_KEY if _grouped_by_series(rows) else frozenset())
        for r in results:
            other = validate_chunks.condition_sensor(self._kwargs[r.index])
            if first and other is not None and other != sensor and "row_condition" in run[r.index].kwargs:
                self._if_absent.setdefault(other, []).append(r)
            else:
                self._got.append(r)

    def report(self, run_name: str, curation_stats: dict[str, Any] | None, rows_out: int) -> ValidationReport | None:
        """The delivery's report (lab rules included, written), or None if the parts seen are not its ``rows_out`` rows."""
        if self.broken is not None or self.runs == 0 or self.rows != rows_out:
            return None
        t0 = _time.perf_counter() - self.seconds
        got = self._got + [r for sensor, rs in self._if_absent.items() if sensor not in self._seen for r in rs]
        results = [r.with_message() for r in validate_chunks.merge_by_index(got)]
        if len(results) != len(self.specs):
            return None
        note = (f"validated by Polars (datalab.quality.fast) on the curated parts while in memory, in {self.runs} runs "
                "of one sensor, results merged exactly as Great Expectations' chunks are; Data Docs are not rebuilt "
                "(DATALAB_VALIDATE_ENGINE=gx rebuilds them)")
        report = _report(self.contract, self.specs, results, run_name, self.rows, None, [note])
        report.engine = ENGINE_POLARS
        return _with_lab_rules(report, self.contract, curation_stats, t0)


# A reading's key in a curated table: a run of one sensor holds each machine's readings together, in time order.
SERIES_KEY = frozenset({"entity", "time", "sensor"})


def _grouped_by_series(rows: pl.DataFrame) -> bool:
    """Whether a run of one sensor holds each entity's rows together and in time order, with no null entity or time.

    A curated part is sorted so (the plan's one-key order); checked here,
    not assumed, so that equal keys are known to be neighbours before
    ``fast.evaluate`` compares neighbours only (``grouped_by``).
    """
    import polars as pl

    if not set(rows.columns) >= SERIES_KEY or any(rows.get_column(c).null_count() for c in SERIES_KEY):
        return False
    entity = rows.get_column("entity")
    runs = entity.rle()
    if runs.struct.field("value").n_unique() != runs.len():
        return False
    return bool(rows.select(((pl.col("entity") != pl.col("entity").shift(1)) | (pl.col("time") >= pl.col("time").shift(1)))
                            .fill_null(True).all()).item())


def _sensor_runs(part: pl.DataFrame) -> list[pl.DataFrame]:
    """The part's rows of each sensor: slices where each sensor's rows are one run (a curated part is sorted so), else filters."""
    import polars as pl

    runs = part.get_column("sensor").rle()
    if runs.struct.field("value").n_unique() == runs.len():
        out, at = [], 0
        for n in runs.struct.field("len").to_list():
            out.append(part.slice(at, n))
            at += n
        return out
    return [part.filter(pl.col("sensor").eq_missing(pl.lit(v, pl.String)))
            for v in part.get_column("sensor").unique(maintain_order=True).to_list()]


def _suite_for(contract: Contract) -> list[ExpectationSpec]:
    """The suite the contract's kind derives from it (datalab.kinds)."""
    return kind_of(contract).suite(contract)


def _report(
    contract: Contract, specs: list[ExpectationSpec], results: list[ExpectationResult], run_name: str,
    rows: int, docs_path: str | None, notes: list[str] | None = None,
) -> ValidationReport:
    """The report of a run: it passes only if every expectation of the suite has a passing result."""
    successful = sum(1 for r in results if r.success)
    return ValidationReport(
        success=all(r.success for r in results) and len(results) == len(specs),
        suite=contract.slug,
        evaluated=len(results),
        successful=successful,
        failed=len(results) - successful,
        results=results,
        docs_path=docs_path,
        seconds=0.0,
        run_name=run_name,
        contract_id=contract.id,
        contract_version=contract.version,
        rows=rows,
        notes=list(notes or []),
    )


def _write_report(report: ValidationReport, t0: float) -> ValidationReport:
    """The report, timed from ``t0`` (the suite and the lab's rules), written once beside the others."""
    out = settings().validation / f"{report.run_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report.report_path = str(out)
    report.seconds = round(_time.perf_counter() - t0, 3)
    tmp = out.with_suffix(".json.tmp")
    # Without indentation: json's C encoder then writes it (with ``indent`` the pure-Python one
    # did: 1.3 against 0.3 ms for C-MAPSS's 81 results, a suite of 30 ms); ``jq`` shows it indented.
    tmp.write_text(json.dumps(report.to_dict()), encoding="utf-8")
    tmp.replace(out)
    return report


@dataclass(frozen=True)
class _ChunkSuite:
    """Expectations a chunk runs on one batch: ``columns`` of its rows, or an empty frame (no columns)."""

    indexes: list[int]
    suite: Any
    columns: list[str]


def _chunk_suites(gx: Any, slug: str, specs: list[ExpectationSpec], chosen: list[tuple[int, dict[str, Any]]],
                  all_columns: list[str]) -> list[_ChunkSuite]:
    """Split a chunk's expectations into schema checks (on an empty frame) and data checks (on the columns they read).

    See :func:`datalab.quality.validate_chunks.columns_read` for why the batch is narrowed.
    """
    schema = [(i, kw) for i, kw in chosen if specs[i].type in validate_chunks.SCHEMA_ONLY]
    data = [(i, kw) for i, kw in chosen if specs[i].type not in validate_chunks.SCHEMA_ONLY]
    out = []
    for part, columns in ((schema, []), (data, validate_chunks.columns_read([kw for _, kw in data], all_columns))):
        if part:
            expectations = [_build_expectation(replace(specs[i], kwargs=kw), i) for i, kw in part]
            out.append(_ChunkSuite([i for i, _ in part], gx.ExpectationSuite(name=f"{slug}.chunk", expectations=expectations),
                                   columns))
    return out


def _validate_chunked(
    contract: Contract, path: Path, chunks: list[Any], specs: list[ExpectationSpec], run_name: str,
    notes: list[str] | None = None,
) -> ValidationReport:
    """Run the suite on each chunk of a large curated file; merge the results exactly.

    See :mod:`datalab.quality.validate_chunks`. Data Docs are not rebuilt for a
    chunked run (one page per chunk would mislead); the merged report is.
    """
    import polars as pl

    gx = _import_gx()
    from great_expectations.validator.v1_validator import Validator

    s = settings()
    # BASIC has every field the report keeps (counts, partial unexpected
    # list); SUMMARY adds the unexpected row index list and a query string
    # that GX builds by copying the batch again: 1.3 s at 10 M rows.
    result_format = {"result_format": "BASIC", "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT}
    sensors = {ch.sensor for ch in chunks}
    suites: dict[tuple[str | None, bool], list[_ChunkSuite]] = {}
    got: list[ExpectationResult] = []
    rows = 0
    regex_columns = _plain_text_columns(specs)
    all_columns = list(pl.read_parquet_schema(path))
    with _gx_lock(s.gx_root), _without_batch_fingerprint():
        ctx = _context(s.gx_root)
        # The whole suite stays stored and current, as for an unchunked run.
        _runner(ctx, contract, specs, build_docs=False, result_format=result_format)
        batch_def = _batch_definition(ctx, contract.slug)
        empty = _to_pandas(pl.scan_parquet(path).head(0), regex_columns)
        for n, ch in enumerate(chunks):
            key = (ch.sensor, n == 0)
            if key not in suites:
                chosen = validate_chunks.chunk_suite([sp.kwargs for sp in specs], ch, sensors, n == 0)
                suites[key] = _chunk_suites(gx, contract.slug, specs, chosen, all_columns)
            runs = suites[key]
            if not any(r.columns for r in runs):  # nothing to check here (another sensor's rules only)
                rows += pl.scan_parquet(path).filter(ch.filter).select(pl.len()).collect().item()
            for run in runs:
                if run.columns:
                    df = _to_pandas(pl.scan_parquet(path).filter(ch.filter).select(run.columns), regex_columns)
                    rows += len(df)
                else:
                    df = empty
                # GX's own validator, as ValidationDefinition.run uses it: one
                # batch per run (the chunk's columns, or the empty frame).
                res = Validator(batch_definition=batch_def, batch_parameters={"dataframe": df},
                                result_format=result_format).validate_expectation_suite(run.suite)
                del df
                part = [_result(r, specs) for r in res.results]
                if sorted(r.index for r in part) != sorted(run.indexes):
                    raise RuntimeError(f"a chunk ran {len(run.indexes)} expectations but gave {len(part)} results")
                got += part
    results = [r.with_message() for r in validate_chunks.merge_by_index(got)]
    if len(results) != len(specs):
        raise RuntimeError(f"{len(specs)} expectations in the suite but {len(results)} merged results")
    note = (f"validated in {len(chunks)} chunks of at most {s.validate_chunk_rows:,} rows (one sensor each), "
            "results merged exactly; Data Docs are not rebuilt for chunked runs")
    return _report(contract, specs, results, run_name, rows, None, [*(notes or []), note])
