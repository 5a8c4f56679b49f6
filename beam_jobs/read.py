"""Reading: input discovery and one reader PTransform per raw format.

    --input patterns ──expand_inputs──▶ files ──group_by_format──▶ {format: files}
    files ──make_reader(format)──▶ ReadJsonLines | ReadCsvLong | ReadParquetLong
          ──▶ one `Sequence | Rejection` per input record, checked on its own

Inputs are JSON lines (`{"id", "steps", "label"?, "split"?, "t"?}`) or long-format
CSV or Parquet (one row per timestep: id, time and feature columns, optional
label and split; see `seqpipe.dataset.sources`), told apart by suffix
(`.jsonl`, `.csv`, `.parquet`) unless `preprocess.input_format` names one;
globs, several inputs and `.gz` (not for Parquet) welcome.

Every reader parses and checks each record on its own with the pure
functions of `seqpipe.dataset.sources` (parsing, length limits, missing
entries: `preprocess.missing`, `max_missing_fraction`) and counts it
(`seqpipe/read`, `seqpipe/truncated`; `beam_jobs.validate.count`); the
dataset-level checks come after (`beam_jobs.validate`). A new input format is
one more reader PTransform that turns file paths into `Sequence | Rejection`
elements, one per input record (a long-format reader groups rows by id with a
GroupByKey, sorts them by time, then applies `sources.check_length`);
everything downstream is shared.

How each format is spread over the workers:
- JSONL: a gzip file, or an uncompressed one up to `SPLIT_BYTES` (64 MiB), is
  read whole by one worker, with exact line numbers; a bigger uncompressed
  file is read in `SPLIT_BYTES` byte ranges by many workers, and its records
  are located by byte offset (`offset`, with `line` 0).
- CSV: a file is read whole by one worker (a quoted field may hold a newline,
  so a byte range cannot find its first row safely).
- Parquet: files are read by row group (exact row numbers), so one big
  Parquet file is read by many workers.
Files, ranges and row groups are spread in a fixed order (`Spread`), so the
same inputs and runner settings give every worker the same work.
"""

from __future__ import annotations

import csv
import dataclasses
import zlib
from collections.abc import Mapping
from collections.abc import Sequence as Seq

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.validate import REJECTS, count
from seqpipe import config as config_lib
from seqpipe.dataset import sources, times
from seqpipe.dataset.sources import Rejection, Sequence
from seqpipe.errors import SeqpipeError

FORMAT_SUFFIXES = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",),
                   "parquet": (".parquet",)}
# An uncompressed JSONL file bigger than this is read in ranges of this size.
SPLIT_BYTES = 64 * 2**20


class InputError(SeqpipeError, ValueError):
    """Inputs or output the job cannot take (format, suffix, path kind)."""


# ---------------------------------------------------------------- input discovery


def expand_inputs(patterns: Seq[str]) -> list[str]:
    """The sorted, de-duplicated files matching `patterns`.

    Raises:
        FileNotFoundError: a pattern matches no file (a typo must not give an
            empty dataset).
    """
    if not patterns:
        raise FileNotFoundError("no --input given")
    files = set()
    for pattern in patterns:
        matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if not matched:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        files.update(matched)
    return sorted(files)


def group_by_format(files: Seq[str], configured: str) -> dict[str, list[str]]:
    """{format: files}: `configured` for all, or from each suffix (`.gz` ignored) if auto.

    Raises:
        InputError: a suffix that names no format, or a format not implemented yet.
    """
    groups: dict[str, list[str]] = {}
    for path in files:
        fmt = configured if configured != "auto" else _format_of_suffix(path)
        if fmt not in FORMAT_SUFFIXES:
            raise InputError(f"{path}: input format {fmt!r} is not implemented yet "
                             f"(readable: {list(FORMAT_SUFFIXES)})")
        groups.setdefault(fmt, []).append(path)
    return groups


def _format_of_suffix(path: str) -> str:
    stem = path[:-3] if path.endswith(".gz") else path
    if path.endswith(".parquet.gz"):
        raise InputError(f"{path}: gzip-wrapped Parquet is not supported (Parquet "
                         "compresses its pages itself)")
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if stem.endswith(suffixes):
            return fmt
    raise InputError(f"{path}: cannot tell the format from the suffix; use "
                     f".jsonl/.csv (optionally .gz), .parquet or set preprocess.input_format")


def make_reader(input_format: str, cfg: config_lib.PreprocessConfig) -> beam.PTransform:
    """The reader PTransform of one input format: paths -> `Sequence | Rejection`."""
    limits = (cfg.min_length, cfg.max_length, cfg.too_long, cfg.missing,
              cfg.max_missing_fraction)
    if input_format == "jsonl":
        return ReadJsonLines(*limits, time_key=cfg.json_time_key)
    if input_format == "csv":
        return ReadCsvLong(long_format(cfg), *limits)
    if input_format == "parquet":
        return ReadParquetLong(long_format(cfg), *limits)
    raise InputError(f"input format {input_format!r} is not implemented yet "
                     f"(readable: {list(FORMAT_SUFFIXES)})")


def long_format(cfg: config_lib.PreprocessConfig) -> sources.LongFormat:
    """The long-format column names of the config."""
    return sources.LongFormat(cfg.id_column, cfg.time_column, cfg.label_column,
                              cfg.split_column, tuple(cfg.feature_columns),
                              cfg.keep_time_column)


def feature_names(files_by_format: Mapping[str, Seq[str]],
                  cfg: config_lib.PreprocessConfig, num_features: int) -> list[str]:
    """Configured feature columns, else the first CSV/Parquet file's, else f0, f1, ..."""
    names: list[str] = list(cfg.feature_columns)
    if not names and files_by_format.get("csv"):
        with FileSystems.open(files_by_format["csv"][0]) as stream:
            header = next(csv.reader([stream.readline().decode("utf-8", "replace")]), [])
        names = long_format(cfg).features_of([column.strip() for column in header])
    elif not names and files_by_format.get("parquet"):
        import pyarrow.parquet as pq

        with FileSystems.open(files_by_format["parquet"][0]) as stream:
            names = long_format(cfg).features_of(pq.read_schema(stream).names)
    if len(names) != num_features:
        names = [f"f{i}" for i in range(num_features)]
    return names


# ---------------------------------------------------------------- readers
def _keyed_by(element, key_fn):
    return key_fn(element), element


def _values(element):
    return element[1]


def _identity(element):
    return element


class Spread(beam.PTransform):
    """Spreads elements over the workers, like `Reshuffle`, but in a fixed order.

    A GroupByKey on a unique key (`key_fn`, the element itself by default)
    instead of Reshuffle's random keys: the DirectRunner hands the groups out
    round-robin in arrival order, so the same inputs give every worker the
    same work in the same order, run after run (reproducible part files).
    """

    def __init__(self, key_fn=_identity):
        super().__init__()
        self._key_fn = key_fn

    def expand(self, pcoll):
        return (pcoll
                | "key" >> beam.Map(_keyed_by, self._key_fn)
                | "group" >> beam.GroupByKey()
                | "values" >> beam.FlatMap(_values))


@dataclasses.dataclass(frozen=True)
class FileRange:
    """Part of an input file to read: the lines that start in `[start, end)`.

    `end` None means the whole file, read from its first byte, so records get
    line numbers; a bounded range gets byte offsets instead (it cannot know
    how many lines came before it).
    """

    path: str
    start: int = 0
    end: int | None = None


def _range_key(file_range: FileRange) -> tuple[str, int]:
    return file_range.path, file_range.start


class _PlanRangesFn(beam.DoFn):
    """Path -> `FileRange`s: ranges of `split_bytes` for a big uncompressed file, else whole."""

    def __init__(self, split_bytes: int):
        self._split_bytes = split_bytes

    def process(self, path: str):
        [metadata] = FileSystems.match([path])[0].metadata_list
        compressed = CompressionTypes.detect_compression_type(path) != (
            CompressionTypes.UNCOMPRESSED)
        if compressed or metadata.size_in_bytes <= self._split_bytes:
            yield FileRange(path)
            return
        for start in range(0, metadata.size_in_bytes, self._split_bytes):
            yield FileRange(path, start, min(start + self._split_bytes,
                                             metadata.size_in_bytes))


class _ReadJsonLinesFn(beam.DoFn):
    """Reads one `FileRange` of a JSONL file; validates every non-blank line in it."""

    def __init__(self, min_length: int, max_length: int, too_long: str, missing: str,
                 max_missing_fraction: float, time_key: str):
        self._limits = {"min_length": min_length, "max_length": max_length,
                        "too_long": too_long, "missing": missing,
                        "max_missing_fraction": max_missing_fraction, "time_key": time_key}

    def process(self, file_range: FileRange):
        lines = (self._whole_file(file_range.path) if file_range.end is None
                 else self._byte_range(file_range))
        for line, offset, data in lines:
            if isinstance(data, Rejection):  # the rest of the file cannot be read
                count("read")
                yield data
                continue
            if not data.strip():
                continue
            count("read")
            result = sources.validate_json_line(data.rstrip(b"\r\n"), file_range.path, line,
                                                offset, **self._limits)
            if isinstance(result, Sequence) and result.truncated_from:
                count("truncated")
            yield result

    @staticmethod
    def _whole_file(path: str):
        """(line number, None, line) of a whole (optionally compressed) file.

        A file that breaks off (a truncated or corrupt gzip stream) ends with
        one `unparseable` rejection for the unreadable rest, after its good lines.
        """
        number = 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
                for number, data in enumerate(iter(stream.readline, b""), start=1):
                    yield number, None, data
        except (OSError, EOFError, zlib.error) as error:
            yield number + 1, None, sources.reject(
                sources.UNPARSEABLE, f"cannot read the file after line {number}: {error}",
                path, number + 1, "")

    @staticmethod
    def _byte_range(file_range: FileRange):
        """(0, byte offset, line) of the lines starting in the range of an uncompressed file.

        A line belongs to the range holding its first byte: a range that does
        not start the file skips the line already begun (the previous range
        reads it whole), and a range reads past its end to finish its last line.
        """
        with FileSystems.open(file_range.path,
                              compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            position = file_range.start
            if position:
                stream.seek(position - 1)
                position += len(stream.readline()) - 1
            while position < file_range.end and (data := stream.readline()):
                yield 0, position, data
                position += len(data)


class ReadJsonLines(beam.PTransform):
    """File paths -> one `Sequence | Rejection` per non-blank line (`validate_json_line`).

    A gzip file, or an uncompressed one of at most `split_bytes`, is read whole
    by one worker, with exact line numbers. A bigger uncompressed file is read
    in byte ranges of `split_bytes` by many workers; its records are located
    by byte offset (`Sequence.offset`, `line` 0) instead. A line's times are
    under `time_key` (`sources.parse_json_line`). The ranges (or files)
    are spread over the workers in a fixed order (`Spread`).
    Every reader yields records checked on their own (parsing, length limits);
    the dataset-level checks come after.
    """

    def __init__(self, min_length: int = 1, max_length: int = 0, too_long: str = "reject",
                 missing: str = sources.REJECT,
                 max_missing_fraction: float = sources.DEFAULT_MAX_MISSING_FRACTION,
                 split_bytes: int | None = None,
                 time_key: str = times.DEFAULT_JSON_TIME_KEY):
        super().__init__()
        self._limits = (min_length, max_length, too_long, missing, max_missing_fraction,
                        time_key)
        self._split_bytes = split_bytes or SPLIT_BYTES

    def expand(self, paths):
        return (paths
                | "plan_ranges" >> beam.ParDo(_PlanRangesFn(self._split_bytes))
                | "spread_ranges" >> Spread(_range_key)
                | "read_and_validate_lines" >> beam.ParDo(_ReadJsonLinesFn(*self._limits)))


class _ReadCsvRowsFn(beam.DoFn):
    """Reads one (optionally compressed) long-format CSV file: a `Row | Rejection` per row."""

    def __init__(self, fmt: sources.LongFormat, missing: str):
        self._fmt = fmt
        self._missing = missing

    def setup(self):
        # A field longer than the csv module's default limit (128 KiB) must become
        # a rejected row, not a csv.Error that fails the job.
        csv.field_size_limit(2**31 - 1)

    def process(self, path: str):
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
            lines = (data.decode("utf-8", errors="replace")
                     for data in iter(stream.readline, b""))
            reader = csv.reader(lines)
            header = [column.strip().removeprefix("\ufeff") for column in next(reader, [])]
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield sources.parse_csv_row(fields, header, self._fmt, path,
                                                reader.line_num, missing=self._missing)


class _KeyRowsFn(beam.DoFn):
    """Rows -> (id, row); rows rejected on their own go to `rejects` (one record each)."""

    def process(self, result):
        if isinstance(result, Rejection):
            count("read")
            yield beam.pvalue.TaggedOutput(REJECTS, result)
        else:
            yield result.id, result


def _assemble(element, min_length: int, max_length: int, too_long: str,
              max_missing_fraction: float, keep_times: bool = False):
    _, rows = element
    count("read")
    result = sources.assemble_rows(rows, min_length, max_length, too_long,
                                   max_missing_fraction, keep_times)
    if isinstance(result, Sequence) and result.truncated_from:
        count("truncated")
    return result


class AssembleLongRows(beam.PTransform):
    """`Row | Rejection` of long-format rows -> one `Sequence | Rejection` per id.

    Rows are grouped by id (across files too) and sorted by time
    (`sources.assemble_rows`); a row rejected on its own is one record. With
    `keep_times` the sequences keep their time gaps (`Sequence.time_delta`).
    """

    def __init__(self, min_length: int = 1, max_length: int = 0, too_long: str = "reject",
                 max_missing_fraction: float = sources.DEFAULT_MAX_MISSING_FRACTION,
                 keep_times: bool = False):
        super().__init__()
        self._limits = (min_length, max_length, too_long, max_missing_fraction, keep_times)

    def expand(self, rows):
        keyed = (rows
                 | "key_rows_by_id" >> beam.ParDo(_KeyRowsFn())
                 .with_output_types(tuple[str, sources.Row])
                 .with_outputs(REJECTS, main="rows"))
        sequences = (keyed.rows
                     | "group_rows_by_id" >> beam.GroupByKey()
                     | "assemble_sequences" >> beam.Map(_assemble, *self._limits))
        return (sequences, keyed[REJECTS]) | "merge_row_rejects" >> beam.Flatten()


class _ReadLong(beam.PTransform):
    """Base of the long-format readers: the column names, the length limits and the
    missing-entry policy (`missing`, `max_missing_fraction`: `sources`)."""

    def __init__(self, fmt: sources.LongFormat, min_length: int = 1, max_length: int = 0,
                 too_long: str = "reject", missing: str = sources.REJECT,
                 max_missing_fraction: float = sources.DEFAULT_MAX_MISSING_FRACTION):
        super().__init__()
        self._fmt = fmt
        self._missing = missing
        self._limits = (min_length, max_length, too_long, max_missing_fraction,
                        fmt.keep_times)


class ReadCsvLong(_ReadLong):
    """File paths -> one `Sequence | Rejection` per id (or per row that has none).

    Long format: one row per timestep with id, time and feature columns
    (`AssembleLongRows`). Each file is read whole by one worker.
    """

    def expand(self, paths):
        return (paths
                | "spread_files" >> Spread()
                | "read_rows" >> beam.ParDo(_ReadCsvRowsFn(self._fmt, self._missing))
                | "assemble_rows" >> AssembleLongRows(*self._limits))


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One Parquet row group to read: its file, index and first 1-based row number."""

    path: str
    index: int
    first_row: int


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    stream = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return pq.ParquetFile(stream)


class _ListRowGroupsFn(beam.DoFn):
    """Path -> a `RowGroup` per row group; a file that is not Parquet is one rejection."""

    def process(self, path: str):
        try:
            metadata = _open_parquet(path).metadata
        except Exception as error:  # noqa: BLE001 - any unreadable file is a rejection
            yield sources.reject(sources.UNPARSEABLE, f"not a readable Parquet file: {error}",
                                 path, 0, "")
            return
        first_row = 1
        for index in range(metadata.num_row_groups):
            yield RowGroup(path, index, first_row)
            first_row += metadata.row_group(index).num_rows


def _row_group_key(group: RowGroup | Rejection) -> tuple[str, int]:
    if isinstance(group, Rejection):
        return group.source, -1
    return group.path, group.index


class _ReadRowGroupFn(beam.DoFn):
    """`RowGroup` -> a `Row | Rejection` per row (`sources.parse_parquet_row`)."""

    def __init__(self, fmt: sources.LongFormat, missing: str, batch_rows: int = 8192):
        self._fmt = fmt
        self._missing = missing
        self._batch_rows = batch_rows

    def process(self, group: RowGroup | Rejection):
        if isinstance(group, Rejection):
            yield group
            return
        parquet = _open_parquet(group.path)
        columns = parquet.schema_arrow.names
        line = group.first_row
        for batch in parquet.iter_batches(batch_size=self._batch_rows,
                                          row_groups=[group.index]):
            for row in batch.to_pylist():
                yield sources.parse_parquet_row(row, columns, self._fmt, group.path, line,
                                                self._missing)
                line += 1


class ReadParquetLong(_ReadLong):
    """Parquet file paths -> one `Sequence | Rejection` per id (or per row that has none).

    The same long format and checks as `ReadCsvLong`, with 1-based row numbers
    as the location. Files are read by row group, so one big file is read by
    many workers (a reshuffle spreads the row groups).
    """

    def expand(self, paths):
        return (paths
                | "list_row_groups" >> beam.ParDo(_ListRowGroupsFn())
                | "spread_row_groups" >> Spread(_row_group_key)
                | "read_row_groups" >> beam.ParDo(_ReadRowGroupFn(self._fmt, self._missing))
                | "assemble_rows" >> AssembleLongRows(*self._limits))

