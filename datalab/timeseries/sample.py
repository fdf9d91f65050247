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
        return pl.Series(name, 1 + t * step, dtype=pl.Int64)
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


def _generate_long(
    c: Contract, rows: int, seed: int, start_us: int, step: int, n_ent: int, d: Defects
) -> Generated:
    lay = c.layout
    unit_col = lay.unit_column
    sen = _sensors(c, unit_in_file=unit_col is not None)
    n_sen = len(sen.names)
    per_step = n_ent * n_sen
    sig = _signal(seed, n_ent, n_sen)

    i = np.arange(rows, dtype=np.int64)
    t, e, s = i // per_step, (i // n_sen) % n_ent, i % n_sen
    v = _values(sig, sen, t, e, s, _rng(seed, "values").standard_normal(rows))
    del i

    # gaps first: the defects below are drawn from the rows that remain
    gap_idx, g = _gap_runs(rows // per_step, per_step, d.gaps, _rng(seed, "gaps"))
    if len(gap_idx):
        keep = np.ones(rows, dtype=bool)
        keep[gap_idx] = False
        t, e, s, v = t[keep], e[keep], s[keep], v[keep]
    n = len(t)

    # Spikes and missing only on even steps: two removed readings in a row
    # would leave a hole of 3 steps, which the curation would see as a gap
    # that the truth does not count.
    even = t % 2 == 0
    pick = _Picker(n, _rng(seed, "defects"))
    spikes = pick.take(_count(d.spikes, n), even)
    missing = pick.take(_count(d.missing, n), even)
    has_alt = sen.has_alt
    wrong = pick.take(_count(d.wrong_unit, n), has_alt[s]) if has_alt.any() else pick.take(0)
    tz = pick.take(_count(d.tz_shift, n)) if _iso_time(c) else pick.take(0)
    exact = pick.take(_count(d.exact_duplicates, n))
    key = pick.take(_count(d.key_duplicates, n))

    rng = _rng(seed, "defect-values")
    ss = s[spikes]
    v[spikes] = sen.hi[ss] + sen.span[ss] * rng.uniform(5.0, 10.0, len(spikes))
    out = _round(v * sen.file_factor[s] + sen.file_offset[s], sen.file_dec[s])
    unit_code = s.copy()
    sw = s[wrong]
    out[wrong] = _round(v[wrong] * sen.alt_factor[sw] + sen.alt_offset[sw], sen.alt_dec[sw])
    unit_code[wrong] += n_sen
    out[missing] = np.nan
    shifted = np.zeros(n, dtype=np.int8)
    shifted[tz] = 1 + _rng(seed, "tz").integers(0, 2, len(tz))

    # key duplicates: same key, a value 15% of the range away (still in range)
    sk = s[key]
    delta = 0.15 * sen.span[sk]
    kv = np.where(v[key] + delta <= sen.hi[sk], v[key] + delta, v[key] - delta)
    key_out = _round(kv * sen.file_factor[sk] + sen.file_offset[sk], sen.file_dec[sk])

    src = np.concatenate([exact, key])
    t = np.concatenate([t, t[src]])
    e = np.concatenate([e, e[src]])
    s = np.concatenate([s, s[src]])
    unit_code = np.concatenate([unit_code, unit_code[src]])
    out = np.concatenate([out, out[exact], key_out])
    shifted = np.concatenate([shifted, np.zeros(len(src), dtype=np.int8)])
    order = _insert_after(n, src)
    if d.shuffle:
        order = order[_local_shuffle(t[order], max(64, 4 * per_step), _rng(seed, "shuffle"))]
    t, e, s, unit_code, out, shifted = (x[order] for x in (t, e, s, unit_code, out, shifted))

    n_late = d.late if _iso_time(c) else 0
    if n_late:
        j = np.arange(n_late, dtype=np.int64)
        lt, ls = -1 - j // per_step, j % n_sen
        le = (j // n_sen) % n_ent
        lv = _values(sig, sen, lt, le, ls, _rng(seed, "late").standard_normal(n_late))
        lout = _round(lv * sen.file_factor[ls] + sen.file_offset[ls], sen.file_dec[ls])
        t, e, s = np.concatenate([t, lt]), np.concatenate([e, le]), np.concatenate([s, ls])
        unit_code = np.concatenate([unit_code, ls])
        out = np.concatenate([out, lout])
        shifted = np.concatenate([shifted, np.zeros(n_late, dtype=np.int8)])

    cols: dict[str, pl.Series] = {
        c.entity.source_name: pl.Series(c.entity.source_name, _entity_ids(c.entity, n_ent)).gather(
            e
        ),
        c.time.source_name: _time_series(c, t, shifted, start_us, step),
        lay.sensor_column: pl.Series(lay.sensor_column, sen.names).gather(s),
        lay.value_column: pl.Series(lay.value_column, out, nan_to_null=True),
    }
    if unit_col is not None:
        table = sen.canon + [a or "" for a in sen.alt]
        cols[unit_col] = pl.Series(unit_col, table).gather(unit_code)
    cols.update(_attribute_columns(c, t, e, n_ent, seed, step))
    frame = pl.DataFrame(list(cols.values()))
    truth = _truth(frame, exact, key, len(wrong), missing, spikes, g * per_step, gap_idx, n_late, tz, n_ent, n_sen)
    return Generated(frame, truth, header=lay.header, separator=_separator(c))


def _truth(frame: pl.DataFrame, exact: Any, key: Any, wrong: int, missing: Any, spikes: Any, gaps: int,
           gap_idx: Any, late: int, tz: Any, entities: int, sensors: int) -> dict[str, int]:
    """What a generator injected, counted (the index arrays' lengths)."""
    return {
        "rows": frame.height,
        "exact_duplicates": len(exact),
        "key_duplicates": len(key),
        "wrong_unit": wrong,
        "missing": len(missing),
        "spikes": len(spikes),
        "gaps": gaps,
        "gap_rows": len(gap_idx),
        "late": late,
        "tz_shifted": len(tz),
        "entities": entities,
        "sensors": sensors,
    }


def _separator(c: Contract) -> str:
    delim = c.layout.delimiter
    if delim is None:
        return ","
    return " " if delim == "whitespace" else delim


def _generate_wide(
    c: Contract, rows: int, seed: int, start_us: int, step: int, n_ent: int, d: Defects
) -> Generated:
    """Wide layout: one row per entity and step, one column per sensor.

    A reading is a cell, so missing and spikes are shares of cells; a gap
    drops whole rows of one entity (a gap in each of its sensor series);
    duplicates are whole rows. The file carries no unit, so values are in
    each column's source_unit when it has one, and wrong units cannot occur.
    """
    lay = c.layout
    sen = _sensors(c, unit_in_file=False)
    n_sen = len(sen.names)
    sig = _signal(seed, n_ent, n_sen)
    sidx = np.arange(n_sen)[None, :]

    i = np.arange(rows, dtype=np.int64)
    t, e = i // n_ent, i % n_ent
    noise = _rng(seed, "values").standard_normal((rows, n_sen))
    v = _values(sig, sen, t[:, None], e[:, None], sidx, noise)
    del i, noise

    gap_idx, g = _gap_runs(rows // n_ent, n_ent, d.gaps, _rng(seed, "gaps"))
    if len(gap_idx):
        keep = np.ones(rows, dtype=bool)
        keep[gap_idx] = False
        t, e, v = t[keep], e[keep], v[keep]
    n = len(t)

    # cells first (missing, spikes), then whole rows among the untouched ones
    even_cells = np.repeat(t % 2 == 0, n_sen)
    cells = _Picker(n * n_sen, _rng(seed, "defects"))
    spikes = cells.take(_count(d.spikes, n * n_sen), even_cells)
    blank_ok = _separator(c) != " "  # an empty field cannot be told apart in a blank-separated file
    missing = cells.take(_count(d.missing, n * n_sen) if blank_ok else 0, even_cells)
    rows_pick = _Picker(n, _rng(seed, "defect-rows"))
    rows_pick.free[np.concatenate([spikes, missing]) // n_sen] = False
    tz = rows_pick.take(_count(d.tz_shift, n)) if _iso_time(c) else rows_pick.take(0)
    exact = rows_pick.take(_count(d.exact_duplicates, n))
    key = rows_pick.take(_count(d.key_duplicates, n))

    flat = v.reshape(-1)  # a view: cell id = row * n_sen + sensor
    ss = spikes % n_sen
    flat[spikes] = sen.hi[ss] + sen.span[ss] * _rng(seed, "defect-values").uniform(
        5.0, 10.0, len(spikes)
    )
    out = _round(v * sen.file_factor + sen.file_offset, sen.file_dec[None, :])
    out.reshape(-1)[missing] = np.nan
    shifted = np.zeros(n, dtype=np.int8)
    shifted[tz] = 1 + _rng(seed, "tz").integers(0, 2, len(tz))

    delta = 0.15 * sen.span[None, :]
    kv = np.where(v[key] + delta <= sen.hi, v[key] + delta, v[key] - delta)
    key_out = _round(kv * sen.file_factor + sen.file_offset, sen.file_dec[None, :])

    src = np.concatenate([exact, key])
    t = np.concatenate([t, t[src]])
    e = np.concatenate([e, e[src]])
    out = np.concatenate([out, out[exact], key_out])
    shifted = np.concatenate([shifted, np.zeros(len(src), dtype=np.int8)])
    order = _insert_after(n, src)
    if d.shuffle:
        order = order[_local_shuffle(t[order], max(64, 4 * n_ent), _rng(seed, "shuffle"))]
    t, e, out, shifted = t[order], e[order], out[order], shifted[order]

    n_late = d.late if _iso_time(c) else 0
    if n_late:
        j = np.arange(n_late, dtype=np.int64)
        lt, le = -1 - j // n_ent, j % n_ent
        noise = _rng(seed, "late").standard_normal((n_late, n_sen))
        lv = _values(sig, sen, lt[:, None], le[:, None], sidx, noise)
        lout = _round(lv * sen.file_factor + sen.file_offset, sen.file_dec[None, :])
        t, e = np.concatenate([t, lt]), np.concatenate([e, le])
        out = np.concatenate([out, lout])
        shifted = np.concatenate([shifted, np.zeros(n_late, dtype=np.int8)])

    cols: dict[str, pl.Series] = {
        c.entity.source_name: pl.Series(c.entity.source_name, _entity_ids(c.entity, n_ent)).gather(
            e
        ),
        c.time.source_name: _time_series(c, t, shifted, start_us, step),
    }
    for k, name in enumerate(sen.names):
        cols[name] = pl.Series(name, np.ascontiguousarray(out[:, k]), nan_to_null=True)
    cols.update(_attribute_columns(c, t, e, n_ent, seed, step))
    if lay.columns:  # header-less files: the layout fixes the order
        by_name = {col.name: col.source_name for col in c.columns}
        names = [by_name.get(x, x) for x in lay.columns]
        names += [x for x in cols if x not in names]
        cols = {x: cols[x] for x in names if x in cols}
    frame = pl.DataFrame(list(cols.values()))
    truth = _truth(frame, exact, key, 0, missing, spikes, g * n_ent * n_sen, gap_idx, n_late, tz, n_ent, n_sen)
    return Generated(frame, truth, header=lay.header, separator=_separator(c))


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
