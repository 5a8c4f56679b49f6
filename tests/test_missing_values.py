"""Missing entries inside sequences (issue 16): parsing, rejects, statistics, metadata.

A missing entry is NaN in the record's `steps` (`seqpipe.dataset.records`);
`preprocess.missing: keep` (the default) keeps such records, `reject` rejects
them as before. Every number here is exact on literal inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from beam_helpers import read_rejects

from beam_jobs import preprocess as job
from beam_jobs import statistics
from seqpipe.config import PreprocessConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, sources
from seqpipe.dataset.sources import Rejection, Sequence

NAN = np.nan
FMT = sources.LongFormat()
COLUMNS = ["id", "t", "a", "b"]


def _keep(line: str, **limits) -> Sequence | Rejection:
    return sources.validate_json_line(line, "f.jsonl", 1, missing="keep", **limits)


# ---------------------------------------------------------------- parsing (pure)


def test_json_null_and_nan_are_missing_entries_with_keep():
    result = _keep('{"id": "a", "steps": [[1, null], [NaN, 2.5], [3, 4]]}')
    assert isinstance(result, Sequence)
    np.testing.assert_array_equal(result.steps, np.array([[1, NAN], [NAN, 2.5], [3, 4]],
                                                         np.float32))
    assert result.steps.dtype == np.float32


@pytest.mark.parametrize("line, reason", [
    ('{"id": "a", "steps": [[1, Infinity], [2, 3]]}', "non_finite"),
    ('{"id": "a", "steps": [[null, -Infinity], [2, 3]]}', "non_finite"),
    ('{"id": "a", "steps": [[1e39, null], [2, 3]]}', "non_finite"),
    ('{"id": "a", "steps": [[null, null], [NaN, null]]}', "all_missing"),
    ('{"id": "a", "steps": [[null, null], [1, null]]}', "too_many_missing"),
    ('{"id": "a", "steps": [[1, "x"], [null, 2]]}', "non_numeric"),
])
def test_keep_still_rejects_with_its_own_reason(line, reason):
    result = _keep(line)
    assert isinstance(result, Rejection)
    assert (result.reason, result.record) == (reason, line)
    assert result.reason in sources.REASONS


def test_max_missing_fraction_is_inclusive():
    half = '{"id": "a", "steps": [[null, 1], [null, 2]]}'  # 2 of 4 missing
    assert isinstance(_keep(half), Sequence)
    assert isinstance(_keep(half, max_missing_fraction=0.5), Sequence)
    rejected = _keep(half, max_missing_fraction=0.49)
    assert rejected.reason == "too_many_missing"
    assert rejected.message == ("2 of 4 entries missing (0.5), max_missing_fraction is 0.49")


def test_reject_policy_is_the_behaviour_before_missing_values():
    line = '{"id": "a", "steps": [[1, null], [2, 3]]}'
    assert sources.validate_json_line(line, missing="reject").reason == "non_numeric"
    assert sources.validate_json_line(line.replace("null", "NaN")).reason == "non_finite"


def test_missing_is_checked_on_the_steps_kept_after_truncation():
    line = '{"id": "a", "steps": [[null, null], [null, null], [1, 2]]}'
    assert _keep(line, max_length=2, too_long="truncate").reason == "all_missing"
    assert _keep(line).reason == "too_many_missing"  # 4 of 6 > 0.5
    kept = _keep(line.replace("[null, null], [1", "[null, 7], [1"), max_missing_fraction=0.6)
    np.testing.assert_array_equal(kept.steps, [[NAN, NAN], [NAN, 7], [1, 2]])


def test_a_rejected_sequence_writes_missing_entries_as_null_and_reads_back_bit_exact():
    steps = np.array([[NAN, 1.1], [NAN, NAN]], np.float32)
    sequence = Sequence(id="s", steps=steps, source="f", line=3)
    rejection = sources.check_missing(sequence, 0.5)
    assert rejection.reason == "too_many_missing"
    assert json.loads(rejection.record)["steps"] == [[None, 1.1], [None, None]]
    again = sources.parse_json_line(rejection.record, missing="keep")
    assert np.array_equal(again.steps.view(np.uint32), steps.view(np.uint32))


@pytest.mark.parametrize("cell", ["", "  ", "nan", "NaN", "-nan"])
def test_csv_empty_and_nan_cells_are_missing_with_keep(cell):
    row = sources.parse_csv_row(["s", "0", cell, "2"], COLUMNS, FMT, "f.csv", 2, missing="keep")
    assert row.error is None
    assert np.isnan(row.values[0]) and row.values[1] == 2.0
    strict = sources.parse_csv_row(["s", "0", cell, "2"], COLUMNS, FMT, "f.csv", 2)
    assert strict.error[0] == ("non_numeric" if not cell.strip() else "non_finite")


@pytest.mark.parametrize("fields, reason", [
    (["s", "0", "inf", "2"], "non_finite"),
    (["s", "", "1", "2"], "non_numeric"),   # a time is never missing
    (["s", "nan", "1", "2"], "non_finite"),
    (["s", "0", "x", "2"], "non_numeric"),
])
def test_csv_cells_that_stay_rejects_with_keep(fields, reason):
    row = sources.parse_csv_row(fields, COLUMNS, FMT, "f.csv", 2, missing="keep")
    assert row.error[0] == reason


def test_parquet_null_and_nan_are_missing_with_keep():
    row = sources.parse_parquet_row({"id": "p", "t": 1, "a": None, "b": float("nan")},
                                    COLUMNS, FMT, "f.parquet", 4, missing="keep")
    assert row.error is None and np.isnan(row.values).all()
    infinite = sources.parse_parquet_row({"id": "p", "t": 1, "a": None, "b": float("inf")},
                                         COLUMNS, FMT, "f.parquet", 4, missing="keep")
    assert infinite.error[0] == "non_finite"
    assert sources.parse_parquet_row({"id": "p", "t": 1, "a": None, "b": 1.0}, COLUMNS,
                                     FMT, "f.parquet", 4).error[0] == "non_numeric"


def test_long_format_rows_assemble_in_time_order_with_their_gaps():
    rows = [sources.parse_csv_row(fields, COLUMNS, FMT, "f.csv", line, missing="keep")
            for line, fields in enumerate([["s", "2", "5", ""], ["s", "0", "", "2"],
                                           ["s", "1", "3", "4"]], start=2)]
    sequence = sources.assemble_rows(rows)
    np.testing.assert_array_equal(sequence.steps, [[NAN, 2], [3, 4], [5, NAN]])
    assert sources.assemble_rows(rows, max_missing_fraction=0.3).reason == "too_many_missing"
    gaps = [sources.parse_csv_row(["g", str(t), "", ""], COLUMNS, FMT, "f.csv", t + 2,
                                  missing="keep") for t in range(2)]
    assert sources.assemble_rows(gaps).reason == "all_missing"


# ---------------------------------------------------------------- statistics


def _moments(*chunks):
    fn = statistics.FeatureMomentsCombineFn()
    accumulator = fn.create_accumulator()
    for chunk in chunks:
        accumulator = fn.add_input(accumulator, np.asarray(chunk, np.float32))
    return fn.extract_output(accumulator)


def test_feature_moments_are_numpy_nan_functions_over_observed_entries():
    chunks = [[[1.0, NAN, 7.0], [2.0, NAN, 7.0]], [[NAN, NAN, 7.0]],
              [[4.0, NAN, 7.5], [-3.0, NAN, NAN], [0.5, NAN, 6.0]]]
    out = _moments(*chunks)
    values = np.concatenate([np.asarray(c, np.float32) for c in chunks]).astype(np.float64)
    assert out["num_timesteps"] == 6
    assert out["num_observed"] == [5, 0, 5]
    for key, numpy_fn in (("mean", np.nanmean), ("std", np.nanstd), ("min", np.nanmin),
                          ("max", np.nanmax)):
        observed = [0, 2]
        with np.errstate(all="ignore"):
            expected = numpy_fn(values[:, observed], axis=0)
        np.testing.assert_allclose([out[key][i] for i in observed], expected, rtol=1e-14)
        assert out[key][1] is None  # never observed: no statistic, not NaN in JSON


def test_feature_moments_without_missing_entries_are_unchanged():
    chunks = [np.random.default_rng(3).normal(5, 2, size=(n, 2)) for n in (1, 4, 9)]
    out = _moments(*chunks)
    values = np.concatenate([c.astype(np.float32) for c in chunks]).astype(np.float64)
    assert out["num_observed"] == [14, 14]
    np.testing.assert_allclose(out["mean"], values.mean(0), rtol=1e-14)
    np.testing.assert_allclose(out["std"], values.std(0), rtol=1e-12)
    # the complete-data path is the arithmetic of before: an int count, no NaN handling
    count, *_ = statistics.moments_of(values)
    assert count == 14 and isinstance(count, int)


def test_dataset_stats_count_missing_entries_per_split_and_feature():
    fn = statistics.DatasetStatsCombineFn()

    def sequence(steps):
        return Sequence(id="x", steps=np.asarray(steps, np.float32))

    accumulator = fn.add_inputs(fn.create_accumulator(), [
        ("train", sequence([[1, NAN], [2, 3]])), ("test", sequence([[NAN, NAN], [1, 1]])),
        ("train", sequence([[NAN, 5]]))])
    other = fn.add_inputs(fn.create_accumulator(), [("test", sequence([[1, NAN]]))])
    out = fn.extract_output(fn.merge_accumulators([accumulator, other]))
    assert out["split_missing"] == [("test", [1, 2]), ("train", [1, 1])]
    assert out["feature_moments"]["num_timesteps"] == 3
    assert out["feature_moments"]["num_observed"] == [2, 2]
    assert out["feature_moments"]["mean"] == [1.5, 4.0]


# ---------------------------------------------------------------- the job end to end

JSONL = [
    {"id": "j1", "steps": [[1.0, None], [3.0, 4.0]], "split": "train", "label": "x"},
    {"id": "j2", "steps": [[float("nan"), 2.0], [5.0, 6.0], [7.0, 8.0]], "split": "train"},
    {"id": "j3", "steps": [[None, None], [None, None]], "split": "train"},     # all_missing
    {"id": "j4", "steps": [[None, None], [None, 1.0]], "split": "test"},       # too many
    {"id": "j5", "steps": [[1.0, float("inf")]], "split": "test"},             # non_finite
    {"id": "j6", "steps": [[2.0, None], [4.0, 9.0]], "split": "test"},
]
CSV = "id,t,a,b,split\nc1,1,,12,train\nc1,0,10,11,train\nc1,2,13,nan,train\nc2,0,,,test\n"
PARQUET_ROWS = [("q1", 0.0, 20.0, None, "test"), ("q1", 1.0, None, 21.0, "test"),
                ("q1", 2.0, 22.0, 23.0, "test")]
# What is written, by id: the train split's observed entries give the statistics.
WRITTEN = {
    "j1": [[1, NAN], [3, 4]], "j2": [[NAN, 2], [5, 6], [7, 8]],
    "c1": [[10, 11], [NAN, 12], [13, NAN]],
    "j6": [[2, NAN], [4, 9]], "q1": [[20, NAN], [NAN, 21], [22, 23]],
}
TRAIN = ("j1", "j2", "c1")


def _write_raw(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    (root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in JSONL))
    (root / "r.csv").write_text(CSV)
    columns = list(zip(*PARQUET_ROWS, strict=True))
    pq.write_table(pa.table({"id": list(columns[0]), "t": list(columns[1]),
                             "a": pa.array(columns[2], pa.float64()),
                             "b": pa.array(columns[3], pa.float32()),
                             "split": list(columns[4])}), root / "r.parquet")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing")
    _write_raw(root / "raw")
    metadata = job.preprocess([str(root / "raw" / "*")], str(root / "out"), PreprocessConfig())
    return root / "out", metadata


def test_job_keeps_gaps_and_rejects_each_reason(kept):
    out, metadata = kept
    counts = metadata.counts
    # records: 6 JSONL, c1 and c2 (CSV), q1 (Parquet)
    assert (counts.read, counts.written, counts.rejected) == (9, 5, 4)
    assert {k: v for k, v in counts.rejected_by_reason.items() if v} == {
        "all_missing": 2, "too_many_missing": 1, "non_finite": 1}
    rejects = sorted(r["reason"] for r in read_rejects(out))
    assert rejects == ["all_missing", "all_missing", "non_finite", "too_many_missing"]
    written = {}
    for split in records.SPLITS:
        for record in records.read_split(out, split, metadata):
            written[record["id"]] = (split, record["steps"])
    assert set(written) == set(WRITTEN)
    for sequence_id, steps in WRITTEN.items():
        np.testing.assert_array_equal(written[sequence_id][1], np.array(steps, np.float32))
    assert {i for i, (split, _) in written.items() if split == "train"} == set(TRAIN)


def test_metadata_statistics_are_over_observed_train_entries(kept):
    _, metadata = kept
    train = np.concatenate([np.array(WRITTEN[i], np.float32) for i in TRAIN]).astype(
        np.float64)
    stats = metadata.feature_stats
    assert stats.num_timesteps == 8 and stats.num_observed == (6, 6)
    np.testing.assert_allclose(stats.mean, np.nanmean(train, axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.std, np.nanstd(train, axis=0), rtol=1e-14)
    assert stats.min == tuple(np.nanmin(train, axis=0)) == (1.0, 2.0)
    assert stats.max == tuple(np.nanmax(train, axis=0)) == (13.0, 12.0)
    # missing fraction per feature per split: missing entries / timesteps
    assert metadata.split("train").missing_fraction == (2 / 8, 2 / 8)
    assert metadata.split("test").missing_fraction == (1 / 5, 2 / 5)
    assert metadata.split("val").missing_fraction is None  # no records
    assert metadata.has_missing and metadata.split("train").has_missing


def test_metadata_json_round_trip_is_exact_with_the_new_fields(kept):
    out, metadata = kept
    tree = json.loads((out / records.METADATA_FILE).read_text())
    assert tree["feature_stats"]["num_observed"] == [6, 6]
    assert tree["splits"]["test"]["missing_fraction"] == [0.2, 0.4]
    assert "missing_fraction" not in tree["splits"]["val"]
    assert metadata_lib.DatasetMetadata.from_json(tree).to_json() == tree
    assert metadata_lib.read(out) == metadata


def test_metadata_written_before_missing_values_still_loads():
    old = {"schema_version": records.SCHEMA_VERSION, "num_features": 1,
           "splits": {"train": {"num_records": 1, "num_timesteps": 2, "num_shards": 1,
                                "files": ["a"]}},
           "feature_stats": {"num_timesteps": 2, "mean": [1.0], "std": [0.5],
                             "min": [0.5], "max": [1.5]}}
    metadata = metadata_lib.DatasetMetadata.from_json(old)
    assert metadata.feature_stats.num_observed is None
    assert metadata.split("train").missing_fraction is None and not metadata.has_missing
    assert metadata.to_json()["splits"] == old["splits"]
    assert metadata.to_json()["feature_stats"] == old["feature_stats"]


def test_tfds_reads_records_with_missing_entries(kept):
    import tensorflow_datasets as tfds

    out, metadata = kept
    assert metadata.tfds_readable
    builder = tfds.builder_from_directory(str(out))
    examples = {e["id"].decode(): e for split in ("train", "test")
                for e in tfds.as_numpy(builder.as_dataset(split=split))}
    assert set(examples) == set(WRITTEN)
    for sequence_id, steps in WRITTEN.items():
        np.testing.assert_array_equal(examples[sequence_id]["steps"],
                                      np.array(steps, np.float32))


def test_reject_policy_rejects_every_record_with_a_gap(tmp_path):
    _write_raw(tmp_path / "raw")
    metadata = job.preprocess([str(tmp_path / "raw" / "*")], str(tmp_path / "out"),
                              PreprocessConfig(missing="reject"))
    counts = metadata.counts
    assert (counts.read, counts.written, counts.rejected) == (9, 0, 9)
    assert {k: v for k, v in counts.rejected_by_reason.items() if v} == {
        "non_numeric": 7, "non_finite": 2}
    assert not metadata.has_missing


def test_job_summary_names_the_missing_fraction(kept):
    _, metadata = kept
    summary = job.format_summary(metadata, "out", 1.0)
    assert "train         3 records           8 timesteps" in summary
    assert "missing 25.0% (most in a feature)" in summary
    assert "missing 40.0% (most in a feature)" in summary


# ---------------------------------------------------------------- synthetic gaps


def test_synthetic_missing_fraction_removes_entries_and_changes_nothing_else():
    from seqpipe import synthetic
    from seqpipe.config import SynthConfig

    cfg = SynthConfig(num_sequences=40, max_length=30, anomaly_fraction=0.2, num_classes=3)
    clean = list(synthetic.generate(cfg))
    gappy = list(synthetic.generate(SynthConfig(**{**cfg.__dict__, "missing_fraction": 0.3})))
    removed = total = 0
    for before, after in zip(clean, gappy, strict=True):
        assert (before["id"], before["label"]) == (after["id"], after["label"])
        for row_before, row_after in zip(before["steps"], after["steps"], strict=True):
            for value, kept in zip(row_before, row_after, strict=True):
                assert kept is None or kept == value
                removed += kept is None
                total += 1
    assert 0.25 < removed / total < 0.35
    again = list(synthetic.generate(SynthConfig(**{**cfg.__dict__, "missing_fraction": 0.3})))
    assert again == gappy  # deterministic
    result = sources.validate_json_line(json.dumps(gappy[0]), missing="keep",
                                        max_missing_fraction=0.9)
    assert np.isnan(result.steps).sum() == sum(v is None for row in gappy[0]["steps"]
                                               for v in row)
