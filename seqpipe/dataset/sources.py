"""Per-record parsing and validation of raw inputs: a sequence or a typed rejection.

Every raw record becomes exactly one of:

    Sequence   id, steps (float32 [length, F]), label, split (or None), time deltas
               (float32 [length], or None without times), and where it came from
               (source file, 1-based line)
    Rejection  reason (a code below), human message, source, line, and the
               original record text cut to `MAX_RECORD_CHARS`

`validate_json_line` is the whole per-record check of a JSONL line. Pure
functions, no Beam: the Beam job (`beam_jobs.read`, `beam_jobs.validate`) maps them over
records and counts the results; tests/test_sources.py checks each reason on
tiny literal lines.

Reason codes (`REASONS`), in the order they are checked:

    unparseable          not UTF-8, not JSON, not a JSON object, or no `steps` list
    missing_id           no `id`, or an empty / non-string-non-integer one
    bad_split            `split` present but not one of train / val / test
    bad_label            `label` present but not a string or an integer (null and ""
                         mean unlabeled)
    empty                `steps` is `[]`
    wrong_feature_count  a timestep that is not a list, rows of different widths
                         or of width 0 within the record, or (dataset level) a
                         width different from the dataset's feature count
    non_numeric          a value that is not a JSON number (string, bool; null with
                         `missing=reject`)
    non_finite           +-Infinity or a value that overflows float32 (and NaN with
                         `missing=reject`)
    bad_times            the JSON time key (`time_key`, default "t") present but not
                         a list of finite numbers, one per step, strictly increasing
                         (`seqpipe.dataset.times.check_times`)
    all_missing          `missing=keep`: every entry of the record is missing
    too_many_missing     `missing=keep`: more than `max_missing_fraction` of the
                         record's entries are missing
    too_short            fewer than `min_length` timesteps
    too_long             more than `max_length` timesteps when `too_long=reject`
                         (with `too_long=truncate` the first `max_length` steps are
                         kept and the record counts as truncated, not rejected)
    duplicate_id         (dataset level) the id was already kept from another record
    mixed_times          (dataset level) the record has times and the dataset's
                         records have none, or the other way round
    duplicate_time       (long format) two rows of one id share a time value

The two missing-value reasons are checked after the length limits, on the
steps that are kept (after `too_long=truncate`), by `check_missing`.

Missing entries (`missing`, the `preprocess.missing` policy; the pure
functions default to `reject`, the Beam job passes the config's, whose
default is `keep`): with `keep`, JSON `null` and `NaN`, an empty CSV cell,
a `NaN`/`nan` CSV cell, and a Parquet null or NaN are a *missing entry* of
that feature at that step, stored as NaN in `steps` (the record contract,
`records`); +-Infinity stays `non_finite`. A record is still rejected when
all its entries are missing (`all_missing`) or when more than
`max_missing_fraction` of them are (`too_many_missing`). With `reject`, the
behaviour from before missing entries were kept: null and empty cells are
`non_numeric`, NaN is `non_finite`. Times, ids, labels and splits are never missing entries.

Long format (CSV or Parquet: one row per timestep; `parse_csv_row`,
`parse_parquet_row`, both through `parse_long_row`, then `assemble_rows`): a
row without an id, or with the wrong number of fields, is rejected on its own
(one record). Every other problem of a row (non-numeric or non-finite value or
time, bad split) rejects the whole sequence of its id, never just the row, so
no sequence is written with a silent gap; rows of one id with different labels
or splits are `bad_label` / `bad_split`. A sequence's source and line are those
of its first row in (source, line) order; its rejected `record` is its rows.
A row's `line` is its line in a CSV file (the header is line 1) and its
1-based row number in a Parquet file; a Parquet row's `text` is the row as a
JSON object. Parquet cells may be typed (numbers, strings) or text; booleans
in a numeric column are `non_numeric`, and so are nulls unless `missing=keep`.

Timestamps (`seqpipe.dataset.times`): a JSON line's time key (null: none)
or, with `LongFormat.keep_times` (`preprocess.keep_time_column`), a
long-format row's time column gives each step a time; the sequence keeps the
float32 gaps between them (`Sequence.time_delta`, 0 first). A JSON line has
times when it has the key; without `keep_times` the time column only orders
the rows, as before times were kept.

Dataset-level decisions (made in Beam over all parsed records, decided here):
- feature count: the most common width among the records that parse; a tie goes
  to the smallest width (`dataset_feature_count`). Records of another width are
  rejected as `wrong_feature_count`.
- times: a dataset has times on every record or on none. Among the records
  of the dataset's width, the more common of "with times" and "without"
  wins, a tie goes to "without" (`dataset_layout`); the others are rejected
  as `mixed_times`, never silently mixed.
- duplicate ids: the copy from the smallest `(source, line)` is kept, every other
  copy is rejected as `duplicate_id` naming the kept one (`origin`,
  `check_duplicate`; `resolve_duplicates` applies it to a group of copies, and
  `dataset_verdicts` applies the three checks to the copies of one id without
  their steps, as the Beam job does).
  Identical copies are treated the same way: the job never merges records.

Integer ids and labels are accepted and kept as their decimal string (`7` and
`"7"` are the same id). Blank lines are not records: readers skip them.

Splits: a record's `split` field when present, else `hash_split` of its id, a
stable function of the id and the fractions only, so re-running on grown data
keeps every old record in its split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from seqpipe.dataset import records, times
from seqpipe.dataset.times import BAD_TIMES, MIXED_TIMES

UNPARSEABLE = "unparseable"
MISSING_ID = "missing_id"
BAD_SPLIT = "bad_split"
BAD_LABEL = "bad_label"
EMPTY = "empty"
WRONG_FEATURE_COUNT = "wrong_feature_count"
NON_NUMERIC = "non_numeric"
NON_FINITE = "non_finite"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
DUPLICATE_ID = "duplicate_id"
DUPLICATE_TIME = "duplicate_time"
ALL_MISSING = "all_missing"
TOO_MANY_MISSING = "too_many_missing"

REASONS = (UNPARSEABLE, MISSING_ID, BAD_SPLIT, BAD_LABEL, EMPTY, WRONG_FEATURE_COUNT,
           NON_NUMERIC, NON_FINITE, BAD_TIMES, ALL_MISSING, TOO_MANY_MISSING, TOO_SHORT,
           TOO_LONG, DUPLICATE_ID, MIXED_TIMES, DUPLICATE_TIME)

# `missing` policies: keep missing entries (NaN in `steps`) or reject their record.
KEEP = "keep"
REJECT = "reject"
MISSING_POLICIES = (KEEP, REJECT)
# A record with more missing entries than this is rejected (`too_many_missing`): half
# its entries observed still carries its shape, less mostly carries the fill values.
DEFAULT_MAX_MISSING_FRACTION = 0.5

MAX_RECORD_CHARS = 10_000
# The smallest magnitude that rounds to infinity in float32 (max + half an ulp): a
# value below it, e.g. 3.4028235e38 as numpy prints float32 max, is finite.
_FLOAT32_LIMIT = 2.0**128 - 2.0**103
_NUMBER_TYPES = frozenset((float, int))  # exact types: JSON true/false (bool) are not numbers
_NUMBER_OR_NULL_TYPES = _NUMBER_TYPES | {type(None)}  # null: a missing entry (`keep`)


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A valid sequence, ready to encode.

    Attributes:
        id: unique id (non-empty string).
        steps: float32 array `[length, num_features]`, length >= 1; NaN marks a
            missing entry (only with `missing=keep`), every other value is finite.
        label: class label, "" when unlabeled.
        split: `train`, `val` or `test` from the record, or None (assigned by hash).
        source: the input file it came from.
        line: 1-based line (or row) number in `source`; 0 when unknown.
        truncated_from: the original length when `too_long=truncate` cut it, else 0.
        offset: the byte offset of the record's line in `source` when the file
            was read in byte ranges (then `line` is 0: a range does not know
            how many lines came before it); None otherwise.
        time_delta: float32 `[length]`, each step's time minus the previous
            step's (0 first: `times.time_deltas`), or None for a record
            without times.
    """

    id: str
    steps: np.ndarray
    label: str = ""
    split: str | None = None
    source: str = ""
    line: int = 0
    truncated_from: int = 0
    offset: int | None = None
    time_delta: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(self.steps.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.steps.shape[1])

    @property
    def has_times(self) -> bool:
        return self.time_delta is not None


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A record that is not written, and why.

    Attributes:
        reason: one of `REASONS`.
        message: what is wrong, for a human.
        source: the input file it came from.
        line: 1-based line number in `source`; 0 when unknown.
        record: the original record text, cut to `MAX_RECORD_CHARS` characters.
        record_truncated: whether `record` was cut.
        offset: the byte offset of the record in `source` when the file was
            read in byte ranges (`line` is then 0); None otherwise.
    """

    reason: str
    message: str
    source: str = ""
    line: int = 0
    record: str = ""
    record_truncated: bool = False
    offset: int | None = None

    def to_json(self) -> str:
        """One JSON line for `rejects/`."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


def reject(reason: str, message: str, source: str, line: int,
           record: str | bytes, offset: int | None = None) -> Rejection:
    """Builds a `Rejection`, keeping at most `MAX_RECORD_CHARS` of the record."""
    if isinstance(record, bytes):
        record = record.decode("utf-8", errors="replace")
    return Rejection(reason=reason, message=message, source=source, line=line,
                     record=record[:MAX_RECORD_CHARS],
                     record_truncated=len(record) > MAX_RECORD_CHARS, offset=offset)


def parse_json_line(data: str | bytes, source: str = "", line: int = 0,
                    offset: int | None = None, missing: str = REJECT,
                    time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Sequence | Rejection:
    """Parses one JSON line `{"id", "steps", "label"?, "split"?, "t"?}` to a `Sequence`.

    Args:
        data: the line, without or with its line ending.
        source: the input file, kept for rejects and counts.
        line: 1-based line number in `source` (0 when read by byte range).
        offset: the line's byte offset in `source` when read by byte range.
        missing: `keep` (null and NaN entries become NaN) or `reject` (they
            reject the record: `non_numeric`, `non_finite`).
        time_key: the key of the steps' times (absent or null: no times).

    Returns:
        The `Sequence` (length not yet checked: see `check_length`) or a `Rejection`.
    """
    def fail(reason: str, message: str) -> Rejection:
        return reject(reason, message, source, line, data, offset)

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text.removeprefix("\ufeff"))  # a UTF-8 BOM (first line of a file)
    except UnicodeDecodeError as error:
        return fail(UNPARSEABLE, f"not UTF-8: {error}")
    except ValueError as error:
        return fail(UNPARSEABLE, f"not JSON: {error}")
    except RecursionError:
        return fail(UNPARSEABLE, "not JSON this parser can read: nested too deeply")
    if not isinstance(obj, dict):
        return fail(UNPARSEABLE, f"expected a JSON object, got {type(obj).__name__}")
    sequence_id = _as_key(obj.get("id"))
    if not sequence_id:
        return fail(MISSING_ID, f"'id' must be a non-empty string; got {obj.get('id')!r}")
    if not _is_unicode(sequence_id):
        return fail(MISSING_ID, f"'id' is not valid Unicode text: {sequence_id!r}")
    split = obj.get("split")
    if split is not None and split not in records.SPLITS:
        return fail(BAD_SPLIT, f"'split' must be one of {list(records.SPLITS)} or absent; "
                               f"got {split!r}")
    label = obj.get("label")
    if label is not None and label != "" and _as_key(label) is None:
        return fail(BAD_LABEL, f"'label' must be a string or an integer; got {label!r}")
    if isinstance(label, str) and not _is_unicode(label):
        return fail(BAD_LABEL, f"'label' is not valid Unicode text: {label!r}")
    steps = obj.get("steps")
    if not isinstance(steps, list):
        return fail(UNPARSEABLE, f"'steps' must be a list of timesteps; got "
                                 f"{type(steps).__name__}")
    array_or_error = steps_to_array(steps, missing)
    if isinstance(array_or_error, tuple):
        return fail(*array_or_error)
    time_delta = None
    if obj.get(time_key) is not None:
        checked = times.check_times(obj[time_key], len(steps))
        if isinstance(checked, tuple):
            return fail(checked[0], f"{time_key!r}: {checked[1]}")
        time_delta = times.time_deltas(checked)
    return Sequence(id=sequence_id, steps=array_or_error, label=_as_key(label) or "",
                    split=split, source=source, line=line, offset=offset,
                    time_delta=time_delta)


def steps_to_array(steps: list[Any], missing: str = REJECT) -> np.ndarray | tuple[str, str]:
    """Checks a list of timesteps and converts it to float32 `[length, F]`.

    Args:
        steps: the record's `steps` as JSON parsed it.
        missing: `keep`: null and NaN entries become NaN (missing entries);
            `reject`: they are `non_numeric` and `non_finite`.

    Returns:
        The array, or a `(reason, message)` pair (`empty`, `wrong_feature_count`,
        `non_numeric`, `non_finite`).
    """
    if not steps:
        return EMPTY, "'steps' is empty"
    entry_types = _NUMBER_TYPES if missing == REJECT else _NUMBER_OR_NULL_TYPES
    problem = (None if _is_number_matrix(steps, entry_types)
               else _shape_or_type_problem(steps, entry_types))
    if problem:
        return problem
    try:
        values = np.asarray(steps, dtype=np.float64)
    except OverflowError:  # an integer beyond float64: JSON allows any number of digits
        t, f = next((t, f) for t, row in enumerate(steps) for f, value in enumerate(row)
                    if value is not None and abs(value) >= _FLOAT32_LIMIT)
        return NON_FINITE, f"steps[{t}][{f}] is not a finite float32 (too large)"
    with np.errstate(invalid="ignore"):  # NaN compares False: a missing entry is not bad
        bad = (np.abs(values) >= _FLOAT32_LIMIT) | (
            np.isinf(values) if missing == KEEP else ~np.isfinite(values))
    if bad.any():
        t, f = (int(i) for i in np.argwhere(bad)[0])
        return NON_FINITE, f"steps[{t}][{f}] = {steps[t][f]!r} is not a finite float32"
    return values.astype(np.float32)


def _is_number_matrix(steps: list[Any], entry_types: frozenset[type]) -> bool:
    """Fast check (C-level iteration) that steps are equal-width lists of `entry_types`."""
    return (set(map(type, steps)) == {list} and len(set(map(len, steps))) == 1
            and len(steps[0]) > 0
            and set(map(type, itertools.chain.from_iterable(steps))) <= entry_types)


def _shape_or_type_problem(steps: list[Any], entry_types: frozenset[type]
                           ) -> tuple[str, str] | None:
    """The first timestep that is not a list, has another width, or a non-number."""
    width = None
    for t, row in enumerate(steps):
        if not isinstance(row, list):
            return (WRONG_FEATURE_COUNT,
                    f"timestep {t} is {type(row).__name__}, expected a list of features")
        if width is None:
            width = len(row)
        if len(row) != width or width == 0:
            return (WRONG_FEATURE_COUNT,
                    f"timestep {t} has {len(row)} features, timestep 0 has {width}")
        for f, value in enumerate(row):
            if type(value) not in entry_types:  # bool is an int subclass: rejected
                return NON_NUMERIC, f"steps[{t}][{f}] is not a number: {value!r}"
    return None


def validate_json_line(data: str | bytes, source: str = "", line: int = 0,
                       offset: int | None = None, *, min_length: int = 1,
                       max_length: int = 0, too_long: str = "reject", missing: str = REJECT,
                       max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
                       time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Sequence | Rejection:
    """`parse_json_line`, `check_length`, then `check_missing`; rejects keep the line."""
    result = parse_json_line(data, source, line, offset, missing, time_key)
    if isinstance(result, Rejection):
        return result
    result = check_length(result, min_length, max_length, too_long, record=data)
    if isinstance(result, Rejection):
        return result
    return check_missing(result, max_missing_fraction, record=data)


def check_missing(sequence: Sequence, max_missing_fraction: float,
                  record: str | bytes | None = None) -> Sequence | Rejection:
    """Rejects a sequence whose entries are all missing, or too many of them.

    Args:
        sequence: a parsed (and length-checked) sequence; NaN entries are missing.
        max_missing_fraction: the most missing entries, as a fraction of
            length x features, that a kept record may have.
        record: the original record text for a rejection; None re-serializes
            the sequence (`to_json_line`).

    Returns:
        The sequence, or an `all_missing` / `too_many_missing` rejection.
    """
    num_missing = int(np.isnan(sequence.steps).sum())
    if not num_missing:
        return sequence
    fraction = num_missing / sequence.steps.size
    if num_missing == sequence.steps.size:
        reason, message = ALL_MISSING, f"all {num_missing} entries are missing"
    elif fraction > max_missing_fraction:
        reason, message = TOO_MANY_MISSING, (
            f"{num_missing} of {sequence.steps.size} entries missing ({fraction:.3g}), "
            f"max_missing_fraction is {max_missing_fraction:g}")
    else:
        return sequence
    if record is None:
        return reject_sequence(sequence, reason, message)
    return reject(reason, message, sequence.source, sequence.line, record, sequence.offset)


def check_length(sequence: Sequence, min_length: int, max_length: int,
                 too_long: str, record: str | bytes | None = None) -> Sequence | Rejection:
    """Applies the length limits: `too_short`, and `too_long` (reject or truncate).

    Args:
        sequence: a parsed sequence.
        min_length: fewer steps are rejected.
        max_length: more steps are rejected or truncated; 0 means no limit.
        too_long: `reject` or `truncate` (keep the first `max_length` steps).
        record: the original record text for a rejection; None re-serializes
            the sequence (`to_json_line`).
    """
    length = sequence.length
    if length < min_length:
        reason, message = TOO_SHORT, f"{length} timesteps, min_length is {min_length}"
    elif max_length and length > max_length:
        if too_long == "truncate":
            return dataclasses.replace(
                sequence, steps=sequence.steps[:max_length], truncated_from=length,
                time_delta=None if sequence.time_delta is None
                else sequence.time_delta[:max_length])
        reason, message = TOO_LONG, f"{length} timesteps, max_length is {max_length}"
    else:
        return sequence
    if record is None:
        return reject_sequence(sequence, reason, message)
    return reject(reason, message, sequence.source, sequence.line, record, sequence.offset)


def check_feature_count(sequence: Sequence, num_features: int,
                        time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Sequence | Rejection:
    """Rejects a sequence whose width differs from the dataset's feature count
    (re-serialized with its times under `time_key`: `to_json_line`)."""
    if sequence.num_features == num_features:
        return sequence
    return reject_sequence(sequence, WRONG_FEATURE_COUNT,
                           _width_message(sequence.num_features, num_features), time_key)


def check_layout(sequence: Sequence, layout: Layout,
                 time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Sequence | Rejection:
    """Rejects a sequence whose `(width, has times)` is not `layout` (`layout_verdict`;
    re-serialized with its times under `time_key`)."""
    verdict = layout_verdict(layout_of(sequence), layout)
    return sequence if verdict is None else reject_sequence(sequence, *verdict, time_key)


def _width_message(width: int, num_features: int) -> str:
    return f"{width} features, the dataset has {num_features}"


def _duplicate_message(sequence_id: str, kept: Origin) -> str:
    return f"id {sequence_id!r} is already kept from {location(*kept[:3])}"


def dataset_feature_count(width_counts: Mapping[int, int]) -> int:
    """The dataset's feature count: the most common width, ties to the smallest.

    Returns 0 when there are no records.
    """
    if not width_counts:
        return 0
    return min(width_counts, key=lambda width: (-width_counts[width], width))


Origin = tuple[str, int, int, str]


def origin(sequence: Sequence) -> Origin:
    """Where a sequence came from, as the duplicate policy orders copies.

    `(source, line, offset, label)`, offset -1 when unknown: within a file
    either every record has a line number or (read by byte range) every record
    has an offset, so both order the copies by their place in the file.
    """
    offset = -1 if sequence.offset is None else sequence.offset
    return sequence.source, sequence.line, offset, sequence.label


def location(source: str, line: int, offset: int | None = None) -> str:
    """`source:line`, or `source@offset` for a record read by byte range."""
    return f"{source}@{offset}" if offset is not None and offset >= 0 else f"{source}:{line}"


def check_duplicate(sequence: Sequence, kept: Origin | None,
                    time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Sequence | Rejection:
    """The sequence, unless its id is kept from another `origin` (`duplicate_id`).

    Args:
        sequence: a parsed sequence.
        kept: the smallest `origin` among the copies of its id, or None when the
            id occurs once.
        time_key: the key of the re-serialized record's times (`to_json_line`).
    """
    if kept is None or origin(sequence) == kept:
        return sequence
    return reject_sequence(sequence, DUPLICATE_ID, _duplicate_message(sequence.id, kept),
                           time_key)


def resolve_duplicates(copies: Iterable[Sequence], time_key: str = times.DEFAULT_JSON_TIME_KEY
                       ) -> tuple[Sequence, list[Rejection]]:
    """Keeps the copy with the smallest `origin` (source, line); rejects the others.

    Args:
        copies: every parsed sequence sharing one id (at least one).
        time_key: the key of the rejected records' times (`to_json_line`).

    Returns:
        The kept sequence and one `duplicate_id` rejection per other copy.
    """
    ordered = sorted(copies, key=origin)
    kept = origin(ordered[0])
    return ordered[0], [check_duplicate(s, kept, time_key) for s in ordered[1:]]


Layout = tuple[int, bool]
"""What the records of a dataset agree on: `(feature count, has times)`."""


def layout_of(sequence: Sequence) -> Layout:
    """The sequence's `(width, has times)`."""
    return sequence.num_features, sequence.has_times


def dataset_layout(layout_counts: Mapping[Layout, int]) -> Layout:
    """The dataset's `(feature count, has times)` from `{(width, has times): records}`.

    The feature count is `dataset_feature_count` of the widths; among the
    records of that width, times go to the majority, a tie to "without".
    `(0, False)` when there are no records.
    """
    widths: Counter[int] = Counter()
    for (width, _), n in layout_counts.items():
        widths[width] += n
    num_features = dataset_feature_count(widths)
    timed = layout_counts.get((num_features, True), 0)
    return num_features, timed > layout_counts.get((num_features, False), 0)


def layout_verdict(layout: Layout, dataset: Layout) -> tuple[str, str] | None:
    """None if a record's layout is the dataset's, else `wrong_feature_count` (another
    width) or `mixed_times` (the same width, times present on one side only)."""
    if layout[0] != dataset[0]:
        return WRONG_FEATURE_COUNT, _width_message(layout[0], dataset[0])
    if layout[1] != dataset[1]:
        return MIXED_TIMES, ("the record has times, the dataset's records have none"
                             if layout[1] else
                             "the record has no times, the dataset's records have them")
    return None


def dataset_verdicts(sequence_id: str, copies: list[tuple[Origin, Layout | int]],
                     num_features: Layout | int) -> list[tuple[str, str] | None]:
    """The three dataset-level checks on every copy of one id, without their steps.

    Args:
        sequence_id: the id the copies share.
        copies: `(origin, (width, has times))` of each copy (see `origin`); a
            bare width means a copy without times.
        num_features: the dataset's layout (`dataset_layout`); a bare feature
            count means a dataset without times.

    Returns:
        Per copy, None if it is kept, else `(reason, message)`: a layout
        other than the dataset's is `wrong_feature_count` or `mixed_times`
        (`layout_verdict`); of the remaining copies the one with the smallest
        origin is kept (the first of equal ones) and the others are
        `duplicate_id`, as `check_feature_count` then `check_duplicate` decide.
    """
    dataset = _as_layout(num_features)
    verdicts: list[tuple[str, str] | None] = [
        layout_verdict(_as_layout(layout), dataset) for _, layout in copies]
    right_width = [i for i, verdict in enumerate(verdicts) if verdict is None]
    if len(right_width) > 1:
        kept = min(right_width, key=lambda i: copies[i][0])
        for i in right_width:
            if i != kept:
                verdicts[i] = (DUPLICATE_ID, _duplicate_message(sequence_id, copies[kept][0]))
    return verdicts


def _as_layout(layout: Layout | int) -> Layout:
    """A layout; a bare width is one without times."""
    return layout if isinstance(layout, tuple) else (layout, False)


def reject_sequence(sequence: Sequence, reason: str, message: str,
                    time_key: str = times.DEFAULT_JSON_TIME_KEY) -> Rejection:
    """Rejects an already parsed sequence; its record is re-serialized as JSON
    (`to_json_line`, times under `time_key`).

    The float32 values are written in their shortest form, so the JSON parses
    back to exactly the same float32 steps.
    """
    return reject(reason, message, sequence.source, sequence.line,
                  to_json_line(sequence, time_key), sequence.offset)


def to_json_line(sequence: Sequence, time_key: str = times.DEFAULT_JSON_TIME_KEY) -> str:
    """The sequence as a JSONL record (`id`, `steps`, and `label`/`split`/times if set).

    A missing entry (NaN) is written as null, which `missing=keep` reads back as
    missing. Times are written under `time_key` (give the job's
    `preprocess.json_time_key`, so that the line reads back with the same
    config), relative (starting at 0: `times.times_from_deltas`; the absolute
    times are not kept).
    """
    steps = [[None if v != v else float(str(v)) for v in row] for row in sequence.steps]
    obj: dict[str, Any] = {"id": sequence.id, "steps": steps}
    if sequence.label:
        obj["label"] = sequence.label
    if sequence.split:
        obj["split"] = sequence.split
    if sequence.has_times:
        obj[time_key] = times.times_from_deltas(sequence.time_delta).tolist()
    return json.dumps(obj)


def hash_fraction(sequence_id: str) -> float:
    """A stable number in [0, 1) from the id: the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(sequence_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(sequence_id: str, train_fraction: float, val_fraction: float) -> str:
    """The split of a record without a `split` field: `train`, `val` or `test`.

    Depends only on the id and the fractions, never on the other records.
    """
    u = hash_fraction(sequence_id)
    if u < train_fraction:
        return "train"
    if u < train_fraction + val_fraction:
        return "val"
    return "test"


def assign_split(sequence: Sequence, train_fraction: float, val_fraction: float) -> str:
    """The record's own `split` if it has one, else `hash_split` of its id."""
    if sequence.split:
        return sequence.split
    return hash_split(sequence.id, train_fraction, val_fraction)


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_key(value: Any) -> str | None:
    """A string or integer id/label as a string; None for anything else or ""."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# ---------------------------------------------------------------- long format (CSV, Parquet)


@dataclasses.dataclass(frozen=True)
class LongFormat:
    """Column names of a long-format input (see `PreprocessConfig`).

    `feature_columns` empty means every column not named here, in header order.
    `keep_times`: the sequences keep the time column's gaps as their times
    (`Sequence.time_delta`); otherwise the time column only orders the rows.
    """

    id_column: str = "id"
    time_column: str = "t"
    label_column: str = "label"
    split_column: str = "split"
    feature_columns: tuple[str, ...] = ()
    keep_times: bool = False

    def features_of(self, header: list[str]) -> list[str]:
        """The feature columns of a file with this header."""
        if self.feature_columns:
            return list(self.feature_columns)
        named = {self.id_column, self.time_column, self.label_column, self.split_column}
        return [column for column in header if column not in named]

    def missing_columns(self, header: list[str]) -> list[str]:
        """Required columns (id, time, features) absent from `header`."""
        required = [self.id_column, self.time_column, *self.features_of(header)]
        return [column for column in required if column not in header]


@dataclasses.dataclass(frozen=True)
class Row:
    """One timestep of a long-format sequence.

    Attributes:
        id, time, values, label, split, source, line: the row's content and origin.
        text: the row as read (for rejects).
        error: `(reason, message)` if the row is bad; it rejects the whole sequence.
    """

    id: str
    time: float
    values: tuple[float, ...]
    label: str = ""
    split: str | None = None
    source: str = ""
    line: int = 0
    text: str = ""
    error: tuple[str, str] | None = None


def parse_csv_row(fields: list[str], header: list[str], fmt: LongFormat,
                  source: str = "", line: int = 0, text: str = "",
                  missing: str = REJECT) -> Row | Rejection:
    """One CSV row (already split into fields) -> a `Row`, or a `Rejection` of the row.

    Only a row that cannot be attached to an id is rejected here; other
    problems are kept in `Row.error` and reject the row's whole sequence.
    With `missing=keep` an empty or NaN feature cell is a missing entry (NaN).
    """
    text = text or ",".join(fields)
    if len(fields) != len(header):
        absent = fmt.missing_columns(header)
        if absent:
            return reject(UNPARSEABLE, f"header lacks columns {absent}", source, line, text)
        return reject(UNPARSEABLE, f"{len(fields)} fields, the header has {len(header)}",
                      source, line, text)
    return parse_long_row(dict(zip(header, fields, strict=True)), header, fmt, source,
                          line, text, missing)


def parse_parquet_row(row: Mapping[str, Any], columns: list[str], fmt: LongFormat,
                      source: str = "", line: int = 0, missing: str = REJECT) -> Row | Rejection:
    """One Parquet row (`{column: value}` as pyarrow's `to_pylist` gives it) -> `Row`.

    Same checks as `parse_csv_row`; `line` is the 1-based row number in the
    file and the rejected record is the row as a JSON object. With
    `missing=keep` a null or NaN feature cell is a missing entry (NaN).
    """
    text = json.dumps(dict(row), default=str, ensure_ascii=False)
    return parse_long_row(row, columns, fmt, source, line, text, missing)


def parse_long_row(row: Mapping[str, Any], columns: list[str], fmt: LongFormat,
                   source: str = "", line: int = 0, text: str = "",
                   missing: str = REJECT) -> Row | Rejection:
    """One long-format row `{column: value}` (strings or typed values) -> `Row | Rejection`.

    Numbers may be given as numbers or as text; booleans and text that is not
    a number are `non_numeric`. A feature cell that is null, empty or NaN is a
    missing entry (NaN) with `missing=keep`; with `reject` it is `non_numeric`
    (null, empty) or `non_finite` (NaN). The time is never missing. The id and
    label are taken as text.
    """
    absent = fmt.missing_columns(columns)
    if absent:
        return reject(UNPARSEABLE, f"header lacks columns {absent}", source, line, text)
    sequence_id = _text(row[fmt.id_column])
    if not sequence_id:
        return reject(MISSING_ID, f"empty {fmt.id_column!r}", source, line, text)
    split = _text(row.get(fmt.split_column)) or None
    error = None
    if split is not None and split not in records.SPLITS:
        error = (BAD_SPLIT, f"split {split!r} is not one of {list(records.SPLITS)}")
    numbers = []
    for index, column in enumerate([fmt.time_column, *fmt.features_of(columns)]):
        may_be_missing = index > 0 and missing == KEEP
        try:
            number = _number(row[column], may_be_missing)
        except (TypeError, ValueError):
            error = error or (NON_NUMERIC, f"{column}={row[column]!r} is not a number")
            number = 0.0
        if not (math.isfinite(number) or (may_be_missing and math.isnan(number))
                ) or abs(number) >= _FLOAT32_LIMIT:
            error = error or (NON_FINITE, f"{column}={row[column]!r} is not a finite float32")
        numbers.append(number)
    return Row(id=sequence_id, time=numbers[0], values=tuple(numbers[1:]),
               label=_text(row.get(fmt.label_column)), split=split, source=source,
               line=line, text=text, error=error)


def _text(value: Any) -> str:
    """A long-format id/label/split cell as stripped text; null is ""."""
    return "" if value is None else str(value).strip()


def _number(value: Any, may_be_missing: bool = False) -> float:
    """A long-format numeric cell: a number, or text of one (raises otherwise).

    With `may_be_missing`, null and blank text are a missing entry: NaN.
    """
    if may_be_missing and (value is None or (isinstance(value, str) and not value.strip())):
        return math.nan
    if value is None or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def assemble_rows(rows: Iterable[Row], min_length: int = 1, max_length: int = 0,
                  too_long: str = "reject",
                  max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
                  keep_times: bool = False) -> Sequence | Rejection:
    """The rows of one id, sorted by time -> a checked `Sequence` or a rejection.

    With `keep_times` the sequence keeps the gaps of its rows' times
    (`Sequence.time_delta`); without, the times only order the rows.

    The length limits (`check_length`) then the missing entries (`check_missing`:
    missing cells are NaN only when the rows were parsed with `missing=keep`).
    """
    by_origin = sorted(rows, key=lambda r: (r.source, r.line))
    first = by_origin[0]
    record = "\n".join(r.text for r in by_origin)

    def fail(reason: str, message: str) -> Rejection:
        return reject(reason, f"id {first.id!r}: {message}", first.source, first.line, record)

    for row in by_origin:
        if row.error:
            return fail(row.error[0], f"{row.source}:{row.line}: {row.error[1]}")
    if len({r.label for r in by_origin}) > 1:
        return fail(BAD_LABEL, f"rows disagree on the label: {sorted({r.label for r in rows})}")
    if len({r.split for r in by_origin}) > 1:
        return fail(BAD_SPLIT, "rows disagree on the split")
    ordered = sorted(by_origin, key=lambda r: r.time)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.time == after.time:
            return fail(DUPLICATE_TIME, f"two rows at time {after.time:g}")
    widths = sorted({len(r.values) for r in ordered})
    if len(widths) > 1:
        return fail(WRONG_FEATURE_COUNT, f"rows have different feature counts {widths} "
                                         "(files with different headers?)")
    steps = np.array([r.values for r in ordered], dtype=np.float32)
    if steps.shape[1] == 0:
        return fail(WRONG_FEATURE_COUNT, "no feature columns")
    sequence = Sequence(id=first.id, steps=steps, label=first.label, split=first.split,
                        source=first.source, line=first.line,
                        time_delta=times.time_deltas(np.array([r.time for r in ordered]))
                        if keep_times else None)
    result = check_length(sequence, min_length, max_length, too_long, record=record)
    if isinstance(result, Rejection):
        return result
    return check_missing(result, max_missing_fraction, record=record)
