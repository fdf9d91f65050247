"""The expectation suite of a curated time-series table, derived from the contract.

Run by ``datalab.quality.validate.validate`` (through ``TimeseriesKind.suite``) as the
blocking check of the curated asset, like the CAD kind's ``datalab/cad/suite.py``. The
suite is a list of rules applied in order, each a small function that reads one thing
the contract states and writes the expectations it asks for, labelled with the rule's
name (``ExpectationSpec.rule``) and the contract field it comes from (``source``):

* the curated long layout: base columns, the contract's attributes, curation's flags;
* the entity and the time: present, and as the contract describes them;
* the sensors: present, and only the contract's measurements;
* per measurement: its unit, range, valid values, missing values and quality rules;
* per attribute: pseudonymised if personal, else its pattern, values, range, nulls;
* custom rules on the entity and time properties, then the table's quality rules.

The order is stable (table, entity, time, sensors, per-sensor rules, attributes,
table rules) so that Data Docs and reports read the same from run to run; the
GX runner fingerprints the suite, so a change of order rewrites the stored suite.
Curation keeps out-of-range readings and key duplicates (it flags them), so range
and uniqueness expectations carry the tolerance the contract grants (``mostly``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec

from datalab.contracts.contract import Column, Contract
from datalab.quality.expectations import (
    ExpectationSpec,
    _custom_spec,
    _property_rule,
    _row_count_kwargs,
    _rule_operator,
    _rule_text,
    _sensor_condition,
    mostly_from_rule,
    range_kwargs,
)
from datalab.timeseries import schema
from datalab.timeseries.schema import KEY_COLUMNS

# the runner's logger: the warnings read as they did before the derivation moved here
log = logging.getLogger("datalab.quality.validate")

# What curation writes in place of a personal attribute: "ps_" + 16 hex chars.
PSEUDONYM_REGEX = r"^ps_[0-9a-f]{16}$"

PROPS = "schema[0].properties"

E = ExpectationSpec
P = ParamSpec("P")


def _rule(fn: Callable[P, Iterable[ExpectationSpec]]) -> Callable[P, list[ExpectationSpec]]:
    """Label every expectation ``fn`` derives with the rule's name, so a failure says which rule wrote it."""
    name = fn.__name__

    @functools.wraps(fn)
    def named(*args: P.args, **kwargs: P.kwargs) -> list[ExpectationSpec]:
        return [dataclasses.replace(spec, rule=name) for spec in fn(*args, **kwargs)]

    return named


@dataclasses.dataclass(frozen=True)
class Prop:
    """One property of the contract and how sources name it: ``schema[0].properties[3] (temp)``."""

    col: Column
    where: str


def _props(contract: Contract) -> dict[str, Prop]:
    return {c.name: Prop(c, f"{PROPS}[{i}] ({c.name})") for i, c in enumerate(contract.columns)}


def expected_columns(contract: Contract) -> list[str]:
    """Every column the curated long table of ``contract`` must have, in the table's order (``schema.columns``)."""
    return list(schema.columns([a.name for a in contract.attributes]))


def _with_mostly(found: tuple[int, dict[str, Any]] | None) -> tuple[float, str]:
    """``mostly`` from a property's invalidValues/nullValues rule if it has one, else 1.0."""
    return mostly_from_rule(found[1]) if found else (1.0, "mostly=1.0")


# --------------------------------------------------------------------------
# the table, the entity, the time and the sensors


@_rule
def curated_layout(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    yield E("expect_table_columns_to_match_set", {"column_set": expected_columns(contract), "exact_match": False},
            f"{PROPS} (curated long layout: base columns, attributes, flags)")


@_rule
def entity_present(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    # stored as a string whatever the contract's type (curation casts it)
    yield E("expect_column_values_to_not_be_null", {"column": "entity"}, f"{props[contract.entity.name].where}.role=entity")


@_rule
def entity_pattern(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    ent = contract.entity
    if ent.pattern:
        yield E("expect_column_values_to_match_regex", {"column": "entity", "regex": ent.pattern},
                f"{props[ent.name].where}.logicalTypeOptions.pattern")


@_rule
def entity_enum(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    ent = contract.entity
    if ent.enum:
        yield E("expect_column_values_to_be_in_set", {"column": "entity", "value_set": [str(v) for v in ent.enum]},
                f"{props[ent.name].where}.enum")


@_rule
def time_present(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    yield E("expect_column_values_to_not_be_null", {"column": "time"}, f"{props[contract.time.name].where}.role=time")


@_rule
def time_range(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    # An integer index (cycle, seconds) keeps its values, so its range holds; a timestamp's
    # bounds are the delivery window's business, not a column check.
    t = contract.time
    if t.logical_type != "timestamp" and (t.minimum is not None or t.maximum is not None):
        yield E("expect_column_values_to_be_between", {"column": "time", "min_value": t.minimum, "max_value": t.maximum},
                f"{props[t.name].where}.logicalTypeOptions")


@_rule
def sensor_present(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    yield E("expect_column_values_to_not_be_null", {"column": "sensor"}, f"{PROPS} (role=measurement)")


@_rule
def sensor_known(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    yield E("expect_column_values_to_be_in_set", {"column": "sensor", "value_set": [m.name for m in contract.measurements]},
            f"{PROPS} (names of the measurements)")


# --------------------------------------------------------------------------
# per measurement: the long table has no column per sensor, so each expectation
# is on ``value`` (or ``unit``) with the sensor's row condition


@_rule
def measurement_unit(p: Prop) -> Iterator[ExpectationSpec]:
    m = p.col
    if m.unit:
        yield E("expect_column_values_to_be_in_set", {"column": "unit", "value_set": [m.unit], **_sensor_condition(m.name)},
                f"{p.where}.customProperties.unit", m.name)


@_rule
def measurement_range(p: Prop) -> Iterator[ExpectationSpec]:
    m = p.col
    bounds = range_kwargs(m)
    if not bounds:
        return
    found = _property_rule(m, ("invalidValues",))
    mostly, note = mostly_from_rule(found[1]) if found else (1.0, "no invalidValues rule; mostly=1.0")
    src = f"{p.where}.logicalTypeOptions"
    src += f"; mostly from .quality[{found[0]}] ({note})" if found else f"; {note}"
    yield E("expect_column_values_to_be_between", {"column": "value", **bounds, "mostly": mostly, **_sensor_condition(m.name)},
            src, m.name)


@_rule
def measurement_valid_values(p: Prop) -> Iterator[ExpectationSpec]:
    if p.col.valid_values:
        yield _valid_values_spec(p.col, "value", p.where, _sensor_condition(p.col.name))


@_rule
def measurement_nulls(p: Prop) -> Iterator[ExpectationSpec]:
    m = p.col
    null_rule = _property_rule(m, ("nullValues", "missingValues"))
    if not (m.required or null_rule):
        return
    if null_rule:
        mostly, note = mostly_from_rule(null_rule[1])
        src = f"{p.where}.{'required; ' if m.required else ''}quality[{null_rule[0]}] ({note})"
    else:
        mostly, src = 1.0, f"{p.where}.required (no nullValues rule; mostly=1.0)"
    yield E("expect_column_values_to_not_be_null", {"column": "value", "mostly": mostly, **_sensor_condition(m.name)},
            src, m.name)


@_rule
def measurement_custom(p: Prop, j: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    spec = _custom_spec(rule, f"{p.where}.quality[{j}]", p.col)
    if spec:
        yield spec


@_rule
def measurement_duplicates(p: Prop, j: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    mostly, note = mostly_from_rule(rule)
    yield E("expect_compound_columns_to_be_unique",
            {"column_list": list(KEY_COLUMNS), "mostly": mostly, **_sensor_condition(p.col.name)},
            f"{p.where}.quality[{j}] ({note})", p.col.name)


@_rule
def measurement_row_count(p: Prop, j: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    kw = _row_count(rule, f"{p.where}.quality[{j}]")
    if kw is not None:
        yield E("expect_table_row_count_to_be_between", {**kw, **_sensor_condition(p.col.name)},
                f"{p.where}.quality[{j}] ({_rule_text(rule)})", p.col.name)


# A measurement's library rules that become expectations of their own (invalidValues
# and nullValues only set the ``mostly`` of the range and not-null expectations above).
MEASUREMENT_METRICS: dict[str, Callable[[Prop, int, dict[str, Any]], list[ExpectationSpec]]] = {
    "duplicateValues": measurement_duplicates,
    "rowCount": measurement_row_count,
}


def measurement_quality(p: Prop) -> Iterator[ExpectationSpec]:
    """The measurement's quality rules, in the contract's order: custom ones as written, then the metrics above."""
    for j, rule in enumerate(p.col.quality):
        if not isinstance(rule, dict):
            continue
        if rule.get("type") == "custom":
            yield from measurement_custom(p, j, rule)
        elif rule.get("type", "library") == "library" and rule.get("metric") in MEASUREMENT_METRICS:
            yield from MEASUREMENT_METRICS[rule["metric"]](p, j, rule)


MEASUREMENT_RULES: tuple[Callable[[Prop], Iterable[ExpectationSpec]], ...] = (
    measurement_unit, measurement_range, measurement_valid_values, measurement_nulls, measurement_quality,
)


def measurements(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    """Every measurement's rules, one measurement after the other."""
    for m in contract.measurements:
        for rule in MEASUREMENT_RULES:
            yield from rule(props[m.name])


# --------------------------------------------------------------------------
# per attribute: a column of its own in the long table


@_rule
def attribute_pseudonymised(p: Prop) -> Iterator[ExpectationSpec]:
    # Curation replaces personal values by pseudonyms before anything is stored; the
    # contract's pattern describes the clear value, so it must NOT match here: a clear
    # value would mean a privacy leak.
    if p.col.personal:
        yield E("expect_column_values_to_match_regex", {"column": p.col.name, "regex": PSEUDONYM_REGEX},
                f"{p.where}.customProperties.personal (pseudonymised)")


@_rule
def attribute_pattern(p: Prop) -> Iterator[ExpectationSpec]:
    a = p.col
    if not a.personal and a.pattern and a.logical_type == "string":
        mostly, note = _with_mostly(_property_rule(a, ("invalidValues",)))
        yield E("expect_column_values_to_match_regex", {"column": a.name, "regex": a.pattern, "mostly": mostly},
                f"{p.where}.logicalTypeOptions.pattern; {note}")


@_rule
def attribute_valid_values(p: Prop) -> Iterator[ExpectationSpec]:
    if p.col.valid_values and not p.col.personal:
        yield _valid_values_spec(p.col, p.col.name, p.where, {})


@_rule
def attribute_enum(p: Prop) -> Iterator[ExpectationSpec]:
    a = p.col
    if a.enum and not a.personal:
        mostly, note = _with_mostly(_property_rule(a, ("invalidValues",)))
        yield E("expect_column_values_to_be_in_set", {"column": a.name, "value_set": list(a.enum), "mostly": mostly},
                f"{p.where}.enum; {note}")


@_rule
def attribute_range(p: Prop) -> Iterator[ExpectationSpec]:
    a = p.col
    if (a.minimum is not None or a.maximum is not None) and a.logical_type in ("number", "integer"):
        mostly, note = _with_mostly(_property_rule(a, ("invalidValues",)))
        yield E("expect_column_values_to_be_between",
                {"column": a.name, "min_value": a.minimum, "max_value": a.maximum, "mostly": mostly},
                f"{p.where}.logicalTypeOptions; {note}")


@_rule
def attribute_nulls(p: Prop) -> Iterator[ExpectationSpec]:
    a = p.col
    null_rule = _property_rule(a, ("nullValues", "missingValues"))
    if a.required or null_rule:
        mostly, note = _with_mostly(null_rule)
        yield E("expect_column_values_to_not_be_null", {"column": a.name, "mostly": mostly},
                f"{p.where}.{'required' if a.required else 'quality'}; {note}")


@_rule
def property_custom(p: Prop) -> Iterator[ExpectationSpec]:
    """The ``type: custom`` rules of an attribute, the entity or the time, as written."""
    for j, rule in enumerate(p.col.quality):
        if isinstance(rule, dict) and rule.get("type") == "custom":
            spec = _custom_spec(rule, f"{p.where}.quality[{j}]", p.col)
            if spec:
                yield spec


ATTRIBUTE_RULES: tuple[Callable[[Prop], Iterable[ExpectationSpec]], ...] = (
    attribute_pseudonymised, attribute_pattern, attribute_valid_values, attribute_enum, attribute_range,
    attribute_nulls, property_custom,
)


def attributes(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    """Every attribute's rules, one attribute after the other."""
    for a in contract.attributes:
        for rule in ATTRIBUTE_RULES:
            yield from rule(props[a.name])


def key_custom(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    """Custom rules on the entity and time properties (after the attributes, where they have always been)."""
    for col in (contract.entity, contract.time):
        yield from property_custom(props[col.name])


# --------------------------------------------------------------------------
# the table's quality rules (schema[0].quality)


@_rule
def table_custom(i: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    spec = _custom_spec(rule, f"schema[0].quality[{i}]", None)
    if spec:
        yield spec


@_rule
def table_row_count(i: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    qw = f"schema[0].quality[{i}]"
    kw = _row_count(rule, qw)
    if kw is not None:
        yield E("expect_table_row_count_to_be_between", kw, f"{qw} ({_rule_text(rule)})")


@_rule
def table_nulls(i: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    mostly, note = mostly_from_rule(rule)
    yield E("expect_column_values_to_not_be_null", {"column": "value", "mostly": mostly},
            f"schema[0].quality[{i}] ({note})")


@_rule
def table_duplicates(i: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    mostly, note = mostly_from_rule(rule)
    yield E("expect_compound_columns_to_be_unique", {"column_list": list(KEY_COLUMNS), "mostly": mostly},
            f"schema[0].quality[{i}] ({note})")


@_rule
def table_invalid(i: int, rule: dict[str, Any]) -> Iterator[ExpectationSpec]:
    # Table-wide invalid readings: curation flags every reading outside its sensor's
    # range, so the flag's share is the invalid share.
    mostly, note = mostly_from_rule(rule)
    yield E("expect_column_values_to_be_in_set", {"column": "flag_out_of_range", "value_set": [False], "mostly": mostly},
            f"schema[0].quality[{i}] ({note})")


TABLE_METRICS: dict[str, Callable[[int, dict[str, Any]], list[ExpectationSpec]]] = {
    "rowCount": table_row_count,
    "nullValues": table_nulls,
    "missingValues": table_nulls,
    "duplicateValues": table_duplicates,
    "invalidValues": table_invalid,
}


def table_quality(contract: Contract, props: dict[str, Prop]) -> Iterator[ExpectationSpec]:
    """The table's quality rules in the contract's order; ``text`` rules are for people and derive nothing."""
    for i, rule in enumerate(contract.quality):
        if not isinstance(rule, dict):
            continue
        if rule.get("type") == "custom":
            yield from table_custom(i, rule)
        elif rule.get("type", "library") == "library" and rule.get("metric") in TABLE_METRICS:
            yield from TABLE_METRICS[rule["metric"]](i, rule)


# --------------------------------------------------------------------------
# shared by the rules above


def _row_count(rule: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The range kwargs of a ``rowCount`` rule, or None (warned) when its operator is not a range."""
    op = _rule_operator(rule)
    kw = _row_count_kwargs(*op) if op else None
    if kw is None:
        log.warning("%s: rowCount %s cannot be expressed as a range; ignored", where, op)
    return kw


def _valid_values_spec(col: Column, column: str, where: str, cond: dict[str, Any]) -> ExpectationSpec:
    """The expectation of a property's invalidValues rule with validValues: values outside the list are invalid."""
    j, rule = _property_rule(col, ("invalidValues",)) or (0, {})
    mostly, note = mostly_from_rule(rule) if rule.get("metric") else (1.0, "mostly=1.0")
    return E("expect_column_values_to_be_in_set",
             {"column": column, "value_set": list(col.valid_values or ()), "mostly": mostly, **cond},
             f"{where}.quality[{j}].validValues ({note})", col.name if column == "value" else None)


RULES: tuple[Callable[[Contract, dict[str, Prop]], Iterable[ExpectationSpec]], ...] = (
    curated_layout,
    entity_present, entity_pattern, entity_enum,
    time_present, time_range,
    sensor_present, sensor_known,
    measurements,
    attributes,
    key_custom,
    table_quality,
)
"""The suite's rules, in the order their expectations appear."""


def derive_suite(contract: Contract) -> list[ExpectationSpec]:
    """The expectations a curated table of ``contract`` must meet: every rule of ``RULES``, in order."""
    props = _props(contract)
    return [spec for rule in RULES for spec in rule(contract, props)]
