"""The expectation suite of a curated CAD table, derived from the contract.

Run by ``datalab.quality.validate.validate`` (Great Expectations, the same machinery,
Data Docs and reports as the sensor suites) as the blocking check of the
curated CAD asset. Each expectation names the rule it enforces:

* units known: every row has a length unit the lab knows, and the
  canonical unit is the contract's;
* volume positive for closed solids (volume is only set for closed
  geometry, so null rows are the open ones);
* bounding box consistent with volume: 0 < volume <= bbox volume;
* no unexpected empty files: bytes and geometry items at least 1;
* format matches content: the sniffed format is one the contract allows
  and, where the file's extension names a format, the same one;
* the sovereignty tags travel with every row: classification and
  ``export_control`` equal the contract's.
"""

from __future__ import annotations

from datalab.cad.features import SCHEMA
from datalab.cad.settings import LENGTH_MM
from datalab.contracts.contract import Contract
from datalab.quality.expectations import ExpectationSpec

BBOX_SLACK = 1.000001  # float noise of a part that fills its box exactly


def derive_cad_suite(contract: Contract) -> list[ExpectationSpec]:
    cad = contract.section
    pol = contract.policy
    E = ExpectationSpec
    return [
        E("expect_table_columns_to_match_set", {"column_set": list(SCHEMA), "exact_match": True},
          "curated CAD table layout (datalab.cad.features.SCHEMA)"),
        E("expect_table_row_count_to_be_between", {"min_value": 1}, "no empty delivery"),
        E("expect_column_values_to_not_be_null", {"column": "sha256"}, "files are content-addressed"),
        E("expect_column_values_to_match_regex", {"column": "sha256", "regex": "^[0-9a-f]{64}$"}, "files are content-addressed"),
        E("expect_column_values_to_not_be_null", {"column": "length_unit"}, "units known (cad.unitless_unit or the file's unit)"),
        E("expect_column_values_to_be_in_set", {"column": "length_unit", "value_set": sorted(LENGTH_MM)}, "units known"),
        E("expect_column_values_to_be_in_set", {"column": "canonical_unit", "value_set": [cad.canonical_unit]}, "cad.canonical_unit"),
        E("expect_column_values_to_be_between", {"column": "volume_mm3", "min_value": 0, "strict_min": True},
          "volume positive for closed solids"),
        E("expect_column_values_to_be_between", {"column": "volume_to_bbox", "min_value": 0, "max_value": BBOX_SLACK},
          "bounding box consistent with volume (volume <= bbox volume)"),
        E("expect_column_values_to_be_between", {"column": "area_mm2", "min_value": 0}, "area not negative"),
        *[E("expect_column_values_to_be_between", {"column": c, "min_value": 0}, "bounding box not negative")
          for c in ("bbox_x_mm", "bbox_y_mm", "bbox_z_mm")],
        E("expect_column_values_to_be_between", {"column": "bytes", "min_value": 1}, "no unexpected empty files"),
        E("expect_column_values_to_be_between", {"column": "geometry_items", "min_value": 1},
          "no unexpected empty files (faces, triangles or drawing entities)"),
        E("expect_column_values_to_be_in_set", {"column": "format", "value_set": list(cad.formats)},
          "format matches content (cad.formats)"),
        E("expect_column_pair_values_to_be_equal", {"column_A": "format", "column_B": "name_format",
                                                    "ignore_row_if": "either_value_is_missing"},
          "format matches content (the extension names the format the bytes are)"),
        E("expect_column_values_to_be_in_set", {"column": "classification", "value_set": [pol.classification]},
          "sovereignty.classification travels with every row"),
        E("expect_column_values_to_be_in_set", {"column": "export_control", "value_set": [pol.export_control]},
          "sovereignty.export_control travels with every row"),
    ]
