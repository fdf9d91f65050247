"""The typed result of one expectation writes the JSON reports have always had (datalab.quality.results).

Report files, a delivery's state and the manifest's validation summary are read by people,
by the card and by older tooling: the keys, their order and the message must not move
because the runner now holds typed results.
"""

from __future__ import annotations

import json
from dataclasses import replace

from datalab.quality.expectations import LAB_MAX_DUPLICATE_SHARE, lab_rules
from datalab.quality.results import ExpectationResult

GX_KEYS = ["type", "column", "sensor", "source", "success", "mostly", "unexpected_count", "unexpected_percent",
           "element_count", "missing_count", "sample_values", "observed_value", "kwargs", "index"]
LAB_KEYS = ["index", "type", "success", "column", "sensor", "kwargs", "source", "unexpected_count",
            "unexpected_percent", "sample_values", "observed_value", "element_count", "message"]


def _range_result(**kw: object) -> ExpectationResult:
    r = ExpectationResult(type="expect_column_values_to_be_between", column="value", sensor="temp",
                          source="schema[0].properties[2] (temp).logicalTypeOptions", success=False,
                          kwargs={"column": "value", "min_value": 0, "max_value": 90, "mostly": 0.97}, index=3,
                          mostly=0.97, unexpected_count=20, unexpected_percent=10.0, element_count=200,
                          missing_count=0, sample_values=(500.0, 501.5), rule="measurement_range")
    return replace(r, **kw).with_message()


def test_a_gx_result_writes_the_report_layout() -> None:
    r = _range_result()
    d = r.to_dict()
    assert list(d) == [*GX_KEYS, "message"]  # no rule: a label, not part of the report
    assert d["sample_values"] == [500.0, 501.5] and json.loads(json.dumps(d)) == d
    assert r.message == ("FAILED: column value (sensor temp): column values to be between [0, 90]: 20 of 200 rows "
                         "unexpected (10.00%, allowed 3.00%); e.g. 500.0, 501.5 "
                         "(from schema[0].properties[2] (temp).logicalTypeOptions)")
    assert list(_range_result(details={"mismatched": {"missing": ["raw_unit"]}}, exception="boom").to_dict()) == [
        *GX_KEYS, "details", "exception", "message"]
    assert _range_result(exception="boom").message.endswith(": error: boom (from schema[0].properties[2] (temp).logicalTypeOptions)")


def test_a_lab_rule_result_keeps_its_own_layout(contracts: dict) -> None:
    c = next(c for c in contracts.values() if c.series)
    c = replace(c, curation=replace(c.curation, max_duplicate_share=0.05))
    [r] = lab_rules(c, {"duplicate_share": 0.2, "duplicate_rows": 20, "rows_in": 100})
    assert r.by_lab and r.rule == LAB_MAX_DUPLICATE_SHARE and not r.success and r.message.startswith("FAILED: ")
    assert list(r.to_dict()) == LAB_KEYS
