"""Property-based fuzzing of the pure per-record parsing (`seqpipe.dataset.sources`).

Whatever the bytes, `validate_json_line`, `parse_csv_row`, `parse_long_row`
and `assemble_rows` return a `Sequence` (finite float32 `[length >= 1, F]`, a
non-empty UTF-8-encodable id) or a `Rejection` with a known reason; they
never raise. The inputs that once made them raise are tested at the end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seqpipe.dataset import records, sources

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_result(result) -> None:
    """The contract of every parser: a valid Sequence or a well-formed Rejection."""
    assert isinstance(result, (sources.Sequence, sources.Rejection)), type(result)
    if isinstance(result, sources.Rejection):
        assert result.reason in sources.REASONS
        assert result.message
        assert len(result.record) <= sources.MAX_RECORD_CHARS
        json.loads(result.to_json())  # writable to rejects/
        return
    steps = result.steps
    assert isinstance(steps, np.ndarray) and steps.dtype == np.float32
    assert steps.ndim == 2 and steps.shape[0] >= 1 and steps.shape[1] >= 1
    assert np.isfinite(steps).all()
    assert isinstance(result.id, str) and result.id.strip()
    result.id.encode("utf-8")  # the id must be writable (hash, TFRecord, rejects)
    result.label.encode("utf-8")
    assert result.split in (None, *records.SPLITS)


# ---------------------------------------------------------------- JSON lines

scalars = (st.none() | st.booleans() | st.integers(-(10**40), 10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=6), children, max_size=4),
                           max_leaves=24)
numbers = (st.floats(allow_nan=True, allow_infinity=True)
           | st.integers(-(10**320), 10**320)
           | st.sampled_from([-0.0, 1e-45, 3.4028235e38, 3.5e38, 1e-400]))
steps_like = st.one_of(
    st.lists(st.lists(numbers, min_size=0, max_size=4), max_size=6),
    st.integers(1, 4).flatmap(lambda width: st.lists(
        st.lists(numbers | json_values, min_size=width, max_size=width), max_size=6)),
    json_values)
records_like = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=10) | st.integers() | json_values,
    "steps": steps_like,
    "label": st.text(max_size=6) | st.integers() | json_values,
    "split": st.sampled_from(["train", "val", "test", "TRAIN", ""]) | json_values,
    "extra": json_values,
})


def _mutate(data: bytes, how: int, at: int, junk: bytes) -> bytes:
    at = at % (len(data) + 1)
    if how == 0:
        return data
    if how == 1:
        return data[:at]  # truncated
    if how == 2:
        return data[:at] + junk + data[at:]  # random bytes inside
    if how == 3:
        return b"\xef\xbb\xbf" + data  # BOM
    if how == 4:
        return data + b"\r"  # CRLF remnant
    return data.replace(b"1", b"NaN", 1).replace(b"2", b"-Infinity", 1)


@FUZZ
@given(record=records_like, how=st.integers(0, 5), at=st.integers(0, 10**6),
       junk=st.binary(max_size=8), as_text=st.booleans())
@example(record={"id": "a", "steps": [[1e999]]}, how=0, at=0, junk=b"", as_text=False)
@example(record={"id": "a", "steps": [[10**400]]}, how=0, at=0, junk=b"", as_text=False)
@example(record={"id": "a", "steps": [[1, 2], [3]]}, how=0, at=0, junk=b"", as_text=True)
def test_json_line_never_raises(record, how, at, junk, as_text):
    data = _mutate(json.dumps(record, allow_nan=True).encode(), how, at, junk)
    line = data.decode("utf-8", errors="replace") if as_text else data
    check_result(sources.validate_json_line(line, "f.jsonl", 3, min_length=1, max_length=4,
                                            too_long="truncate"))
    check_result(sources.validate_json_line(line, "f.jsonl", 3, min_length=2, max_length=3))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    result = sources.validate_json_line(data, "f.jsonl", 1)
    check_result(result)


# |v| < 3.4e38: the float32 maximum itself is tested at the end
valid_values = st.floats(width=32, allow_nan=False, allow_infinity=False).filter(
    lambda v: abs(v) < 3.4e38)


@FUZZ
@given(sid=st.text(min_size=1, max_size=20).filter(str.strip) | st.integers(0, 10**12),
       width=st.integers(1, 5), length=st.integers(1, 12), data=st.data(),
       label=st.none() | st.text(max_size=8).filter(lambda s: s == "" or s.strip())
       | st.integers(0, 99),
       split=st.none() | st.sampled_from(records.SPLITS))
def test_valid_record_parses_exactly_and_round_trips(sid, width, length, data, label, split):
    steps = data.draw(st.lists(st.lists(valid_values, min_size=width, max_size=width),
                               min_size=length, max_size=length))
    obj = {"id": sid, "steps": steps}
    if label is not None:
        obj["label"] = label
    if split is not None:
        obj["split"] = split
    result = sources.validate_json_line(json.dumps(obj), "f", 1)
    assert isinstance(result, sources.Sequence), result
    expected = np.asarray(steps, np.float64).astype(np.float32)
    assert np.array_equal(result.steps.view(np.uint32), expected.view(np.uint32))
    assert result.id == str(sid) and result.label == ("" if label is None else str(label))
    assert result.split == split
    again = sources.parse_json_line(sources.to_json_line(result), "f", 1)
    assert np.array_equal(again.steps.view(np.uint32), result.steps.view(np.uint32))
    assert (again.id, again.label, again.split) == (result.id, result.label, result.split)


# ---------------------------------------------------------------- long format (CSV)

cells = st.one_of(
    st.sampled_from(["", " ", "1", "-0", "1e999", "-1E400", "NaN", "nan", "-inf", "Infinity",
                     "INF", "3.5e38", "1e-45", "abc", "true", "None", "0x1", "1_0", "١"]),
    st.floats().map(repr), st.integers().map(str), st.text(max_size=6))
HEADER = ["id", "t", "a", "b", "label", "split"]


@FUZZ
@given(st.lists(st.lists(cells, min_size=0, max_size=8), min_size=1, max_size=8),
       st.lists(st.sampled_from(HEADER + ["c", "\ufeffid"]), min_size=0, max_size=7,
                unique=True))
def test_csv_rows_never_raise(rows, header):
    fmt = sources.LongFormat()
    parsed = []
    for line, fields in enumerate(rows, start=2):
        result = sources.parse_csv_row(fields, header, fmt, "f.csv", line)
        assert isinstance(result, (sources.Row, sources.Rejection))
        if isinstance(result, sources.Rejection):
            check_result(result)
        else:
            parsed.append(result)
    by_id: dict[str, list] = {}
    for row in parsed:
        by_id.setdefault(row.id, []).append(row)
    for rows_of_id in by_id.values():
        check_result(sources.assemble_rows(rows_of_id, min_length=1, max_length=3,
                                           too_long="truncate"))
        check_result(sources.assemble_rows(rows_of_id, min_length=2, max_length=3))


@FUZZ
@given(st.lists(st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b", None, "", 7]),
    "t": st.none() | st.booleans() | st.floats() | st.integers(-5, 5) | st.text(max_size=3),
    "a": st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=3),
    "label": st.none() | st.sampled_from(["x", "y"]),
}), min_size=1, max_size=6))
def test_parquet_rows_never_raise(rows):
    fmt = sources.LongFormat()
    parsed = []
    for line, row in enumerate(rows, start=1):
        result = sources.parse_parquet_row(row, list(row), fmt, "f.parquet", line)
        assert isinstance(result, (sources.Row, sources.Rejection))
        if isinstance(result, sources.Row):
            parsed.append(result)
        else:
            check_result(result)
    by_id: dict[str, list] = {}
    for row in parsed:
        by_id.setdefault(row.id, []).append(row)
    for rows_of_id in by_id.values():
        check_result(sources.assemble_rows(rows_of_id))


# ---------------------------------------------------------------- formerly crashing inputs


def test_deeply_nested_json_is_rejected_not_raised():
    line = '{"id": "d", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}"
    result = sources.validate_json_line(line, "f.jsonl", 1)
    assert isinstance(result, sources.Rejection) and result.reason == "unparseable"


@pytest.mark.parametrize("line", [
    r'{"id": "a\ud800", "steps": [[1.0]]}',
    r'{"id": "a", "steps": [[1.0]], "label": "\udfff"}',
])
def test_lone_surrogate_id_or_label_is_rejected(line):
    result = sources.validate_json_line(line, "f.jsonl", 1)
    check_result(result)


def test_rows_of_different_widths_are_rejected():
    fmt = sources.LongFormat()
    first = sources.parse_csv_row(["w", "0", "1"], ["id", "t", "a"], fmt, "a.csv", 2)
    second = sources.parse_csv_row(["w", "1", "1", "2"], ["id", "t", "a", "b"], fmt,
                                   "b.csv", 2)
    result = sources.assemble_rows([first, second])
    assert isinstance(result, sources.Rejection)
    assert result.reason == "wrong_feature_count"


def test_integer_beyond_float64_is_non_finite():
    result = sources.validate_json_line('{"id": "i", "steps": [[' + "9" * 400 + "]]}")
    assert isinstance(result, sources.Rejection) and result.reason == "non_finite"


@pytest.mark.parametrize("value", ["3.4028235e38", "-3.4028235e38", "3.40282356e38"])
def test_float32_max_spelled_shortest_is_finite(value):
    result = sources.validate_json_line('{"id": "m", "steps": [[' + value + "]]}")
    assert isinstance(result, sources.Sequence), result
    assert abs(float(result.steps[0, 0])) == float(np.finfo(np.float32).max)
