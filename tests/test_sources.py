"""Per-record parsing and validation (seqpipe.dataset.sources): pure, no Beam."""

import json

import numpy as np
import pytest

from seqpipe.dataset import sources
from seqpipe.dataset.sources import Rejection, Sequence


@pytest.mark.parametrize("line, reason", [
    (b"not json", "unparseable"),
    (b"\xff\xfe{}", "unparseable"),
    ('[1, 2]', "unparseable"),
    ('{"id": "a"}', "unparseable"),
    ('{"id": "a", "steps": "1,2"}', "unparseable"),
    ('{"steps": [[1]]}', "missing_id"),
    ('{"id": "", "steps": [[1]]}', "missing_id"),
    ('{"id": null, "steps": [[1]]}', "missing_id"),
    ('{"id": true, "steps": [[1]]}', "missing_id"),
    ('{"id": "a", "split": "dev", "steps": [[1]]}', "bad_split"),
    ('{"id": "a", "label": [1], "steps": [[1]]}', "bad_label"),
    ('{"id": "a", "steps": []}', "empty"),
    ('{"id": "a", "steps": [[1, 2], [3]]}', "wrong_feature_count"),
    ('{"id": "a", "steps": [[], []]}', "wrong_feature_count"),
    ('{"id": "a", "steps": [1, 2]}', "wrong_feature_count"),
    ('{"id": "a", "steps": [[1, "2"]]}', "non_numeric"),
    ('{"id": "a", "steps": [[1, null]]}', "non_numeric"),
    ('{"id": "a", "steps": [[1, true]]}', "non_numeric"),
    ('{"id": "a", "steps": [[1, NaN]]}', "non_finite"),
    ('{"id": "a", "steps": [[-Infinity, 1]]}', "non_finite"),
    ('{"id": "a", "steps": [[1e39, 1]]}', "non_finite"),  # overflows float32
])
def test_parse_json_line_rejects_with_reason(line, reason):
    result = sources.parse_json_line(line, "in.jsonl", 7)
    assert isinstance(result, Rejection)
    assert (result.reason, result.source, result.line) == (reason, "in.jsonl", 7)
    assert result.reason in sources.REASONS
    assert result.message
    expected = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    assert result.record == expected


def test_parse_json_line_valid_gives_exact_arrays():
    line = '{"id": "seq-1", "steps": [[1, 2.5, -3], [0, 0, 0]], "label": "c1", "split": "val"}'
    result = sources.parse_json_line(line.encode() + b"\r\n", "f.jsonl", 3)
    assert isinstance(result, Sequence)
    assert (result.id, result.label, result.split, result.source, result.line) == (
        "seq-1", "c1", "val", "f.jsonl", 3)
    assert result.steps.dtype == np.float32
    np.testing.assert_array_equal(result.steps, np.array([[1, 2.5, -3], [0, 0, 0]], np.float32))
    assert (result.length, result.num_features, result.truncated_from) == (2, 3, 0)


def test_parse_json_line_integer_id_and_label_become_strings_and_optionals_default():
    result = sources.parse_json_line('{"id": 7, "steps": [[0.1]], "label": 3}')
    assert (result.id, result.label, result.split) == ("7", "3", None)
    unlabeled = sources.parse_json_line('{"id": "x", "steps": [[0.1]], "label": null}')
    assert unlabeled.label == ""
    assert sources.parse_json_line('{"id": "x", "steps": [[0.1]], "label": ""}').label == ""


def test_rejection_keeps_at_most_max_record_chars():
    line = '{"id": "a", "steps": [], "pad": "' + "x" * 20_000 + '"}'
    result = sources.parse_json_line(line)
    assert result.reason == "empty"
    assert len(result.record) == sources.MAX_RECORD_CHARS
    assert result.record_truncated
    assert json.loads(result.to_json())["record"] == line[:sources.MAX_RECORD_CHARS]


def _seq(sequence_id="a", length=3, width=2, **kwargs):
    steps = np.arange(length * width, dtype=np.float32).reshape(length, width) / 10
    return Sequence(id=sequence_id, steps=steps, **kwargs)


def test_check_length_too_short_too_long_and_truncate():
    assert sources.check_length(_seq(length=2), 3, 0, "reject").reason == "too_short"
    assert sources.check_length(_seq(length=5), 1, 4, "reject").reason == "too_long"
    kept = _seq(length=4)
    assert sources.check_length(kept, 4, 4, "reject") is kept
    assert sources.check_length(_seq(length=500), 1, 0, "reject").length == 500  # no limit
    truncated = sources.check_length(_seq(length=5), 1, 3, "truncate")
    assert isinstance(truncated, Sequence)
    assert (truncated.length, truncated.truncated_from) == (3, 5)
    np.testing.assert_array_equal(truncated.steps, _seq(length=5).steps[:3])


def test_rejected_sequence_json_round_trips_exact_float32():
    sequence = Sequence(id="z", steps=np.array([[0.1, 1 / 3], [1e-7, -2.5]], np.float32),
                        label="c", split="test", source="s", line=2)
    rejection = sources.check_feature_count(sequence, 3)
    assert (rejection.reason, rejection.source, rejection.line) == (
        "wrong_feature_count", "s", 2)
    parsed = sources.parse_json_line(rejection.record)
    np.testing.assert_array_equal(parsed.steps, sequence.steps)
    assert (parsed.id, parsed.label, parsed.split) == ("z", "c", "test")
    assert sources.check_feature_count(sequence, 2) is sequence


def test_dataset_feature_count_most_common_width_ties_to_smallest():
    assert sources.dataset_feature_count({3: 10, 2: 1, 4: 9}) == 3
    assert sources.dataset_feature_count({4: 5, 2: 5}) == 2
    assert sources.dataset_feature_count({}) == 0


def test_resolve_duplicates_keeps_smallest_source_and_line():
    copies = [_seq("d", source="b.jsonl", line=1), _seq("d", source="a.jsonl", line=9),
              _seq("d", source="a.jsonl", line=2)]
    kept, rejected = sources.resolve_duplicates(copies)
    assert (kept.source, kept.line) == ("a.jsonl", 2)
    assert [(r.reason, r.source, r.line) for r in rejected] == [
        ("duplicate_id", "a.jsonl", 9), ("duplicate_id", "b.jsonl", 1)]
    assert "a.jsonl:2" in rejected[0].message


def test_dataset_verdicts_reject_other_widths_then_keep_the_smallest_origin():
    copies = [(("b.jsonl", 1, -1, ""), 3), (("a.jsonl", 9, -1, ""), 3),
              (("a.jsonl", 2, -1, ""), 2), (("a.jsonl", 5, -1, ""), 3)]
    verdicts = sources.dataset_verdicts("d", copies, num_features=3)
    assert [v and v[0] for v in verdicts] == [
        "duplicate_id", "duplicate_id", "wrong_feature_count", None]
    assert verdicts[0][1] == "id 'd' is already kept from a.jsonl:5"
    assert verdicts[2][1] == "2 features, the dataset has 3"
    assert sources.dataset_verdicts("e", [(("a", 1, -1, ""), 3)], 3) == [None]
    # A file read by byte range: copies ordered by offset, named by it.
    by_offset = sources.dataset_verdicts("f", [(("big", 0, 900, ""), 3),
                                               (("big", 0, 12, ""), 3)], 3)
    assert by_offset == [("duplicate_id", "id 'f' is already kept from big@12"), None]
    # The same decisions as the sequence-level checks, message for message.
    sequence = _seq("d", width=2, source="a.jsonl", line=2)
    assert sources.check_feature_count(sequence, 3).message == verdicts[2][1]
    later = _seq("d", width=3, source="b.jsonl", line=1)
    assert sources.check_duplicate(later, ("a.jsonl", 5, -1, "")).message == verdicts[0][1]


def test_integers_beyond_float64_are_non_finite_not_a_crash():
    result = sources.parse_json_line('{"id": "a", "steps": [[1, 1' + "0" * 400 + "]]}")
    assert (result.reason, result.message) == (
        "non_finite", "steps[0][1] is not a finite float32 (too large)")


@pytest.mark.parametrize("line, reason", [
    ('{"id": "d", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}", "unparseable"),
    (r'{"id": "a\ud800", "steps": [[1.0]]}', "missing_id"),  # lone surrogate: not UTF-8
    (r'{"id": "a", "steps": [[1.0]], "label": "\udfff"}', "bad_label"),
    ('{"id": "a", "steps": [[3.4028236e38]]}', "non_finite"),  # rounds to inf in float32
])
def test_hostile_lines_are_rejected_not_raised(line, reason):
    result = sources.validate_json_line(line, "f.jsonl", 1)
    assert isinstance(result, Rejection) and result.reason == reason, result


@pytest.mark.parametrize("value", ["3.4028235e38", "-3.4028235e38", "3.40282356e38"])
def test_float32_max_as_numpy_prints_it_is_finite(value):
    result = sources.validate_json_line('{"id": "m", "steps": [[' + value + "]]}")
    assert abs(float(result.steps[0, 0])) == float(np.finfo(np.float32).max)
    row = sources.parse_csv_row(["m", "0", value], ["id", "t", "a"], sources.LongFormat())
    assert row.error is None


def test_rows_of_one_id_with_different_widths_are_one_rejection():
    fmt = sources.LongFormat()
    first = sources.parse_csv_row(["w", "0", "1"], ["id", "t", "a"], fmt, "a.csv", 2)
    second = sources.parse_csv_row(["w", "1", "1", "2"], ["id", "t", "a", "b"], fmt, "b.csv", 2)
    result = sources.assemble_rows([first, second])
    assert (result.reason, result.source, result.line) == ("wrong_feature_count", "a.csv", 2)


def test_hash_split_is_pinned_and_stable():
    # Pinned values: changing the hash would move every existing record to another split.
    assert sources.hash_fraction("a") == pytest.approx(0.7913742705223816, abs=0)
    assert [sources.hash_split(i, 0.8, 0.1) for i in ("a", "seq-000017", "s1")] == [
        "train", "train", "test"]
    assert all(sources.hash_split("s1", 0.8, 0.1) == "test" for _ in range(3))


def test_hash_split_respects_fractions():
    ids = [f"id-{i}" for i in range(20_000)]
    splits = [sources.hash_split(i, 0.7, 0.2) for i in ids]
    for split, fraction in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        assert splits.count(split) / len(ids) == pytest.approx(fraction, abs=0.015)
    assert all(sources.hash_split(i, 1.0, 0.0) == "train" for i in ids[:100])


def test_assign_split_prefers_the_record_field():
    assert sources.assign_split(_seq("s1", split="train"), 0.8, 0.1) == "train"
    assert sources.assign_split(_seq("s1"), 0.8, 0.1) == "test"


def test_validate_json_line_length_rejects_keep_the_original_line():
    line = '{"id": "a", "steps": [[1.0], [2.0], [3.0]]}'
    short = sources.validate_json_line(line, "f", 2, min_length=4)
    assert (short.reason, short.record, short.line) == ("too_short", line, 2)
    long = sources.validate_json_line(line, "f", 2, max_length=2)
    assert (long.reason, long.record) == ("too_long", line)
    truncated = sources.validate_json_line(line, max_length=2, too_long="truncate")
    assert (truncated.length, truncated.truncated_from) == (2, 3)
    assert sources.validate_json_line("nope").reason == "unparseable"


CSV_HEADER = ["id", "t", "a", "b", "label"]
FMT = sources.LongFormat()


def _row(fields, line=2, source="x.csv"):
    return sources.parse_csv_row(fields, CSV_HEADER, FMT, source, line)


def test_parse_csv_row_rejects_rows_without_id_or_with_wrong_width():
    assert _row(["", "0", "1", "2", ""]).reason == "missing_id"
    assert _row(["s", "0", "1"]).reason == "unparseable"
    no_time = sources.parse_csv_row(["s", "1"], ["id", "a"], FMT, "x.csv", 2)
    assert (no_time.reason, no_time.message) == ("unparseable", "header lacks columns ['t']")


def test_csv_rows_assemble_sorted_by_time_with_exact_values():
    rows = [_row(["s", "2", "5", "6", "c"], line=4), _row(["s", "0.5", "1", "2", "c"], line=9),
            _row(["s", "1", "3.25", "-4", "c"], line=3)]
    assert FMT.features_of(CSV_HEADER) == ["a", "b"]
    sequence = sources.assemble_rows(rows)
    assert (sequence.id, sequence.label, sequence.split, sequence.line) == ("s", "c", None, 3)
    np.testing.assert_array_equal(sequence.steps,
                                  np.array([[1, 2], [3.25, -4], [5, 6]], np.float32))


@pytest.mark.parametrize("rows, reason", [
    ([["s", "0", "1", "x", ""], ["s", "1", "1", "2", ""]], "non_numeric"),
    ([["s", "0", "1", "nan", ""], ["s", "1", "1", "2", ""]], "non_finite"),
    ([["s", "zz", "1", "2", ""]], "non_numeric"),
    ([["s", "0", "1", "2", "a"], ["s", "1", "1", "2", "b"]], "bad_label"),
    ([["s", "0", "1", "2", ""], ["s", "0", "3", "4", ""]], "duplicate_time"),
])
def test_one_bad_row_rejects_the_whole_csv_sequence(rows, reason):
    parsed = [_row(fields, line=i + 2) for i, fields in enumerate(rows)]
    result = sources.assemble_rows(parsed)
    assert (result.reason, result.line) == (reason, 2)
    assert result.record == "\n".join(",".join(fields) for fields in rows)


def test_csv_split_column_and_length_limits():
    header = ["id", "t", "a", "split"]
    rows = [sources.parse_csv_row(["s", str(t), "1", "val"], header, FMT, "x", t + 2)
            for t in range(3)]
    assert sources.assemble_rows(rows).split == "val"
    assert sources.assemble_rows(rows, max_length=2).reason == "too_long"
    assert sources.assemble_rows(rows, max_length=2, too_long="truncate").length == 2
    bad = sources.parse_csv_row(["s", "0", "1", "dev"], header, FMT, "x", 2)
    assert sources.assemble_rows([bad]).reason == "bad_split"


def test_parse_parquet_row_takes_typed_cells_and_rejects_null_and_bool():
    columns = ["id", "t", "a", "b", "label"]
    row = sources.parse_parquet_row({"id": 17, "t": 3, "a": 0.1, "b": "2.5", "label": None},
                                    columns, FMT, "x.parquet", 5)
    assert (row.id, row.time, row.values, row.label, row.line, row.error) == (
        "17", 3.0, (0.1, 2.5), "", 5, None)
    assert json.loads(row.text) == {"id": 17, "t": 3, "a": 0.1, "b": "2.5", "label": None}
    for bad in (None, True):
        flagged = sources.parse_parquet_row({"id": "s", "t": 0, "a": bad, "b": 1.0},
                                            columns[:4], FMT)
        assert flagged.error[0] == "non_numeric"
    assert sources.parse_parquet_row({"id": None, "t": 0, "a": 1, "b": 1}, columns[:4],
                                     FMT).reason == "missing_id"
    assert sources.parse_parquet_row({"id": "s", "a": 1}, ["id", "a"], FMT).reason == (
        "unparseable")
