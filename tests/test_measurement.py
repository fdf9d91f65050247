"""Measurement files under contracts (issue 22): every format through its own writer and reader,
with the defects firms' files have, and the real files in ../shared/realdata/measurement."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from datalab.contracts import contract as contract_mod
from datalab.intake.landing import push
from tests.conftest import ROOT

EXAMPLES = ROOT / "data_contracts" / "examples" / "measurement"
START = "2024-05-01T08:00:00+00:00"
SOV = {"residency": ["EEA"], "purposes": ["research"], "classification": "internal", "license": "proprietary",
       "personal_data": False, "export_control": False}


def make_contract(tmp: Path, layout: dict[str, Any], measurements: dict[str, str], time_type: str = "timestamp",
                  attrs: dict[str, str] | None = None, name: str = "c") -> contract_mod.Contract:
    """A contract for a generated file: ``measurements`` maps property -> unit."""
    props = [
        {"name": "rig", "logicalType": "string", "required": True, "customProperties": [{"property": "role", "value": "entity"}]},
        {"name": "t", "logicalType": time_type, "required": True, "customProperties": [{"property": "role", "value": "time"}]},
        {"name": "time_base", "logicalType": "string", "customProperties": [{"property": "role", "value": "attribute"}]},
        {"name": "sample_rate_hz", "logicalType": "number", "customProperties": [{"property": "role", "value": "attribute"}]},
    ]
    for a, lt in (attrs or {}).items():
        props.append({"name": a, "logicalType": lt, "customProperties": [{"property": "role", "value": "attribute"}]})
    for m, unit in measurements.items():
        props.append({"name": m, "logicalType": "number", "customProperties": [{"property": "unit", "value": unit}]})
    doc = {
        "apiVersion": "v3.0.2", "kind": "DataContract", "id": f"urn:datalab:acme:{name}", "version": "1.0.0",
        "status": "active", "tenant": "acme", "dataProduct": name,
        "schema": [{"name": "readings", "properties": props}],
        "customProperties": [{"property": "kind", "value": "timeseries"}, {"property": "layout", "value": layout},
                             {"property": "sovereignty", "value": SOV}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return contract_mod.load(path)


def raw_of(lab: Path, rec: Any) -> pl.DataFrame:
    return pl.read_parquet(lab / "raw" / rec.tenant / rec.contract_id.rsplit(":", 1)[1] / f"{rec.delivery_id}.parquet")


def write_hdf5(path: Path, channels: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for name, (data, attrs) in channels.items():
            ds = f.create_dataset(name, data=data, chunks=True)
            for k, v in attrs.items():
                ds.attrs[k] = v
    return path


def write_tdms(path: Path, channels: list[tuple[str, str, np.ndarray, dict[str, Any]]]) -> Path:
    from nptdms import ChannelObject, TdmsWriter

    with TdmsWriter(str(path)) as w:
        w.write_segment([ChannelObject(g, c, data, properties=props) for g, c, data, props in channels])
    return path


def write_mdf(path: Path, signals: list[tuple[str, np.ndarray, np.ndarray, str]], start: dt.datetime | None) -> Path:
    from asammdf import MDF, Signal

    m = MDF(version="4.10")
    if start is not None:
        m.header.start_time = start
    for name, t, v, unit in signals:
        m.append([Signal(v, t, name=name, unit=unit)])
    m.save(path, overwrite=True)
    m.close()
    return path


SINE = np.sin(np.linspace(0, 20, 1000))


def test_hdf5_channels_attributes_and_chunks(lab, tmp_path):
    """Unit, rate and start from the dataset's attributes; chunked reading gives the same table."""
    f = write_hdf5(tmp_path / "rig.h5", {
        "daq/accel": (SINE, {"units": "g", "sample_rate_hz": 1000.0, "start_time": START}),
        "daq/temp": (np.linspace(20, 30, 10), {"units": "degC", "sample_rate_hz": 10.0, "start_time": START}),
    })
    lay = {"format": "hdf5", "entity_value": "rig-1", "time": {"base": "rate"}, "chunk_samples": 128,
           "channels": [{"property": "accel", "source": "daq/accel"}, {"property": "temp", "source": "daq/temp"}]}
    c = make_contract(tmp_path, lay, {"accel": "[g]", "temp": "Cel"})
    rec = push(c, [f])
    assert rec.accepted, rec.reasons
    assert rec.files[0].format == "HDF5" and rec.rows == 1010
    raw = raw_of(lab, rec)
    acc = raw.filter(pl.col("sensor") == "accel")
    assert np.allclose(acc["raw_value"].to_numpy(), SINE)
    assert acc["time"][1] - acc["time"][0] == dt.timedelta(milliseconds=1)
    assert acc["time"][0] == dt.datetime(2024, 5, 1, 8, tzinfo=dt.UTC)
    rates = dict(raw.group_by("sensor").agg(pl.col("sample_rate_hz").first()).iter_rows())
    assert rates == {"accel": 1000.0, "temp": 10.0}  # channels at other rates stay separate series
    assert raw.filter(pl.col("sensor") == "temp")["time_base"][0].startswith("rate 10 Hz (file), start 2024-05-01")


def test_hdf5_defects_missing_channel_wrong_unit_other_rate_truncated(lab, tmp_path):
    f = write_hdf5(tmp_path / "bad.h5", {
        "a": (SINE, {"units": "mV", "sample_rate_hz": 1000.0}),
        "b": (SINE[:600], {"sample_rate_hz": 1000.0}),
        "c": (SINE, {"sample_rate_hz": 500.0}),
        "e": (SINE, {}),
    })
    lay = {"format": "hdf5", "time": {"base": "rate", "sample_rate_hz": 1000, "start": START},
           "channels": [{"property": "a", "source": "a"}, {"property": "b", "source": "b"},
                        {"property": "c", "source": "c"}, {"property": "d", "source": "d"},
                        {"property": "e", "source": "e"}]}
    c = make_contract(tmp_path, lay, {"a": "V", "b": "V", "c": "V", "d": "V", "e": "V"})
    rec = push(c, [f])
    text = "\n".join(rec.reasons)
    assert not rec.accepted
    assert "the file's metadata gives channel 'a' the unit 'mV', the contract says 'V'" in text
    assert "channel 'c' is sampled at 500 Hz by the file's own clock, the contract says 1000 Hz" in text
    assert "the file has no channel 'd' (missing channel" in text
    assert "holds 600 samples at 1000 Hz = 0.6 s" in text and "truncated recording" in text


def test_nan_values_are_kept_not_invented(lab, tmp_path):
    data = SINE.copy()
    data[[3, 500]] = np.nan
    f = write_hdf5(tmp_path / "nan.h5", {"x": (data, {})})
    lay = {"format": "hdf5", "time": {"base": "index", "step": 2}, "channels": [{"property": "x", "source": "x"}]}
    c = make_contract(tmp_path, lay, {"x": "1"}, time_type="integer")
    rec = push(c, [f])
    assert rec.accepted, rec.reasons
    raw = raw_of(lab, rec)
    assert raw["raw_value"].is_nan().sum() == 2 and raw["time"].to_list()[:3] == [0, 2, 4]
    assert raw["time_base"][0] == "index (step 2)" and raw["entity"][0] == "nan"  # entity: the file's name


def test_mat_v5_and_v73(lab, tmp_path):
    import h5py
    import scipy.io

    v5 = tmp_path / "run5.mat"
    scipy.io.savemat(v5, {"DE": SINE.reshape(-1, 1), "RPM": np.array([[1797.0]])})
    v73 = tmp_path / "run73.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:
        f.create_dataset("DE", data=SINE.reshape(1, -1))  # MATLAB stores a column vector transposed
        f.create_dataset("RPM", data=np.array([[1797.0]]))
    with open(v73, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon May  1 08:00:00 2024 HDF5 schema 1.00 .")
    lay = {"format": "mat", "entity_value": "bearing", "time": {"base": "rate", "sample_rate_hz": 12000},
           "channels": [{"property": "de", "source": "DE"}], "attributes": {"rpm": "RPM"}}
    c = make_contract(tmp_path, lay, {"de": "[g]"}, time_type="integer", attrs={"rpm": "number"})
    for f, label in ((v5, "MATLAB 5.0 MAT-file"), (v73, "MATLAB 7.3 MAT-file (HDF5)")):
        rec = push(c, [f])
        assert rec.accepted, rec.reasons
        assert rec.files[0].format == label
        raw = raw_of(lab, rec)
        assert np.allclose(raw["raw_value"].to_numpy(), SINE) and set(raw["rpm"]) == {1797.0}
        assert raw["time"].to_list()[-1] == 999 and set(raw["sample_rate_hz"]) == {12000.0}


def test_tdms_rate_start_units_from_file_and_defects(lab, tmp_path):
    start = np.datetime64("2024-05-01T08:00:00")
    ok = write_tdms(tmp_path / "ok.tdms", [
        ("g", "volts", SINE, {"wf_increment": 0.001, "wf_start_time": start, "unit_string": "Volts"}),
        ("g", "slow", SINE[:100], {"wf_increment": 0.01, "wf_start_time": start, "unit_string": "Volts"}),
    ])
    lay = {"format": "tdms", "entity_value": "daq", "time": {"base": "rate"},
           "channels": [{"property": "volts", "source": {"group": "g", "channel": "volts"}},
                        {"property": "slow", "source": "slow"}]}
    c = make_contract(tmp_path, lay, {"volts": "V", "slow": "V"})
    rec = push(c, [ok])
    assert rec.accepted, rec.reasons
    raw = raw_of(lab, rec)
    assert dict(raw.group_by("sensor").len().iter_rows()) == {"volts": 1000, "slow": 100}
    # another rate than the contract's, and LabVIEW's zero start
    other = write_tdms(tmp_path / "other.tdms", [
        ("g", "volts", SINE, {"wf_increment": 0.002, "wf_start_time": np.datetime64("1904-01-01T00:00:00")}),
        ("g", "slow", SINE[:100], {"wf_increment": 0.01, "wf_start_time": np.datetime64("1904-01-01T00:00:00")}),
    ])
    lay2 = {**lay, "channels": [{"property": "volts", "source": "volts", "sample_rate_hz": 1000}, {"property": "slow", "source": "slow"}]}
    rec = push(make_contract(tmp_path, lay2, {"volts": "V", "slow": "V"}, name="c2"), [other])
    text = "\n".join(rec.reasons)
    assert "is sampled at 500 Hz by the file's own clock, the contract says 1000 Hz" in text
    assert "LabVIEW's zero" in text and "declare time.start" in text
    # a truncated recording: the file cut short
    cut = tmp_path / "cut.tdms"
    cut.write_bytes(ok.read_bytes()[:-3000])
    rec = push(c, [cut])
    assert not rec.accepted and any("truncated" in r for r in rec.reasons), rec.reasons


def test_mdf4_groups_at_their_own_rates_and_naive_start(lab, tmp_path):
    t_fast, t_slow = np.arange(1000) / 1000.0, np.arange(10) / 10.0
    start = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    f = write_mdf(tmp_path / "bench.mf4", [("speed", t_fast, SINE * 100, "rpm"), ("oil", t_slow, np.linspace(80, 90, 10), "degC")], start)
    lay = {"format": "mdf4", "entity_value": "bench", "time": {"base": "column", "column": "master"},
           "channels": [{"property": "speed", "source": "speed"}, {"property": "oil", "source": "oil"}]}
    c = make_contract(tmp_path, lay, {"speed": "/min", "oil": "Cel"})
    rec = push(c, [f])
    assert rec.accepted, rec.reasons
    assert rec.files[0].format == "ASAM MDF 4.10"
    raw = raw_of(lab, rec)
    rates = dict(raw.group_by("sensor").agg(pl.col("sample_rate_hz").first().round(3)).iter_rows())
    assert rates == {"speed": 1000.0, "oil": 10.0}
    assert raw.filter(pl.col("sensor") == "oil")["time"][0] == dt.datetime(2024, 5, 1, 8, tzinfo=dt.UTC)
    naive = write_mdf(tmp_path / "naive.mf4", [("speed", t_fast, SINE, "rpm"), ("oil", t_slow, t_slow, "degC")],
                      dt.datetime(2024, 5, 1, 10, 0))
    rec = push(c, [naive])
    assert not rec.accepted and any("has no time zone" in r for r in rec.reasons), rec.reasons


def test_parquet_and_arrow_with_any_column_names(lab, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts = pa.array(np.datetime64("2024-05-01T08:00:00") + np.arange(1000).astype("timedelta64[s]"), pa.timestamp("us"))
    tbl = pa.table({"Zeit (UTC)": ts, "Temp [°C] #1": SINE * 10 + 50})
    pq.write_table(tbl, tmp_path / "x.parquet", row_group_size=300)
    with pa.ipc.new_file(tmp_path / "x.arrow", tbl.schema) as w:
        w.write_table(tbl)
    for fmt in ("parquet", "arrow"):
        lay = {"format": fmt, "entity_value": "line-4", "time": {"base": "column", "column": "Zeit (UTC)", "column_unit": "timestamp"},
               "channels": [{"property": "temp", "source": "Temp [°C] #1"}]}
        rec = push(make_contract(tmp_path, lay, {"temp": "Cel"}, name=f"p-{fmt}"), [tmp_path / f"x.{fmt}"])
        assert rec.accepted, rec.reasons
        raw = raw_of(lab, rec)
        assert raw["time"][999] == dt.datetime(2024, 5, 1, 8, 16, 39, tzinfo=dt.UTC)
        assert raw["sample_rate_hz"][0] == pytest.approx(1.0)


def test_file_holding_another_format_is_rejected_naming_both(lab, tmp_path, contracts):
    tdms = write_tdms(tmp_path / "run.mat", [("g", "x", SINE, {"wf_increment": 0.001})])  # named .mat, holds TDMS
    lay = {"format": "mat", "time": {"base": "index"}, "channels": [{"property": "x", "source": "x"}]}
    rec = push(make_contract(tmp_path, lay, {"x": "1"}, time_type="integer"), [tdms])
    assert not rec.accepted
    assert "the contract's layout says MATLAB MAT-file (format: mat), the file holds NI TDMS" in rec.reasons[0]
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    rec = push(make_contract(tmp_path, {**lay, "format": "hdf5"}, {"x": "1"}, time_type="integer", name="c2"), [csv])
    assert "the contract's layout says HDF5 (format: hdf5), the file holds text (comma-separated)" in rec.reasons[0]
    from tests.conftest import SPINDLE

    rec = push(contracts[SPINDLE], [tdms])  # a text contract given a TDMS file
    assert "the content is NI TDMS, but the contract's layout reads delimited text" in rec.reasons[0]


def test_side_file_joined_by_row(lab, tmp_path):
    f = write_hdf5(tmp_path / "secom.h5", {"s1": (SINE[:5], {}), "s2": (SINE[5:10], {})})
    labels = tmp_path / "secom_labels.data"
    labels.write_text("".join(f'{x} "19/07/2008 11:5{i}:00"\n' for i, x in enumerate([-1, -1, 1, -1, 1])))
    lay = {"format": "hdf5", "entity_value": "fab",
           "time": {"base": "column", "column": "labels.stamp", "column_unit": "timestamp"},
           "channels": [{"property": "s1", "source": "s1"}, {"property": "s2", "source": "s2"}],
           "side_files": [{"name": "labels", "match": r"_labels\.data$", "header": False,
                           "names": ["label", "stamp"], "columns": {"label": "label"}}]}
    c = make_contract(tmp_path, lay, {"s1": "1", "s2": "1"}, attrs={"label": "integer"})
    rec = push(c, [f, labels])
    # the SECOM timestamps are day-first, not ISO 8601: refused with the side file's column named ...
    assert not rec.accepted and any("not ISO 8601 timestamps (or declare time.format)" in r for r in rec.reasons)
    lay["time"]["format"] = "%d/%m/%Y %H:%M:%S"  # ... until the contract declares their format
    c = make_contract(tmp_path, lay, {"s1": "1", "s2": "1"}, attrs={"label": "integer"}, name="c-fmt")
    rec = push(c, [f, labels])
    assert rec.accepted, rec.reasons
    assert [x.format for x in rec.files] == ["HDF5", "side file (labels)"] and rec.files[1].rows == 5
    raw = raw_of(lab, rec).filter(pl.col("sensor") == "s2")
    assert raw["label"].to_list() == [-1, -1, 1, -1, 1]
    assert raw["time"][4] == dt.datetime(2008, 7, 19, 11, 54, tzinfo=dt.UTC)
    from datalab.timeseries.ingest import ingest_raw

    assert ingest_raw(c, rec.delivery_id, reparse=True)["rows"] == 10  # parsed again from the stored files
    assert raw_of(lab, rec).filter(pl.col("sensor") == "s2")["label"].to_list() == [-1, -1, 1, -1, 1]
    rec = push(c, [f])
    assert not rec.accepted and "side file 'labels': the delivery holds 0 file(s)" in rec.reasons[0]
    labels.write_text('-1 "19/07/2008 11:50:00"\n1 "19/07/2008 11:51:00"\n')
    rec = push(c, [f, labels])
    assert not rec.accepted and any("side file 'labels' has 2 rows, channel 's1' 5 samples" in r for r in rec.reasons)


def test_side_file_joined_by_key(lab, tmp_path):
    """Cycle conditions joined to every sample by the data's own cycle channel; unknown and repeated keys reject."""
    cycles = np.repeat(np.arange(1, 6), 10).astype(np.float64)
    f = write_hdf5(tmp_path / "rig.h5", {"cycle": (cycles, {}), "temp": (np.linspace(40, 45, 50), {})})
    cond = tmp_path / "conditions.csv"
    cond.write_text("cycle,cooler_pct\n" + "".join(f"{c},{100 - c}\n" for c in range(1, 6)))
    lay = {"format": "hdf5", "entity_value": "rig", "time": {"base": "rate", "sample_rate_hz": 1}, "channels": [{"property": "temp", "source": "temp"}],
           "side_files": [{"name": "conditions", "match": r"^conditions\.csv$", "join": "key", "key": "cycle",
                           "data_key": "cycle", "columns": {"cooler_pct": "cooler_pct"}}]}
    c = make_contract(tmp_path, lay, {"temp": "Cel"}, time_type="integer", attrs={"cooler_pct": "integer"})
    rec = push(c, [f, cond])
    assert rec.accepted, rec.reasons
    raw = raw_of(lab, rec)
    assert raw["cooler_pct"].to_list() == [100 - int(x) for x in cycles]
    cond.write_text("cycle,cooler_pct\n1,99\n2,98\n3,97\n")
    rec = push(c, [f, cond])
    assert not rec.accepted and "20 key(s) of channel 'cycle' are not in side file 'conditions' (e.g. 4)" in rec.reasons[0]
    cond.write_text("cycle,cooler_pct\n1,99\n1,98\n2,97\n3,3\n4,4\n5,5\n")
    rec = push(c, [f, cond])
    assert not rec.accepted and "key 1 appears 2 times in column 'cycle'" in rec.reasons[0]
    cond.write_text("cycle,cooler_pct\n1,full\n2,98\n3,97\n4,4\n5,5\n")
    rec = push(c, [f, cond])
    assert not rec.accepted and "the value(s) joined to 10 sample(s), from sample 0, are not integer (e.g. 'full')" in rec.reasons[0]


def test_layout_lint_names_fields(tmp_path):
    doc_layout = {"format": "tdms", "time": {"base": "index"}, "channels": [{"property": "nope", "source": "x"}]}
    with pytest.raises(Exception) as e:
        make_contract(tmp_path, doc_layout, {"x": "1"})
    text = str(e.value)
    assert "an index time base gives an integer time" in text
    assert "'nope' is not a measurement of the schema" in text
    assert "measurement 'x' is mapped to no channel" in text


REAL = {
    "cwru-bearing": "mat/cwru_normal_0.mat",
    "tdms-digital-input": "tdms/Digital_Input.tdms",
    "tdms-big-endian": "tdms/big_endian.tdms",
    "tdms-raw1": "tdms/raw1.tdms",
    "tdms-raw-timestamps": "tdms/raw_timestamps.tdms",
    "mdf4-asap2-demo": "mdf4/ASAP2_Demo_V171.mf4",
    "mdf4-test-metadata": "mdf4/test_metadata.mf4",
}


@pytest.mark.parametrize("contract_name", sorted(REAL))
def test_real_measurement_files_accepted(lab, realdata, contract_name):
    c = contract_mod.load(EXAMPLES / f"{contract_name}.yaml")
    rec = push(c, [realdata / "measurement" / REAL[contract_name]])
    assert rec.accepted, rec.reasons
    raw = raw_of(lab, rec)
    assert len(raw) == rec.rows > 0
    assert raw["time_base"].null_count() == 0 and raw["time"].null_count() == 0


def test_real_mdf_naive_start_rejected_with_what_to_do(lab, realdata, tmp_path):
    doc = yaml.safe_load((EXAMPLES / "mdf4-test-metadata.yaml").read_text())
    lay = next(p for p in doc["customProperties"] if p["property"] == "layout")["value"]
    del lay["time"]["start"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    rec = push(contract_mod.load(tmp_path / "c.yaml"), [realdata / "measurement/mdf4/test_metadata.mf4"])
    assert not rec.accepted
    assert "the header's start time 2018-11-22T16:26:35.453006 has no time zone" in rec.reasons[0]
    assert "declare time.start" in rec.reasons[0]


def test_curated_table_and_card_say_each_series_time_base(lab, realdata):
    from datalab.config import settings
    from datalab.store.manifest import Manifest
    from datalab.timeseries.card import preparation_section
    from datalab.timeseries.curate import curate_delivery, curated_path

    c = contract_mod.load(EXAMPLES / "tdms-digital-input.yaml")
    rec = push(c, [realdata / "measurement/tdms/Digital_Input.tdms"])
    stats = curate_delivery(c, rec.delivery_id)
    cur = pl.read_parquet(curated_path(c, rec.delivery_id, settings()))
    assert {"time_base", "sample_rate_hz"} <= set(cur.columns)
    tb = stats.time_bases
    assert {k: v["sample_rate_hz"] for k, v in tb.items()} == {"line_full": 2000.0, "line_level1": 40.0, "line_level2": 0.8}
    assert tb["line_level2"]["time_base"] == "rate 0.8 Hz (file), start 2012-07-09T23:58:24.593732+00:00 (file)"
    card = "\n".join(preparation_section(Manifest.from_dict({
        "dataset": "x", "version": "1.0.0", "rows": 0, "schema": {}, "policy": {}, "files": [],
        "curation": {rec.delivery_id: {**stats.to_dict(), "engine": {}}}})))
    assert f"| {rec.delivery_id} | line_level1 | rate 40 Hz (file), start 2012-07-09T23:58:24.593732+00:00 (file) | 40.0 |" in card


@pytest.mark.parametrize("rel", sorted(REAL.values()))
def test_contract_draft_of_each_real_file_lints_and_takes_the_file(lab, realdata, tmp_path, rel):
    """From a file to a contract in one command: fill in sovereignty and status, and the file is accepted."""
    from datalab.intake.measurement.draft import draft

    f = realdata / "measurement" / rel
    d = draft([f], "acme")
    path = tmp_path / "draft.yaml"
    path.write_text(yaml.safe_dump(d.doc, sort_keys=False))
    missing = contract_mod.lint(path)
    assert missing and all("sovereignty" in m or "customProperties[2]" in m for m in missing), missing
    sov = next(p for p in d.doc["customProperties"] if p["property"] == "sovereignty")["value"]
    sov.update(residency=["EEA"], purposes=["research"])
    d.doc["status"] = "active"
    path.write_text(yaml.safe_dump(d.doc, sort_keys=False))
    assert contract_mod.lint(path) == []
    rec = push(contract_mod.load(path), [f])
    assert rec.accepted, rec.reasons


TEXT_TABLES = ["cmapss/train_FD001.txt", "cmapss/test_FD001.txt", "cmapss/RUL_FD001.txt",
               "hydraulic/TS1.txt", "hydraulic/VS1.txt", "hydraulic/profile.txt"]


@pytest.mark.parametrize("rel", TEXT_TABLES)
def test_contract_draft_of_real_text_tables(lab, realdata, tmp_path, rel):
    """Header-less text tables: every column a channel, time the row index; accepted once filled in."""
    from datalab.intake.measurement.draft import draft

    f = realdata / rel
    d = draft([f], "acme")
    sov = next(p for p in d.doc["customProperties"] if p["property"] == "sovereignty")["value"]
    sov.update(residency=["EEA"], purposes=["research"])
    d.doc["status"] = "active"
    path = tmp_path / "draft.yaml"
    path.write_text(yaml.safe_dump(d.doc, sort_keys=False))
    assert contract_mod.lint(path) == []
    rec = push(contract_mod.load(path), [f])
    assert rec.accepted, rec.reasons
    assert rec.rows == sum(1 for ln in f.read_text(errors="replace").splitlines() if ln.strip()) * len(d.doc["customProperties"][1]["value"]["channels"])


@pytest.mark.parametrize("rel", ["cmapss/readme.txt", "hydraulic/documentation.txt", "cad/stl/busted.STL",
                                 "cad/step/nist_ftc_11_asme1_rb.stp", "mat/cwru_README.md"])
def test_contract_draft_refuses_what_is_not_a_table_with_a_reason(realdata, rel):
    from datalab.intake.measurement.draft import draft

    f = realdata / rel if not rel.startswith("mat/") else realdata / "measurement" / rel
    with pytest.raises(ValueError) as e:
        draft([f], "acme")
    assert f.name in str(e.value) and ("CAD" in str(e.value) or "cannot tell the delimiter" in str(e.value)
                                       or "no numeric channel" in str(e.value))


def test_text_table_without_time_or_entity_joined_to_a_label_side_file(lab, tmp_path):
    """The semiconductor case: sensor columns only, labels and timestamps in a second file by row number."""
    rng = np.random.default_rng(0)
    data = tmp_path / "secom.data"
    vals = rng.normal(size=(12, 30))
    vals[3, 5] = np.nan
    data.write_text("\n".join(" ".join("NaN" if np.isnan(x) else f"{x:.4f}" for x in row) for row in vals) + "\n")
    labels = tmp_path / "secom_labels.data"
    labels.write_text("".join(f'{1 if i % 5 == 0 else -1} "19/07/2008 12:{i:02d}:00"\n' for i in range(12)))
    lay = {"format": "text", "header": False, "delimiter": "whitespace", "entity_value": "fab-1",
           "time": {"base": "column", "column": "labels.stamp", "column_unit": "timestamp", "format": "%d/%m/%Y %H:%M:%S"},
           "channels": [{"property": f"s{i + 1}", "source": f"c{i + 1}"} for i in range(30)],
           "side_files": [{"name": "labels", "match": r"_labels\.data$", "header": False, "names": ["pass_fail", "stamp"],
                           "columns": {"pass_fail": "pass_fail"}}]}
    c = make_contract(tmp_path, lay, {f"s{i + 1}": "1" for i in range(30)}, attrs={"pass_fail": "integer"})
    rec = push(c, [data, labels])
    assert rec.accepted, rec.reasons
    raw = raw_of(lab, rec)
    assert len(raw) == 360 and raw["raw_value"].is_nan().sum() == 1
    s6 = raw.filter(pl.col("sensor") == "s6")
    assert s6["pass_fail"].to_list()[:6] == [1, -1, -1, -1, -1, 1]
    assert s6["time"][11] == dt.datetime(2008, 7, 19, 12, 11, tzinfo=dt.UTC)


def test_contract_draft_cli_writes_and_lints(lab, realdata, tmp_path):
    from typer.testing import CliRunner

    from datalab.cli.commands import app

    out = tmp_path / "bearing.yaml"
    res = CliRunner().invoke(app, ["contract", "draft", str(realdata / "measurement/mat/cwru_normal_0.mat"),
                                   "--tenant", "acme", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "missing: customProperties[2].value.residency" in res.output
    assert "states no sample rate" in res.output
    doc = yaml.safe_load(out.read_text())
    lay = doc["customProperties"][1]["value"]
    assert lay["attributes"] == {"X097RPM": "X097RPM"} and [c["source"] for c in lay["channels"]] == ["X097_DE_time", "X097_FE_time"]


@pytest.mark.parametrize("fmt", ["mat", "mdf4", "hdf5", "parquet"])
def test_truncated_file_of_each_format_rejected_with_a_reason(lab, tmp_path, fmt):
    """A recording cut short (copy interrupted, logger off) is rejected naming the library's finding, never a crash."""
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.io

    f = tmp_path / f"x.{ {'mdf4': 'mf4'}.get(fmt, fmt)}"
    if fmt == "mat":
        scipy.io.savemat(f, {"a": SINE.reshape(-1, 1), "b": SINE.reshape(-1, 1)})
    elif fmt == "mdf4":
        write_mdf(f, [("a", np.arange(1000) / 1000, SINE, "V")], None)
    elif fmt == "hdf5":
        with h5py.File(f, "w") as h:
            h.create_dataset("a", data=np.arange(100_000.0), chunks=(1000,))
    else:
        pq.write_table(pa.table({"a": SINE}), f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    time = {"base": "column", "column": "master", "start": START} if fmt == "mdf4" else {"base": "index"}
    lay = {"format": fmt, "time": time, "channels": [{"property": "a", "source": "a"}]}
    rec = push(make_contract(tmp_path, lay, {"a": "V"}, time_type="timestamp" if fmt == "mdf4" else "integer"), [f])
    assert not rec.accepted
    assert any(w in rec.reasons[0] for w in ("truncated", "no Parquet footer")), rec.reasons
