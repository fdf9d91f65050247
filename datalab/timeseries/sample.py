"""Synthetic sensor deliveries with known defects, for testing the curation.

Real plant data arrives with duplicates, readings in the wrong unit, empty
values, spikes, gaps, rows out of order and timestamps written in local time.
To test that the curation repairs each of these, a test needs a delivery that
carries them *and* the exact number of each that it carries. ``generate``
builds such a delivery for a time-series ``Contract`` and returns the frame
together with that "truth"; ``write`` writes it byte for byte the same way
every time (same seed, same bytes), in the formats providers use.

Everything is vectorised with numpy and polars (no Python loop per row) so
that tens of millions of rows can be produced for load tests. Every random
choice comes from its own stream, derived from the seed and a purpose name,
so that changing one kind of defect does not change the others: a run with
only ``tz_shift`` differs from a clean run with the same seed in the
representation of the shifted timestamps and nothing else.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
import zoneinfo
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl

from datalab.contracts import units
from datalab.contracts.contract import Column, Contract

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A gap is a run of GAP_MIN..GAP_MAX expected timestamps missing from one
# series. At least GAP_MIN so that it stands out from the curation's
# gap_factor (3 steps) by a wide margin.
GAP_MIN = 10
GAP_MAX = 15

# Wrong-unit spellings per canonical unit: the mistakes seen in practice
# (a US-built controller reporting degF, psi or in/s; Hz instead of rpm; W
# instead of kW). A mix of UCUM codes and aliases, because deliveries mix
# them too; ``units.canonical`` understands both.
_ALT_UNITS: dict[str, str] = {
    "Cel": "[degF]",
    "K": "degF",
    "[degF]": "Cel",
    "bar": "psi",
    "mbar": "[psi]",
    "kPa": "psi",
    "MPa": "bar",
    "Pa": "mbar",
    "[psi]": "bar",
    "mm/s": "[in_i]/s",
    "m/s": "mm/s",
    "[in_i]/s": "mm/s",
    "/min": "Hz",
    "Hz": "rpm",
    "kW": "W",
    "W": "kW",
    "kg/s": "lbm/s",
    "L/min": "m3/h",
    "m/s2": "g",
    "A": "mA",
    "mm": "in",
}

FORMATS = (
    "csv",
    "csv.gz",
    "csv.zst",
    "tsv",
    "tsv.gz",
    "tsv.zst",
    "jsonl",
    "jsonl.gz",
    "jsonl.zst",
    "parquet",
)


@dataclass(frozen=True)
class Defects:
    """What to inject, as shares of readings (or rows) and counts.

    Shares are turned into counts by rounding ``share * n``; the counts
    actually injected (fewer when there are not enough eligible rows) are
    reported in ``Generated.truth``.
    """

    exact_duplicates: float = 0.01  # share of rows duplicated verbatim
    key_duplicates: float = 0.005  # same entity+time+sensor, different value
    wrong_unit: float = 0.01  # readings in another unit of the same dimension (long + unit column)
    missing: float = 0.005  # readings whose value is empty
    spikes: float = 0.002  # readings far outside [minimum, maximum]
    gaps: int = 2  # gaps per (entity, sensor) series, each >= GAP_MIN steps
    shuffle: bool = True  # rows not in time order
    tz_shift: float = 0.02  # rows with a non-UTC offset or naive local timestamp
    late: int = 0  # rows appended at the end with timestamps before ``start``

    def __post_init__(self) -> None:
        for name in (
            "exact_duplicates",
            "key_duplicates",
            "wrong_unit",
            "missing",
            "spikes",
            "tz_shift",
        ):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"Defects.{name} is a share of rows, between 0 and 1; got {share}")
        for name in ("gaps", "late"):
            if getattr(self, name) < 0:
                raise ValueError(f"Defects.{name} must not be negative")

    @classmethod
    def none(cls) -> Defects:
        """A clean delivery: no defect at all, rows in time order."""
        return cls(
            exact_duplicates=0.0,
            key_duplicates=0.0,
            wrong_unit=0.0,
            missing=0.0,
            spikes=0.0,
            gaps=0,
            shuffle=False,
            tz_shift=0.0,
            late=0,
        )


@dataclass
class Generated:
    """A generated delivery and what was injected into it.

    ``frame`` holds the columns exactly as they will be written (strings and
    numbers; a null is an empty field). ``truth`` counts: rows (height of
    the frame), exact_duplicates, key_duplicates, wrong_unit, missing,
    spikes, gaps (per (entity, sensor) series, summed), gap_rows (rows
    removed by the gaps), late, tz_shifted, entities, sensors.
    ``header`` and ``separator`` follow the contract's layout so that
    ``write`` produces a file the contract describes (e.g. header-less,
    space-separated for C-MAPSS).
    """

    frame: pl.DataFrame
    truth: dict[str, int]
    header: bool = True
    separator: str = ","


# --------------------------------------------------------------------------
# helpers: randomness, patterns, sensors


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent generator per purpose, so defects don't shift each other's draws."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _count(share: float, n: int) -> int:
    """Round half up (not banker's rounding) so counts are easy to predict."""
    return math.floor(share * n + 0.5)


def _expand_class(body: str) -> str | None:
    """The characters of a regex class body like ``A-Z0-9_``; None if too complex."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                return None
            nxt = body[i + 1]
            if nxt == "d":
                out.extend("0123456789")
            elif nxt.isalnum():
                return None
            else:
                out.append(nxt)
            i += 2
            continue
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = ord(c), ord(body[i + 2])
            if hi < lo:
                return None
            out.extend(chr(x) for x in range(lo, hi + 1))
            i += 3
            continue
        out.append(c)
        i += 1
    chars = "".join(dict.fromkeys(out))
    return chars or None


def _pattern_positions(pattern: str) -> list[str] | None:
    """A simple anchored regex as a list of positions, each the characters it allows.

    Handles what id patterns in contracts use (literals, classes, ``\\d``,
    ``{n}``/``{n,m}``); returns None for anything else (groups, alternation),
    and the caller falls back to a plain id.
    """
    p = pattern
    if p.startswith("^"):
        p = p[1:]
    if p.endswith("$") and not p.endswith("\\$"):
        p = p[:-1]
    out: list[str] = []
    i = 0
    while i < len(p):
        c = p[i]
        alpha: str | None
        if c == "[":
            j = p.find("]", i + 2)
            if j < 0 or p[i + 1] == "^":
                return None
            alpha = _expand_class(p[i + 1 : j])
            i = j + 1
        elif c == "\\":
            if i + 1 >= len(p):
                return None
            nxt = p[i + 1]
            alpha = "0123456789" if nxt == "d" else (None if nxt.isalnum() else nxt)
            i += 2
        elif c in "()|.*+?{}":
            return None
        else:
            alpha = c
            i += 1
        if alpha is None:
            return None
        rep = 1
        if i < len(p) and p[i] == "{":
            j = p.find("}", i)
            m = re.fullmatch(r"(\d+)(?:,(\d*))?", p[i + 1 : j]) if j > 0 else None
            if m is None:
                return None
            rep = max(int(m.group(1)), 1)
            i = j + 1
        elif i < len(p) and p[i] == "+":
            i += 1
        elif i < len(p) and p[i] in "?*":
            return None
        out.extend([alpha] * rep)
    return out


def _entity_ids(col: Column, n: int) -> list[Any]:
    """``n`` distinct entity ids that match the entity column's pattern.

    Counts up from 1 in the pattern's own digits (``BSW-M01``, ``LP-A1``,
    ``OP-001``) so ids look like the provider's; integer columns get 1..n.
    """
    if col.logical_type == "integer":
        return list(range(1, n + 1))
    if col.enum:
        if len(col.enum) < n:
            raise ValueError(
                f"{col.name}: only {len(col.enum)} allowed values, asked for {n} entities"
            )
        return list(col.enum[:n])
    positions = _pattern_positions(col.pattern) if col.pattern else None
    if positions is None:
        ids = [f"E{i:03d}" for i in range(1, n + 1)]
    else:
        radices = [len(a) for a in positions]
        if math.prod(radices) <= n:
            raise ValueError(f"{col.name}: pattern {col.pattern!r} allows fewer than {n} ids")
        ids = []
        for k in range(1, n + 1):
            chars = []
            for alpha in reversed(positions):
                k, r = divmod(k, len(alpha))
                chars.append(alpha[r])
            ids.append("".join(reversed(chars)))
    if col.pattern:
        bad = [x for x in ids if not re.fullmatch(col.pattern, x)]
        if bad:
            raise ValueError(
                f"{col.name}: cannot make ids matching {col.pattern!r} (got {bad[0]!r})"
            )
    return ids


def _random_values(col: Column, n: int, rng: np.random.Generator) -> list[Any]:
    """``n`` distinct plausible values of an attribute column (e.g. operator badges)."""
    if col.enum:
        return [col.enum[i % len(col.enum)] for i in range(n)]
    if col.logical_type in ("integer", "number"):
        lo = int(col.minimum if col.minimum is not None else 1)
        hi = int(col.maximum if col.maximum is not None else lo + 10_000)
        return [int(x) for x in rng.integers(lo, hi + 1, n)]
    if col.logical_type == "boolean":
        return [bool(i % 2) for i in range(n)]
    positions = _pattern_positions(col.pattern) if col.pattern else None
    out: list[Any] = []
    seen: set[Any] = set()
    for attempt in range(n * 20):
        if positions is None:
            value = f"{col.name}-{attempt + 1}"
        else:
            value = "".join(a[int(rng.integers(len(a)))] for a in positions)
        if value not in seen and (not col.pattern or re.fullmatch(col.pattern, value)):
            seen.add(value)
            out.append(value)
            if len(out) == n:
                break
    if len(out) < n:
        out += [out[-1] if out else f"{col.name}-0"] * (n - len(out))
    return out


def _alt_unit(canon: str | None) -> str | None:
    """Another spelling of the same dimension for wrong-unit readings; None if none."""
    if canon is None:
        return None
    pref = _ALT_UNITS.get(canon)
    if pref is not None and units.canonical(pref) != canon and units.conversion(canon, pref):
        return pref
    for row in units.conversion_rows({canon}):
        raw = row["raw_unit"]
        if raw != canon and units.canonical(raw) == raw:
            return raw
    return None


def _decimals(span: float, factor: float = 1.0, integer: bool = False) -> int:
    """Decimals that resolve about 1e-5 of the range (in the written unit)."""
    if integer:
        return 0
    d = math.ceil(-math.log10(span * abs(factor) / 1e5))
    return int(min(max(d, 0), 9))


@dataclass(frozen=True)
class _Sensors:
    """Per-sensor constants as arrays, indexed by sensor number."""

    names: list[str]
    canon: list[str]  # unit column text of clean rows
    lo: np.ndarray
    hi: np.ndarray
    span: np.ndarray
    # canonical -> unit written in the file (source_unit when the file has no unit column)
    file_factor: np.ndarray
    file_offset: np.ndarray
    file_dec: np.ndarray
    alt: list[str | None]
    alt_factor: np.ndarray
    alt_offset: np.ndarray
    alt_dec: np.ndarray

    @property
    def has_alt(self) -> np.ndarray:
        return np.array([a is not None for a in self.alt], dtype=bool)


def _sensors(c: Contract, unit_in_file: bool) -> _Sensors:
    cols = c.measurements
    lo, hi, ff, fo, fd, af, ao, ad = ([] for _ in range(8))
    alts: list[str | None] = []
    for col in cols:
        a = float(col.minimum) if col.minimum is not None else None
        b = float(col.maximum) if col.maximum is not None else None
        a = a if a is not None else (0.0 if b is None or b > 0 else b - 100.0)
        b = b if b is not None else a + 100.0
        b = b if b > a else a + 1.0
        lo.append(a)
        hi.append(b)
        integer = col.logical_type == "integer"
        f, o = 1.0, 0.0
        if not unit_in_file and col.source_unit and col.unit:
            f, o = units.conversion(col.unit, col.source_unit) or (1.0, 0.0)
        ff.append(f)
        fo.append(o)
        fd.append(_decimals(b - a, f, integer))
        alt = _alt_unit(col.unit) if unit_in_file else None
        alts.append(alt)
        conv = units.conversion(col.unit, alt) if alt and col.unit else None
        af.append(conv[0] if conv else 1.0)
        ao.append(conv[1] if conv else 0.0)
        ad.append(_decimals(b - a, conv[0] if conv else 1.0, integer) if conv else 0)
    arr = np.asarray
    return _Sensors(
        names=[col.source_name for col in cols],
        canon=[col.unit or "" for col in cols],
        lo=arr(lo),
        hi=arr(hi),
        span=arr(hi) - arr(lo),
        file_factor=arr(ff),
        file_offset=arr(fo),
        file_dec=arr(fd, dtype=np.int64),
        alt=alts,
        alt_factor=arr(af),
        alt_offset=arr(ao),
        alt_dec=arr(ad, dtype=np.int64),
    )


@dataclass(frozen=True)
class _Signal:
    """Per-series shape of the signal: level, slow drift phase and period."""

    level: np.ndarray  # (entities, sensors), share of range around 0.4
    phase: np.ndarray  # (entities, sensors)
    period: np.ndarray  # (sensors,), in steps


def _signal(seed: int, n_entities: int, n_sensors: int) -> _Signal:
    rng = _rng(seed, "signal")
    return _Signal(
        level=rng.uniform(-0.06, 0.06, (n_entities, n_sensors)),
        phase=rng.uniform(0.0, 2 * np.pi, (n_entities, n_sensors)),
        period=rng.uniform(1800.0, 7200.0, n_sensors),
    )


def _values(
    sig: _Signal, sen: _Sensors, t: np.ndarray, e: np.ndarray, s: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Plausible canonical values: 40% of range, +-6% per series, 5% sine drift, 3% noise.

    Broadcasts, so it serves long (1-D t, e, s) and wide (t[:, None], s[None, :]).
    Clipped to [1%, 99%] of the range so a clean reading is never out of range.
    """
    frac = (
        0.4
        + sig.level[e, s]
        + 0.05 * np.sin(2 * np.pi * t / sig.period[s] + sig.phase[e, s])
        + 0.03 * noise
    )
    return sen.lo[s] + np.clip(frac, 0.01, 0.99) * sen.span[s]


def _round(v: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Round element-wise to per-element decimals (k / 10**d prints as a short decimal)."""
    scale = np.power(10.0, dec)
    return np.round(v * scale) / scale


def _gap_runs(
    n_steps: int, n_series: int, gaps: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Row offsets (step * n_series + series) of gap runs, and gaps placed per series.

    Each series is split into ``gaps`` equal segments, one run per segment,
    with at least two readings on both sides: a run at the edge of the
    window could not be told from the window's end, and runs touching each
    other would count as one.
    """
    g = gaps
    while g > 0 and n_steps // g < GAP_MAX + 4:
        g -= 1
    if g == 0:
        return np.empty(0, dtype=np.int64), 0
    seg = n_steps // g
    lengths = rng.integers(GAP_MIN, GAP_MAX + 1, (n_series, g))
    u = rng.random((n_series, g))
    starts = np.arange(g)[None, :] * seg + 2 + np.floor(u * (seg - lengths - 3)).astype(np.int64)
    parts = [
        np.arange(starts[k, j], starts[k, j] + lengths[k, j], dtype=np.int64) * n_series + k
        for k in range(n_series)
        for j in range(g)
    ]
    return np.concatenate(parts), g


class _Picker:
    """Disjoint random row sets: one permutation, each defect takes the next free rows."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.order = rng.permutation(n)
        self.free = np.ones(n, dtype=bool)

    def take(self, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        ok = self.free[self.order]
        if eligible is not None:
            ok &= eligible[self.order]
        sel = self.order[np.flatnonzero(ok)[:k]]
        self.free[sel] = False
        return np.sort(sel)


def _local_shuffle(t: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation that mixes rows within blocks of ``block`` rows.

    Gateways deliver rows out of order over seconds, not across the whole
    file; a local shuffle reproduces that and keeps large files cheap to
    shuffle. Guarantees the result is not in time order when it can be.
    """
    n = len(t)
    nb = n // block
    head = np.argsort(rng.random((nb, block)), axis=1) + (np.arange(nb) * block)[:, None]
    perm = np.concatenate([head.ravel(), nb * block + rng.permutation(n - nb * block)])
    tp = t[perm]
    if n > 1 and tp.max() > tp.min() and np.all(tp[1:] >= tp[:-1]):
        perm[[0, -1]] = perm[[-1, 0]]
    return perm


def _insert_after(n: int, src: np.ndarray) -> np.ndarray:
    """Order of ``n`` base rows with copies (numbered n, n+1, ...) right after their source."""
    return np.insert(np.arange(n, dtype=np.int64), src + 1, n + np.arange(len(src), dtype=np.int64))


# --------------------------------------------------------------------------
# time column


def _utc_us(start: datetime | None) -> int:
    start = start or DEFAULT_START
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return (start - _EPOCH) // timedelta(microseconds=1)


def _iso_time(c: Contract) -> bool:
    """Whether the time column is written as ISO-8601 text (and can be tz-shifted)."""
    return c.time.logical_type == "timestamp" and c.layout.timestamp_format is None


def _time_series(
    c: Contract, t: np.ndarray, shifted: np.ndarray, start_us: int, step: int
) -> pl.Series:
    """The time column: UTC ``...Z`` text, with the shifted rows in another representation.

    ``shifted``: 0 = UTC with Z, 1 = explicit offset (local time of the
    contract's zone, or +02:00 where that zone is at UTC), 2 = naive local
    time in ``layout.timezone``. All denote the same instant. A naive time
    that is ambiguous (autumn DST change) is written with its offset instead.
    """
    name = c.time.source_name
    if c.time.logical_type != "timestamp":
        # An integer axis (cycles) continues from a later ``start``: one cycle per second after
        # DEFAULT_START, so deliveries generated for successive windows do not repeat each other's keys
        # (the default start gives cycles from 1, as before).
        offset = max(0, (start_us - _utc_us(DEFAULT_START)) // 1_000_000)
        return pl.Series(name, 1 + offset + t * step, dtype=pl.Int64)
    frac = "" if start_us % 1_000_000 == 0 and step % 1_000_000 == 0 else "%.3f"
    if frac and (start_us % 1000 or step % 1000):
        frac = "%.6f"
    lo = int(t.min()) if len(t) else 0
    hi = int(t.max()) if len(t) else 0
    table = pl.from_epoch(pl.Series(start_us + np.arange(lo, hi + 1, dtype=np.int64) * step), "us")
    zone = c.layout.timezone or "UTC"
    if c.layout.timestamp_format:
        text = table.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
        return text.dt.strftime(c.layout.timestamp_format).gather(t - lo).alias(name)
    out = table.dt.strftime(f"%Y-%m-%dT%H:%M:%S{frac}Z").gather(t - lo).alias(name)
    pos = np.flatnonzero(shifted)
    if len(pos) == 0:
        return out
    start_dt = _EPOCH + timedelta(microseconds=start_us)
    offset = start_dt.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()
    off_zone = zone if offset else "Etc/GMT-2"  # POSIX sign: Etc/GMT-2 is +02:00
    inst = pl.from_epoch(pl.Series(start_us + t[pos] * step), "us").dt.replace_time_zone("UTC")
    with_offset = inst.dt.convert_time_zone(off_zone).dt.strftime(f"%Y-%m-%dT%H:%M:%S{frac}%:z")
    local = inst.dt.convert_time_zone(zone).dt.replace_time_zone(None)
    back = local.dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
    frame = pl.DataFrame(
        {
            "kind": shifted[pos],
            "off": with_offset,
            "naive": local.dt.strftime(f"%Y-%m-%dT%H:%M:%S{frac}"),
            "ok": (back.dt.convert_time_zone("UTC") == inst).fill_null(False),
        }
    )
    alt = frame.select(
        pl.when((pl.col("kind") == 2) & pl.col("ok")).then("naive").otherwise("off")
    ).to_series()
    return out.scatter(pos, alt)


# --------------------------------------------------------------------------
# generation


def generate(
    contract: Contract,
    rows: int,
    seed: int = 0,
    start: datetime | None = None,
    entities: int = 3,
    defects: Defects | None = None,
) -> Generated:
    """A delivery of ``rows`` readings (wide: rows) for ``contract``, with ``defects``.

    Readings are spaced by ``contract.curation.expected_step`` and
    interleaved across entities and sensors. ``rows`` counts the grid before
    gaps are cut out and before duplicates and late rows are added, so the
    frame has ``rows - gap_rows + exact_duplicates + key_duplicates + late``
    rows. Same arguments give the same frame.
    """
    if not contract.series:
        raise ValueError(
            f"{contract.id}: only time-series contracts can be generated, not {contract.kind}"
        )
    if contract.layout.shape not in ("long", "wide"):
        raise ValueError(
            f"{contract.id}: layout shape {contract.layout.shape!r} is not generated (long, wide)"
        )
    if rows < 0 or entities < 1:
        raise ValueError("rows must be >= 0 and entities >= 1")
    d = defects if defects is not None else Defects()
    step = contract.curation.expected_step or (
        1_000_000 if contract.time.logical_type == "timestamp" else 1
    )
    start_us = _utc_us(start)
    if contract.layout.shape == "long":
        return _generate_long(contract, rows, seed, start_us, step, entities, d)
    return _generate_wide(contract, rows, seed, start_us, step, entities, d)


def _attribute_columns(
    c: Contract, t: np.ndarray, e: np.ndarray, n_entities: int, seed: int, step: int
) -> dict[str, pl.Series]:
    """Attribute columns (e.g. operator badge): a handful of values per entity, by shift.

    The value changes every shift (8 h, or a quarter of the window when
    that is shorter) so that even a small delivery carries several values,
    and it depends only on entity and time, so a verbatim duplicate stays
    verbatim.
    """
    out: dict[str, pl.Series] = {}
    per_entity = 4
    span = int(t.max() - t.min() + 1) if len(t) else 1
    steps_per_shift = 8 * 3600 * 1_000_000 // step if c.time.logical_type == "timestamp" else 480
    shift = max(1, min(steps_per_shift, span // per_entity))
    for col in c.attributes:
        rng = _rng(seed, f"attribute:{col.name}")
        values = _random_values(col, n_entities * per_entity, rng)
        code = e * per_entity + (t // shift) % per_entity
        out[col.source_name] = pl.Series(col.source_name, values).gather(code)
    return out


@dataclass(frozen=True)
class _Spec:
    """What one generation fixes before drawing anything: the contract, seed, time axis, shape, sensors and signal.

    Long and wide deliveries differ in what a row is, and only there: a
    long row is one reading, step, entity and sensor interleaved (every
    sensor of an entity, then the next entity); a wide row is one entity at
    one step with a cell per sensor, whose sensor index is the row of all
    sensors (``[[0, 1, ...]]``) and broadcasts over the cells. ``place`` and
    ``readings`` say so once, so that the grid, the defects, the duplicates
    and the late rows are drawn by the same code for both.
    """

    c: Contract
    seed: int
    start_us: int
    step: int
    n_ent: int
    long: bool
    sen: _Sensors
    sig: _Signal

    @property
    def n_sen(self) -> int:
        return len(self.sen.names)

    @property
    def per_step(self) -> int:
        """Rows per expected step: one per (entity, sensor) long, one per entity wide."""
        return self.n_ent * self.n_sen if self.long else self.n_ent

    def place(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entity, sensor) of rows ``i`` counted from the start of a step run (the step is ``i // per_step``)."""
        if self.long:
            return (i // self.n_sen) % self.n_ent, i % self.n_sen
        return i % self.n_ent, np.arange(self.n_sen)[None, :]

    def readings(self, t: np.ndarray, e: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Canonical values of rows (t, e, s): one per long row, a row of cells per wide row."""
        if self.long:
            return _values(self.sig, self.sen, t, e, s, rng.standard_normal(len(t)))
        return _values(self.sig, self.sen, t[:, None], e[:, None], s, rng.standard_normal((len(t), self.n_sen)))


def _spec(c: Contract, seed: int, start_us: int, step: int, n_ent: int, long: bool) -> _Spec:
    # A wide file carries no unit: values are in each column's source_unit.
    sen = _sensors(c, unit_in_file=long and c.layout.unit_column is not None)
    return _Spec(c, seed, start_us, step, n_ent, long, sen, _signal(seed, n_ent, len(sen.names)))


@dataclass
class _Grid:
    """The clean readings with the gaps cut out: step ``t``, entity ``e``, sensor ``s`` (see ``_Spec.place``), value ``v``.

    ``v`` is canonical and changed in place when spikes are injected.
    """

    t: np.ndarray
    e: np.ndarray
    s: np.ndarray
    v: np.ndarray
    gap_idx: np.ndarray  # grid rows removed by the gaps
    gaps: int  # gaps placed per series


def _grid(sp: _Spec, rows: int, gaps: int) -> _Grid:
    """``rows`` grid rows spaced by one step per ``per_step`` rows, less the gap runs.

    The gaps are cut first so that the defects are drawn from the rows that remain.
    """
    i = np.arange(rows, dtype=np.int64)
    t = i // sp.per_step
    e, s = sp.place(i)
    v = sp.readings(t, e, s, _rng(sp.seed, "values"))
    del i
    gap_idx, g = _gap_runs(rows // sp.per_step, sp.per_step, gaps, _rng(sp.seed, "gaps"))
    if len(gap_idx):
        keep = np.ones(rows, dtype=bool)
        keep[gap_idx] = False
        t, e, v = t[keep], e[keep], v[keep]
        s = s[keep] if sp.long else s
    return _Grid(t, e, s, v, gap_idx, g)


@dataclass(frozen=True)
class _Picked:
    """Where each defect goes: row numbers (long rows; wide: cells for spikes and missing, rows for the others).

    Drawn disjoint (``_Picker``), so one reading carries at most one defect
    and the lengths are the truth.
    """

    spikes: np.ndarray
    missing: np.ndarray
    wrong: np.ndarray
    tz: np.ndarray
    exact: np.ndarray
    key: np.ndarray


def _pick_long(sp: _Spec, g: _Grid, d: Defects) -> _Picked:
    """The readings of each defect, from one permutation (so their draws do not depend on each other's counts).

    Spikes and missing only on even steps: two removed readings in a row
    would leave a hole of 3 steps, which the curation would see as a gap
    that the truth does not count. A wrong unit only where the sensor has
    another unit of its dimension.
    """
    n = len(g.t)
    even = g.t % 2 == 0
    pick = _Picker(n, _rng(sp.seed, "defects"))
    spikes = pick.take(_count(d.spikes, n), even)
    missing = pick.take(_count(d.missing, n), even)
    has_alt = sp.sen.has_alt
    wrong = pick.take(_count(d.wrong_unit, n), has_alt[g.s]) if has_alt.any() else pick.take(0)
    tz = pick.take(_count(d.tz_shift, n)) if _iso_time(sp.c) else pick.take(0)
    exact = pick.take(_count(d.exact_duplicates, n))
    key = pick.take(_count(d.key_duplicates, n))
    return _Picked(spikes=spikes, missing=missing, wrong=wrong, tz=tz, exact=exact, key=key)


def _pick_wide(sp: _Spec, g: _Grid, d: Defects) -> _Picked:
    """Cells first (spikes, missing; even steps only, as in ``_pick_long``), then whole rows among the untouched ones.

    No wrong unit: a wide file has no unit column to name one.
    """
    n, n_sen = len(g.t), sp.n_sen
    even_cells = np.repeat(g.t % 2 == 0, n_sen)
    cells = _Picker(n * n_sen, _rng(sp.seed, "defects"))
    spikes = cells.take(_count(d.spikes, n * n_sen), even_cells)
    blank_ok = _separator(sp.c) != " "  # an empty field cannot be told apart in a blank-separated file
    missing = cells.take(_count(d.missing, n * n_sen) if blank_ok else 0, even_cells)
    rows_pick = _Picker(n, _rng(sp.seed, "defect-rows"))
    rows_pick.free[np.concatenate([spikes, missing]) // n_sen] = False
    tz = rows_pick.take(_count(d.tz_shift, n)) if _iso_time(sp.c) else rows_pick.take(0)
    exact = rows_pick.take(_count(d.exact_duplicates, n))
    key = rows_pick.take(_count(d.key_duplicates, n))
    return _Picked(spikes=spikes, missing=missing, wrong=rows_pick.take(0), tz=tz, exact=exact, key=key)


@dataclass(frozen=True)
class _Rows:
    """The delivery's rows as parallel arrays, in the order they are written.

    ``t`` step and ``e`` entity per row; ``out`` the values as written (one
    per long row, a row of cells per wide row; NaN is an empty field);
    ``shifted`` how the row's time is written (see ``_time_series``). Long
    rows also carry ``s``, the sensor, and ``unit``, an index into the unit
    table (the sensor's unit, or n_sen + sensor for its wrong unit); wide
    rows do not (None).
    """

    t: np.ndarray
    e: np.ndarray
    out: np.ndarray
    shifted: np.ndarray
    s: np.ndarray | None = None
    unit: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(*(None if x is None else x[idx] for x in self._arrays()))

    def concat(self, other: _Rows) -> _Rows:
        return _Rows(*(None if x is None else np.concatenate([x, y]) for x, y in zip(self._arrays(), other._arrays(), strict=True)))

    def _arrays(self) -> tuple[np.ndarray | None, ...]:
        return (self.t, self.e, self.out, self.shifted, self.s, self.unit)


def _spike_values(sp: _Spec, ss: np.ndarray) -> np.ndarray:
    """Spikes of sensors ``ss``: 5 to 10 ranges above the maximum, far outside anything plausible."""
    return sp.sen.hi[ss] + sp.sen.span[ss] * _rng(sp.seed, "defect-values").uniform(5.0, 10.0, len(ss))


def _file_values(sen: _Sensors, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Canonical values ``v`` of sensors ``s`` in the unit the file writes, rounded as the file writes them."""
    return _round(v * sen.file_factor[s] + sen.file_offset[s], sen.file_dec[s])


def _key_values(sen: _Sensors, vk: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A key duplicate's canonical value: 15% of the range away from its source's ``vk``, still in range."""
    delta = 0.15 * sen.span[s]
    return np.where(vk + delta <= sen.hi[s], vk + delta, vk - delta)


def _shift_kinds(sp: _Spec, n: int, tz: np.ndarray) -> np.ndarray:
    """Per row, how its time is written: 0 in UTC, the rows ``tz`` 1 (with an offset) or 2 (naive local)."""
    shifted = np.zeros(n, dtype=np.int8)
    shifted[tz] = 1 + _rng(sp.seed, "tz").integers(0, 2, len(tz))
    return shifted


def _inject_long(sp: _Spec, g: _Grid, p: _Picked) -> tuple[_Rows, np.ndarray]:
    """The long rows as written, with spikes, wrong units, missing values and shifted times; and the key duplicates' values.

    A wrong-unit reading is converted to the sensor's other unit, which its
    unit field names (``unit`` n_sen + sensor).
    """
    sen, s, v = sp.sen, g.s, g.v
    v[p.spikes] = _spike_values(sp, s[p.spikes])
    out = _file_values(sen, v, s)
    unit = s.copy()
    sw = s[p.wrong]
    out[p.wrong] = _round(v[p.wrong] * sen.alt_factor[sw] + sen.alt_offset[sw], sen.alt_dec[sw])
    unit[p.wrong] += sp.n_sen
    out[p.missing] = np.nan
    shifted = _shift_kinds(sp, len(g.t), p.tz)
    sk = s[p.key]
    key_out = _file_values(sen, _key_values(sen, v[p.key], sk), sk)
    return _Rows(g.t, g.e, out, shifted, s=s, unit=unit), key_out


def _inject_wide(sp: _Spec, g: _Grid, p: _Picked) -> tuple[_Rows, np.ndarray]:
    """The wide rows as written, with spiked and missing cells and shifted times; and the key duplicates' rows of values."""
    sen, v, sidx = sp.sen, g.v, g.s
    flat = v.reshape(-1)  # a view: cell id = row * n_sen + sensor
    flat[p.spikes] = _spike_values(sp, p.spikes % sp.n_sen)
    out = _file_values(sen, v, sidx)
    out.reshape(-1)[p.missing] = np.nan
    shifted = _shift_kinds(sp, len(g.t), p.tz)
    key_out = _file_values(sen, _key_values(sen, v[p.key], sidx), sidx)
    return _Rows(g.t, g.e, out, shifted), key_out


def _with_duplicates(sp: _Spec, rows: _Rows, p: _Picked, key_out: np.ndarray, shuffle: bool) -> _Rows:
    """Each duplicate right after its source row, then, with ``shuffle``, the rows mixed within local blocks.

    An exact duplicate repeats its row verbatim; a key duplicate repeats its
    key with another value (``key_out``); both write their time in UTC.
    """
    n = len(rows.t)
    src = np.concatenate([p.exact, p.key])
    copies = rows.take(src)
    copies = _Rows(copies.t, copies.e, np.concatenate([rows.out[p.exact], key_out]),
                   np.zeros(len(src), dtype=np.int8), copies.s, copies.unit)
    rows = rows.concat(copies)
    order = _insert_after(n, src)
    if shuffle:
        order = order[_local_shuffle(rows.t[order], max(64, 4 * sp.per_step), _rng(sp.seed, "shuffle"))]
    return rows.take(order)


def _late_rows(sp: _Spec, n_late: int) -> _Rows:
    """``n_late`` clean rows before the window's start (steps -1, -2, ...), as a gateway's backlog arrives: appended at the end."""
    j = np.arange(n_late, dtype=np.int64)
    t = -1 - j // sp.per_step
    e, s = sp.place(j)
    out = _file_values(sp.sen, sp.readings(t, e, s, _rng(sp.seed, "late")), s)
    zeros = np.zeros(n_late, dtype=np.int8)
    return _Rows(t, e, out, zeros, s=s, unit=s) if sp.long else _Rows(t, e, out, zeros)


def _key_columns(sp: _Spec, rows: _Rows) -> dict[str, pl.Series]:
    """The entity and time columns, both layouts' first two."""
    c = sp.c
    return {
        c.entity.source_name: pl.Series(c.entity.source_name, _entity_ids(c.entity, sp.n_ent)).gather(rows.e),
        c.time.source_name: _time_series(c, rows.t, rows.shifted, sp.start_us, sp.step),
    }


def _long_columns(sp: _Spec, rows: _Rows) -> dict[str, pl.Series]:
    """Long columns: entity, time, sensor, value, the unit where the layout has a unit column, the attributes."""
    lay, sen = sp.c.layout, sp.sen
    cols = _key_columns(sp, rows)
    cols[lay.sensor_column] = pl.Series(lay.sensor_column, sen.names).gather(rows.s)
    cols[lay.value_column] = pl.Series(lay.value_column, rows.out, nan_to_null=True)
    if lay.unit_column is not None:
        table = sen.canon + [a or "" for a in sen.alt]
        cols[lay.unit_column] = pl.Series(lay.unit_column, table).gather(rows.unit)
    cols.update(_attribute_columns(sp.c, rows.t, rows.e, sp.n_ent, sp.seed, sp.step))
    return cols


def _wide_columns(sp: _Spec, rows: _Rows) -> dict[str, pl.Series]:
    """Wide columns: entity, time, one per sensor, the attributes; in the layout's order where it fixes one."""
    cols = _key_columns(sp, rows)
    for k, name in enumerate(sp.sen.names):
        cols[name] = pl.Series(name, np.ascontiguousarray(rows.out[:, k]), nan_to_null=True)
    cols.update(_attribute_columns(sp.c, rows.t, rows.e, sp.n_ent, sp.seed, sp.step))
    lay = sp.c.layout
    if lay.columns:  # header-less files: the layout fixes the order
        by_name = {col.name: col.source_name for col in sp.c.columns}
        names = [by_name.get(x, x) for x in lay.columns]
        names += [x for x in cols if x not in names]
        cols = {x: cols[x] for x in names if x in cols}
    return cols


def _truth(frame: pl.DataFrame, p: _Picked, *, gaps: int, gap_rows: int, late: int, entities: int,
           sensors: int) -> dict[str, int]:
    """What a generator injected, counted (the picked index arrays' lengths)."""
    return {
        "rows": frame.height,
        "exact_duplicates": len(p.exact),
        "key_duplicates": len(p.key),
        "wrong_unit": len(p.wrong),
        "missing": len(p.missing),
        "spikes": len(p.spikes),
        "gaps": gaps,
        "gap_rows": gap_rows,
        "late": late,
        "tz_shifted": len(p.tz),
        "entities": entities,
        "sensors": sensors,
    }


def _separator(c: Contract) -> str:
    delim = c.layout.delimiter
    if delim is None:
        return ","
    return " " if delim == "whitespace" else delim


def _deliver(sp: _Spec, g: _Grid, p: _Picked, rows: _Rows, key_out: np.ndarray, d: Defects) -> Generated:
    """The steps both layouts share after the defects: duplicates, shuffle, late rows, the frame and its truth."""
    rows = _with_duplicates(sp, rows, p, key_out, d.shuffle)
    n_late = d.late if _iso_time(sp.c) else 0
    if n_late:
        rows = rows.concat(_late_rows(sp, n_late))
    cols = _long_columns(sp, rows) if sp.long else _wide_columns(sp, rows)
    frame = pl.DataFrame(list(cols.values()))
    truth = _truth(frame, p, gaps=g.gaps * sp.n_ent * sp.n_sen, gap_rows=len(g.gap_idx), late=n_late,
                   entities=sp.n_ent, sensors=sp.n_sen)
    return Generated(frame, truth, header=sp.c.layout.header, separator=_separator(sp.c))


def _generate_long(
    c: Contract, rows: int, seed: int, start_us: int, step: int, n_ent: int, d: Defects
) -> Generated:
    """Long layout: one row per reading (entity, time, sensor, value and, with a unit column, unit).

    Every defect is a share of readings; a reading in a wrong unit says so
    in its unit field, so wrong units need a unit column.
    """
    sp = _spec(c, seed, start_us, step, n_ent, long=True)
    g = _grid(sp, rows, d.gaps)
    p = _pick_long(sp, g, d)
    out, key_out = _inject_long(sp, g, p)
    return _deliver(sp, g, p, out, key_out, d)


def _generate_wide(
    c: Contract, rows: int, seed: int, start_us: int, step: int, n_ent: int, d: Defects
) -> Generated:
    """Wide layout: one row per entity and step, one column per sensor.

    A reading is a cell, so missing and spikes are shares of cells; a gap
    drops whole rows of one entity (a gap in each of its sensor series);
    duplicates are whole rows. The file carries no unit, so values are in
    each column's source_unit when it has one, and wrong units cannot occur.
    """
    sp = _spec(c, seed, start_us, step, n_ent, long=False)
    g = _grid(sp, rows, d.gaps)
    p = _pick_wide(sp, g, d)
    out, key_out = _inject_wide(sp, g, p)
    return _deliver(sp, g, p, out, key_out, d)


# --------------------------------------------------------------------------
# writing


def format_of(path: Path) -> str:
    """The file format from the name: ``x.csv.gz`` -> ``csv.gz``."""
    name = Path(path).name.lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):
        if name.endswith("." + fmt):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the name (one of {', '.join(FORMATS)})")


@contextmanager
def _open_out(path: Path, compression: str) -> Any:
    """A binary sink, compressed reproducibly (no name or time in the gzip header)."""
    with open(path, "wb") as raw:
        if compression == "":
            yield raw
        elif compression == "gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                yield gz
        elif compression == "zst":
            import zstandard

            with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as zst:
                yield zst
        else:
            raise ValueError(f"unknown compression {compression!r} (gz, zst)")


# A text cell a spreadsheet would run as a formula: = + - @ first (or a tab / CR before them), unless it is
# a plain number ("-3.5" stays as it is). OWASP's "CSV injection": "=cmd|' /C calc'!A0" as a machine id.
FORMULA = r"^[\t\r]*[=+\-@]"
PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def neutralise_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every text cell a spreadsheet would evaluate prefixed by ``'`` (shown, not run).

    Every CSV the lab writes goes through this, so a value a firm delivered
    (or a generator produced) cannot run when an engineer opens the file in
    a spreadsheet. Parquet and JSON Lines keep the values as they are.
    """
    text = [c for c, dt in frame.schema.items() if dt == pl.String]
    if not text:
        return frame
    return frame.with_columns(
        pl.when(pl.col(c).str.contains(FORMULA) & ~pl.col(c).str.contains(PLAIN_NUMBER))
        .then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in text
    )


def write(gen_or_frame: Generated | pl.DataFrame, path: Path, fmt: str | None = None) -> Path:
    """Write exactly the frame to ``path``; the format comes from the suffix unless given.

    Formats: csv, tsv, jsonl (each optionally .gz or .zst) and parquet.
    Output is byte-identical for the same frame. A ``Generated`` keeps its
    layout's header and separator (CSV only; TSV is always tab-separated).
    """
    path = Path(path)
    if isinstance(gen_or_frame, Generated):
        frame, header, sep = gen_or_frame.frame, gen_or_frame.header, gen_or_frame.separator
    else:
        frame, header, sep = gen_or_frame, True, ","
    fmt = (fmt or format_of(path)).lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    base, _, compression = fmt.partition(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if base == "parquet":
        frame.write_parquet(path, compression="zstd")
        return path
    writer: Callable[[IO[bytes]], None]
    if base == "jsonl":

        def writer(fh: IO[bytes]) -> None:
            frame.write_ndjson(fh)

    else:
        separator = "\t" if base == "tsv" else sep
        safe = neutralise_formulas(frame)

        def writer(fh: IO[bytes]) -> None:
            safe.write_csv(fh, include_header=header, separator=separator)

    with _open_out(path, compression) as fh:
        writer(fh)
    return path


def cli_generate(
    contract: Contract,
    rows: int,
    seed: int,
    out_dir: Path,
    files: int = 1,
    fmt: str = "csv",
    defects: Defects | None = None,
    start: datetime | None = None,
    stem: str | None = None,
) -> list[Path]:
    """Generate one delivery and write it as ``files`` consecutive parts.

    Files are named ``<product>-<seed>-<i>.<fmt>`` with i from 0 (or ``<stem>.<fmt>`` for one
    file with a ``stem``); late rows, being appended at the end, land in the last part, as they
    would arrive.
    """
    if files < 1:
        raise ValueError("files must be >= 1")
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    gen = generate(contract, rows, seed=seed, start=start, defects=defects)
    out_dir = Path(out_dir)
    bounds = np.linspace(0, gen.frame.height, files + 1).round().astype(np.int64)
    paths = []
    for k in range(files):
        part = Generated(
            gen.frame.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])),
            gen.truth,
            header=gen.header,
            separator=gen.separator,
        )
        name = f"{stem}.{fmt}" if stem and files == 1 else f"{stem or f'{contract.product}-{seed}'}-{k}.{fmt}"
        paths.append(write(part, out_dir / name, fmt))
    return paths


__all__ = [
    "DEFAULT_START",
    "FORMATS",
    "GAP_MAX",
    "GAP_MIN",
    "Defects",
    "Generated",
    "cli_generate",
    "format_of",
    "generate",
    "write",
]
