"""The result of one expectation of a validation run, as the lab reports it (not GX's own objects).

Typed so that the runner, the chunk merge (``datalab.quality.validate_chunks``) and
the asset check read fields by name and a misspelt one fails where it is
written, not as a silent ``None`` in a report. The JSON the lab writes (the
report files under ``settings().validation``, the ``validation`` entry of a
delivery's state that publishing summarises into the manifest) comes from
``to_dict`` and keeps the keys, their order and their values the reports have
always had, so readers of old and new reports see one layout.

Below the runner and the derivations: ``datalab.quality.expectations`` (the
lab's own rules) builds these without importing GX or the runner.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpectationResult:
    """How one expectation of the suite went on one table.

    Values are JSON-safe (the runner converts GX's numpy and pandas values
    once, when it reads a result). ``column``: the column(s) it checked, as
    reports show them (``"entity, time, sensor"`` for a compound key).
    ``index``: its place in the suite, so results follow the suite's order
    whatever order GX runs them in. ``rule``: the derivation's rule that wrote
    it (``ExpectationSpec.rule``), when known; a label for people, kept out of
    ``to_dict`` like the spec keeps it out of the fingerprint. ``by_lab``:
    computed by the lab from curation's counts rather than by GX
    (``expectations.lab_rules``); such results have no ``mostly`` or missing
    count, and their JSON has always listed its keys in another order.
    """

    type: str
    column: str | None
    sensor: str | None
    source: str
    success: bool
    kwargs: dict[str, Any]
    index: int
    mostly: float | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    element_count: int | None = None
    missing_count: int | None = None
    sample_values: tuple[Any, ...] = ()
    observed_value: Any = None
    details: dict[str, Any] | None = None  # GX's details (e.g. the mismatched columns of a column set)
    exception: str | None = None  # what GX caught while computing the result
    message: str = ""
    rule: str | None = None
    by_lab: bool = False

    def with_message(self) -> ExpectationResult:
        """This result with its ``message`` (re)written from its fields, after they are final (e.g. merged)."""
        return dataclasses.replace(self, message=self.describe())

    def describe(self) -> str:
        """One sentence a person can act on: what was checked, on what, how it went and what broke it."""
        what = self.type.removeprefix("expect_").replace("_", " ")
        target = f"column {self.column}" if self.column else "table"
        if self.sensor:
            target += f" (sensor {self.sensor})"
        text = f"{'passed' if self.success else 'FAILED'}: {target}: {what}"
        kw = self.kwargs or {}
        if "min_value" in kw or "max_value" in kw:
            text += f" [{kw.get('min_value')}, {kw.get('max_value')}]"
        if self.exception:
            return f"{text}: error: {self.exception} (from {self.source})"
        if self.unexpected_count is not None:
            allowed = 100.0 * (1.0 - (self.mostly if self.mostly is not None else 1.0))
            text += (f": {self.unexpected_count} of {self.element_count} rows unexpected"
                     f" ({(self.unexpected_percent or 0.0):.2f}%, allowed {allowed:.2f}%)")
            if self.sample_values and not self.success:
                text += f"; e.g. {', '.join(json.dumps(v) for v in self.sample_values)}"
        elif self.observed_value is not None:
            text += f": observed {json.dumps(self.observed_value)}"
        mismatched = self.details.get("mismatched") if isinstance(self.details, dict) else None
        if isinstance(mismatched, dict) and mismatched.get("missing"):
            text += f"; missing columns {mismatched['missing']}"
        return f"{text} (from {self.source})"

    def to_dict(self) -> dict[str, Any]:
        """The result as reports and the delivery's state have always written it."""
        if self.by_lab:
            return {
                "index": self.index, "type": self.type, "success": self.success, "column": self.column,
                "sensor": self.sensor, "kwargs": self.kwargs, "source": self.source,
                "unexpected_count": self.unexpected_count, "unexpected_percent": self.unexpected_percent,
                "sample_values": list(self.sample_values), "observed_value": self.observed_value,
                "element_count": self.element_count, "message": self.message,
            }
        out: dict[str, Any] = {
            "type": self.type,
            "column": self.column,
            "sensor": self.sensor,
            "source": self.source,
            "success": self.success,
            "mostly": self.mostly,
            "unexpected_count": self.unexpected_count,
            "unexpected_percent": self.unexpected_percent,
            "element_count": self.element_count,
            "missing_count": self.missing_count,
            "sample_values": list(self.sample_values),
            "observed_value": self.observed_value,
            "kwargs": self.kwargs,
            "index": self.index,
        }
        if self.details is not None:
            out["details"] = self.details
        if self.exception:
            out["exception"] = self.exception
        out["message"] = self.message
        return out
