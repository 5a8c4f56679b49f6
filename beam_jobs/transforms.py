"""The PTransforms of the preprocessing job, one per concern.

    file paths ──read_jsonl | read_csv | read_parquet──▶ Sequence | Rejection  (one per
      record, parsed and length-checked)
      ──write_candidates──▶ part files (one pass, written by the worker that read
                            the record) + a small Candidate per record + rejects
    Candidates ──check_dataset──▶ kept Candidates, drops (feature count, duplicate ids)
    parts + drops ──drop_rejected──▶ final parts (the few parts holding a drop are
                                     rewritten) + rejects  [──reshard──▶ num_shards]
    rejections of every stage ──write_rejects──▶ rejects/*.jsonl
    read / kept / rejected ──count_records──▶ counts;  parts ──compute_stats──▶ stats

Per-record logic lives in `seqpipe.dataset.sources` (pure, tested without Beam); this
module wires it into Beam, counts every rejection with a Beam counter
(`seqpipe/rejected_<reason>`) and aggregates statistics with CombineFns whose
merges are exact or numerically stable (Chan et al.'s parallel variance).

Readers: `ReadJsonLines` (one record a line; big uncompressed files in byte
ranges), `ReadCsvLong` and `ReadParquetLong` (long format, one row per
timestep, both ending in `AssembleLongRows`). A new input format is one more
reader PTransform that turns file paths into `Sequence | Rejection` elements,
one per input record, checked on their own (a long-format reader groups rows
by id with a GroupByKey, sorts them by time, then applies
`sources.check_length`); everything downstream is shared.

Why one pass: with the records themselves flowing from stage to stage, every
dataset-level check (it needs all records before any can be written) made
the DirectRunner hold and re-send the whole data set through its single
runner process, which then bounded both speed and memory. Now only
`Candidate`s (~150 bytes each, `CandidateCoder`) and per-part summaries
travel; the statistics of each part are accumulated while it is written.
Part files are TFRecords framed with Beam's TFRecord codec and
`records.encode_sequence`'s hand-written protobuf, so workers never import
TensorFlow. The driver renames the final parts to their TFDS shard names.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from seqpipe.dataset import records, sources
from seqpipe.dataset.sources import Rejection, Sequence

METRICS_NAMESPACE = "seqpipe"
REJECTS = "rejects"
CANDIDATES = "candidates"
DROPS = "drops"

# Automatic shard count: one shard per TARGET_SHARD_BYTES of encoded records,
# at least MIN_SHARDS (parallel reads by a few workers) and at most one per record.
TARGET_SHARD_BYTES = 64 * 2**20
# An uncompressed JSONL file bigger than this is read in ranges of this size.
SPLIT_BYTES = 64 * 2**20
MIN_SHARDS = 2
HISTOGRAM_BINS = 20
LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(METRICS_NAMESPACE, name).inc(n)


# ---------------------------------------------------------------- reading


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

    def __init__(self, min_length: int, max_length: int, too_long: str):
        self._limits = {"min_length": min_length, "max_length": max_length,
                        "too_long": too_long}

    def process(self, file_range: FileRange):
        lines = (self._whole_file(file_range.path) if file_range.end is None
                 else self._byte_range(file_range))
        for line, offset, data in lines:
            if isinstance(data, Rejection):  # the rest of the file cannot be read
                _count("read")
                yield data
                continue
            if not data.strip():
                continue
            _count("read")
            result = sources.validate_json_line(data.rstrip(b"\r\n"), file_range.path, line,
                                                offset, **self._limits)
            if isinstance(result, Sequence) and result.truncated_from:
                _count("truncated")
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
    by byte offset (`Sequence.offset`, `line` 0) instead. The ranges (or files)
    are spread over the workers in a fixed order (`Spread`).
    Every reader yields records checked on their own (parsing, length limits);
    the dataset-level checks come after.
    """

    def __init__(self, min_length: int = 1, max_length: int = 0, too_long: str = "reject",
                 split_bytes: int | None = None):
        super().__init__()
        self._limits = (min_length, max_length, too_long)
        self._split_bytes = split_bytes or SPLIT_BYTES

    def expand(self, paths):
        return (paths
                | "plan_ranges" >> beam.ParDo(_PlanRangesFn(self._split_bytes))
                | "spread_ranges" >> Spread(_range_key)
                | "read_and_validate_lines" >> beam.ParDo(_ReadJsonLinesFn(*self._limits)))


class _ReadCsvRowsFn(beam.DoFn):
    """Reads one (optionally compressed) long-format CSV file: a `Row | Rejection` per row."""

    def __init__(self, fmt: sources.LongFormat):
        self._fmt = fmt

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
                                                reader.line_num)


class _KeyRowsFn(beam.DoFn):
    """Rows -> (id, row); rows rejected on their own go to `rejects` (one record each)."""

    def process(self, result):
        if isinstance(result, Rejection):
            _count("read")
            yield beam.pvalue.TaggedOutput(REJECTS, result)
        else:
            yield result.id, result


def _assemble(element, min_length: int, max_length: int, too_long: str):
    _, rows = element
    _count("read")
    result = sources.assemble_rows(rows, min_length, max_length, too_long)
    if isinstance(result, Sequence) and result.truncated_from:
        _count("truncated")
    return result


class AssembleLongRows(beam.PTransform):
    """`Row | Rejection` of long-format rows -> one `Sequence | Rejection` per id.

    Rows are grouped by id (across files too) and sorted by time
    (`sources.assemble_rows`); a row rejected on its own is one record.
    """

    def __init__(self, min_length: int = 1, max_length: int = 0, too_long: str = "reject"):
        super().__init__()
        self._limits = (min_length, max_length, too_long)

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
    """Base of the long-format readers: the column names and the length limits."""

    def __init__(self, fmt: sources.LongFormat, min_length: int = 1, max_length: int = 0,
                 too_long: str = "reject"):
        super().__init__()
        self._fmt = fmt
        self._limits = (min_length, max_length, too_long)


class ReadCsvLong(_ReadLong):
    """File paths -> one `Sequence | Rejection` per id (or per row that has none).

    Long format: one row per timestep with id, time and feature columns
    (`AssembleLongRows`). Each file is read whole by one worker.
    """

    def expand(self, paths):
        return (paths
                | "spread_files" >> Spread()
                | "read_rows" >> beam.ParDo(_ReadCsvRowsFn(self._fmt))
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

    def __init__(self, fmt: sources.LongFormat, batch_rows: int = 8192):
        self._fmt = fmt
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
                yield sources.parse_parquet_row(row, columns, self._fmt, group.path, line)
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
                | "read_row_groups" >> beam.ParDo(_ReadRowGroupFn(self._fmt))
                | "assemble_rows" >> AssembleLongRows(*self._limits))


# ---------------------------------------------------------------- writing and checking


@dataclasses.dataclass(frozen=True)
class ShardPart:
    """One written shard file, before the driver gives it its final name.

    Attributes:
        split: the split of every record in the file.
        path: where it was written (inside the parts directory).
        num_records, num_bytes: records in the file and its size.
        order: sort key among the parts of its split, for the final numbering
            (the (source, line) of the first record, or the shard index).
        stats: the `DatasetStatsCombineFn` accumulator of its records (None
            for resharded files, whose statistics their input parts carry).
    """

    split: str
    path: str
    num_records: int
    num_bytes: int
    order: tuple = ()
    stats: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The file name, unique within the parts directory."""
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A record written to a part file, with what the dataset-level checks need.

    Attributes:
        id, source, line, label, offset: the record's id and `sources.origin`.
        split_field: the record's own `split` field (None if it had none), to
            re-serialize it exactly if it is rejected later.
        width: its feature count.
        truncated: whether `too_long=truncate` cut it.
        part, index: the name of the part file holding it (`ShardPart.name`)
            and its 0-based position there.

    One travels through the runner per record (`CandidateCoder` keeps it small).
    """

    id: str
    source: str
    line: int
    label: str
    split_field: str | None
    width: int
    truncated: bool
    part: str
    index: int
    offset: int | None = None


class CandidateCoder(beam.coders.Coder):
    """A `Candidate` as the plain tuple of its fields: half the bytes of pickling it.

    The runner holds every candidate of the data set once (grouped by id), so
    their size is the job's memory per record outside the workers.
    """

    def __init__(self):
        self._fields = beam.coders.FastPrimitivesCoder()

    def encode(self, value: Candidate) -> bytes:
        return self._fields.encode(tuple(getattr(value, f) for f in _CANDIDATE_FIELDS))

    def decode(self, encoded: bytes) -> Candidate:
        return Candidate(*self._fields.decode(encoded))

    def is_deterministic(self) -> bool:
        return True


_CANDIDATE_FIELDS = tuple(field.name for field in dataclasses.fields(Candidate))
beam.coders.registry.register_coder(Candidate, CandidateCoder)


@dataclasses.dataclass(frozen=True)
class Drop:
    """A written candidate that the dataset-level checks reject: reason and message."""

    candidate: Candidate
    reason: str
    message: str


def id_hash(sequence_id: str) -> int:
    """A stable 64-bit hash of an id, independent of the one used for splits."""
    return int.from_bytes(hashlib.sha256(sequence_id.encode("utf-8")).digest()[8:16], "big")


def num_shards_for(num_records: int, num_bytes: int, configured: int = 0) -> int:
    """Shards for a split: `configured` if > 0, else one per `TARGET_SHARD_BYTES`.

    Automatic sizing gives at least `MIN_SHARDS`; both are capped at one shard per
    record, and a split without records has 0 shards.
    """
    if num_records == 0:
        return 0
    wanted = configured or max(MIN_SHARDS, math.ceil(num_bytes / TARGET_SHARD_BYTES))
    return min(wanted, num_records)


def _compression_type(compression: str) -> str:
    return CompressionTypes.GZIP if compression == "gzip" else CompressionTypes.UNCOMPRESSED


def read_tfrecords(path: str, compression: str = "none"):
    """Yields the records of one TFRecord file (no TensorFlow needed)."""
    with FileSystems.open(path, compression_type=_compression_type(compression)) as stream:
        while (data := _TFRecordUtil.read_record(stream)) is not None:
            yield data


class PartWriter:
    """One shard file being written, with the statistics of what it holds.

    Records are TFRecord-framed with Beam's TFRecord codec (the format
    `WriteToTFRecord` writes; no TensorFlow import in the workers) through
    `FileSystems`, so the parts directory may be on any Beam filesystem.
    Statistics are accumulated in batches of `STATS_BATCH` records
    (`DatasetStatsCombineFn.add_inputs`). A part that receives records of
    several widths keeps no statistics (`stats` None): some of its records are
    then always rejected as `wrong_feature_count`, so `DropRejected` rewrites
    it and computes them anew.
    """

    STATS_BATCH = 256

    def __init__(self, parts_dir: str, split: str, compression: str, name: str = ""):
        self.split = split
        self.name = name or f"{split}-{uuid.uuid4().hex}"
        self.path = FileSystems.join(parts_dir, self.name)
        self._stream = FileSystems.create(self.path,
                                          compression_type=_compression_type(compression))
        self.num_records = 0
        self.record_bytes = 0
        self._order: tuple = ()
        self._width = 0
        self._stats_fn = DatasetStatsCombineFn()
        self._stats = self._stats_fn.create_accumulator()
        self._pending: list[tuple[str, Sequence]] = []

    def write(self, data: bytes, sequence: Sequence, order: tuple = ()) -> int:
        """Appends one encoded record; returns its index in the file."""
        _TFRecordUtil.write_record(self._stream, data)
        self._order = self._order or order
        self._width = self._width or sequence.num_features
        if sequence.num_features != self._width:
            self._stats, self._pending = None, []
        if self._stats is not None:
            self._pending.append((self.split, sequence))
            if len(self._pending) >= self.STATS_BATCH:
                self._flush_stats()
        self.num_records += 1
        self.record_bytes += _TFRecordUtil.encoded_num_bytes(data)
        return self.num_records - 1

    def _flush_stats(self) -> None:
        if self._stats is not None:
            self._stats = self._stats_fn.add_inputs(self._stats, self._pending)
        self._pending = []

    def close(self, order: tuple = ()) -> ShardPart:
        """Closes the file; the part that describes it."""
        self._stream.close()
        self._flush_stats()
        [metadata] = FileSystems.match([self.path])[0].metadata_list
        return ShardPart(split=self.split, path=self.path, num_records=self.num_records,
                         num_bytes=metadata.size_in_bytes, order=order or self._order,
                         stats=self._stats)


def _windowed(value):
    return GlobalWindows.windowed_value(value)


class _WriteCandidatesFn(beam.DoFn):
    """`Sequence | Rejection` -> part files; outputs parts, `Candidate`s and rejections.

    Each bundle keeps `MIN_SHARDS` part files open per split (a record's slot
    is its id hash), starts a new one when a file reaches
    `TARGET_SHARD_BYTES`, and closes them all when the bundle ends.
    """

    def __init__(self, parts_dir: str, train_fraction: float, val_fraction: float,
                 compression: str):
        self._parts_dir = parts_dir
        self._fractions = (train_fraction, val_fraction)
        self._compression = compression

    def start_bundle(self):
        self._open: dict[tuple[str, int], PartWriter] = {}

    def process(self, result: Sequence | Rejection):
        if isinstance(result, Rejection):
            _count(f"rejected_{result.reason}")
            yield beam.pvalue.TaggedOutput(REJECTS, result)
            return
        split = sources.assign_split(result, *self._fractions)
        slot = split, id_hash(result.id) % MIN_SHARDS
        writer = self._open.get(slot) or self._open.setdefault(
            slot, PartWriter(self._parts_dir, split, self._compression))
        data = records.encode_sequence(result.id, result.steps, result.label)
        index = writer.write(data, result, order=sources.origin(result)[:3])
        yield beam.pvalue.TaggedOutput(CANDIDATES, Candidate(
            id=result.id, source=result.source, line=result.line, label=result.label,
            split_field=result.split, width=result.num_features,
            truncated=bool(result.truncated_from), part=writer.name, index=index,
            offset=result.offset))
        if writer.record_bytes >= TARGET_SHARD_BYTES:
            yield self._open.pop(slot).close()

    def finish_bundle(self):
        for writer in self._open.values():
            yield _windowed(writer.close())
        self._open = {}


class WriteCandidates(beam.PTransform):
    """`Sequence | Rejection` -> (parts, candidates, rejects), in one pass over the data.

    Every sequence is assigned its split (`sources.assign_split`), encoded
    (`records.encode_sequence`) and written to a part file by the worker that
    parsed it, so the records never travel between workers or through the
    runner; only a small `Candidate` per record does, for the dataset-level
    checks (`CheckDataset`). Part files stay in `parts_dir` until the driver
    renames them: a candidate that those checks reject is removed by
    `DropRejected`, before anything looks finished.
    """

    def __init__(self, parts_dir: str, train_fraction: float, val_fraction: float,
                 compression: str = "none"):
        super().__init__()
        self._args = (parts_dir, train_fraction, val_fraction, compression)

    def expand(self, results):
        outputs = results | "write_parts" >> beam.ParDo(
            _WriteCandidatesFn(*self._args)).with_outputs(CANDIDATES, REJECTS, main="parts")
        return outputs.parts, outputs[CANDIDATES], outputs[REJECTS]


def _width(candidate: Candidate) -> int:
    return candidate.width


def _by_id(candidate: Candidate):
    return candidate.id, candidate


class _JudgeCopiesFn(beam.DoFn):
    """(id, candidates) -> kept candidates; `(part, Drop)` for the rejected copies."""

    def process(self, element, num_features: int):
        sequence_id, copies = element
        copies = list(copies)
        verdicts = sources.dataset_verdicts(
            sequence_id, [(sources.origin(c), c.width) for c in copies], num_features)
        for candidate, verdict in zip(copies, verdicts, strict=True):
            if verdict is None:
                yield candidate
            else:
                yield beam.pvalue.TaggedOutput(DROPS, (candidate.part,
                                                       Drop(candidate, *verdict)))


class CheckDataset(beam.PTransform):
    """candidates -> (kept candidates, (part, Drop) pairs, num_features singleton).

    The dataset-level checks, on `Candidate`s only (never the steps): the
    feature count is `sources.dataset_feature_count` of all widths (the most
    common one), and `sources.dataset_verdicts` judges the copies of each id
    (other widths are `wrong_feature_count`; of duplicated ids the copy with
    the smallest origin is kept).
    """

    def expand(self, candidates):
        num_features = (candidates
                        | "widths" >> beam.Map(_width)
                        | "count_widths" >> beam.CombineGlobally(CounterCombineFn())
                        | "most_common_width" >> beam.Map(sources.dataset_feature_count))
        judged = (candidates
                  | "key_by_id" >> beam.Map(_by_id).with_output_types(tuple[str, Candidate])
                  | "group_copies" >> beam.GroupByKey()
                  | "judge_copies" >> beam.ParDo(
                      _JudgeCopiesFn(), beam.pvalue.AsSingleton(num_features))
                  .with_outputs(DROPS, main="kept"))
        return judged.kept, judged[DROPS], num_features


class _DropRejectedFn(beam.DoFn):
    """Rewrites a part without its dropped records; rejections for those.

    A part without drops passes unchanged (the common case: no file is read
    twice). The rewritten file gets a new name, so a retried bundle never
    reads a half-rewritten file.
    """

    def __init__(self, parts_dir: str, compression: str):
        self._parts_dir = parts_dir
        self._compression = compression

    def process(self, part: ShardPart, drops_by_part, num_features: int):
        drops = {drop.candidate.index: drop for drop in drops_by_part[part.name]}
        if not drops:
            if part.stats is None:
                raise RuntimeError(f"{part.path}: records of several widths, none rejected")
            _count("written", part.num_records)
            yield part
            return
        writer = PartWriter(self._parts_dir, part.split, self._compression)
        for index, data in enumerate(read_tfrecords(part.path, self._compression)):
            drop = drops.get(index)
            decoded = records.decode_sequence(
                data, drop.candidate.width if drop else num_features)
            if drop is None:
                writer.write(data, Sequence(id=decoded["id"], steps=decoded["steps"],
                                            label=decoded["label"]))
                continue
            _count(f"rejected_{drop.reason}")
            c = drop.candidate
            sequence = Sequence(id=c.id, steps=decoded["steps"], label=c.label,
                                split=c.split_field, source=c.source, line=c.line,
                                offset=c.offset)
            yield beam.pvalue.TaggedOutput(
                REJECTS, sources.reject_sequence(sequence, drop.reason, drop.message))
        _count("written", writer.num_records)
        final = writer.close(order=part.order)
        if final.num_records:
            yield final


class DropRejected(beam.PTransform):
    """(parts, (part, Drop) pairs, num_features) -> (final parts, rejects).

    Removes the candidates that the dataset-level checks rejected from their
    part files (rewriting only the parts that hold one) and turns them into
    rejections with their re-serialized record.
    """

    def __init__(self, parts_dir: str, compression: str = "none"):
        super().__init__()
        self._parts_dir = parts_dir
        self._compression = compression

    def expand(self, pcolls):
        parts, drops, num_features = pcolls
        outputs = parts | "rewrite_parts" >> beam.ParDo(
            _DropRejectedFn(self._parts_dir, self._compression),
            beam.pvalue.AsMultiMap(drops), beam.pvalue.AsSingleton(num_features),
        ).with_outputs(REJECTS, main="parts")
        return outputs.parts, outputs[REJECTS]


def _split_records(part: ShardPart):
    return part.split, (part.num_records, part.num_bytes)


def _shard_count(element, configured: int):
    split, (num_records, num_bytes) = element
    return split, num_shards_for(num_records, num_bytes, configured)


def _record_id(data: bytes) -> str:
    from tensorflow.core.example import example_pb2

    feature = example_pb2.Example.FromString(data).features.feature
    return feature[records.ID_KEY].bytes_list.value[0].decode()


class _ReadPartFn(beam.DoFn):
    """A part -> ((split, shard), (id, record)) for each of its records."""

    def __init__(self, compression: str):
        self._compression = compression

    def process(self, part: ShardPart, shard_counts: Mapping[str, int]):
        for data in read_tfrecords(part.path, self._compression):
            sequence_id = _record_id(data)
            yield (part.split, id_hash(sequence_id) % shard_counts[part.split]), (
                sequence_id, data)


class _WriteShardFn(beam.DoFn):
    """Writes one shard's records, in hashed-id order, to `parts_dir`."""

    def __init__(self, parts_dir: str, compression: str):
        self._parts_dir = parts_dir
        self._compression = compression

    def process(self, element):
        (split, index), entries = element
        stream = FileSystems.create(FileSystems.join(self._parts_dir, f"{split}-{index:05d}"),
                                    compression_type=_compression_type(self._compression))
        entries = sorted(entries, key=lambda entry: (id_hash(entry[0]), entry[0]))
        for _, data in entries:
            _TFRecordUtil.write_record(stream, data)
        stream.close()
        path = FileSystems.join(self._parts_dir, f"{split}-{index:05d}")
        [metadata] = FileSystems.match([path])[0].metadata_list
        yield ShardPart(split=split, path=path, num_records=len(entries),
                        num_bytes=metadata.size_in_bytes, order=(index,))


class Reshard(beam.PTransform):
    """parts -> exactly `num_shards` shards per split (at most one per record).

    The deterministic mode (`num_shards > 0`): each record goes to the shard
    given by a hash of its id and each shard is written in hashed-id order,
    so a re-run writes byte-identical files whatever the runner's bundling.
    It costs a shuffle of every record through the runner; the default
    (`num_shards == 0`) keeps the parts the workers wrote.
    """

    def __init__(self, parts_dir: str, num_shards: int, compression: str = "none"):
        super().__init__()
        self._parts_dir = parts_dir
        self._num_shards = num_shards
        self._compression = compression

    def expand(self, parts):
        shard_counts = (parts
                        | "split_sizes" >> beam.Map(_split_records)
                        | "sum_split_sizes" >> beam.CombinePerKey(SumTuplesCombineFn())
                        | "shards_per_split" >> beam.Map(_shard_count, self._num_shards))
        return (parts
                | "read_parts" >> beam.ParDo(_ReadPartFn(self._compression),
                                             beam.pvalue.AsDict(shard_counts))
                | "group_shards" >> beam.GroupByKey()
                | "write_shard_files" >> beam.ParDo(
                    _WriteShardFn(self._parts_dir, self._compression)))


class WriteRejects(beam.PTransform):
    """Rejections -> JSON lines under `file_prefix`*.jsonl."""

    def __init__(self, file_prefix: str):
        super().__init__()
        self._file_prefix = file_prefix

    def expand(self, rejects):
        return (rejects
                | "to_json" >> beam.Map(Rejection.to_json)
                | "write_jsonl" >> beam.io.WriteToText(self._file_prefix,
                                                       file_name_suffix=".jsonl"))


# ---------------------------------------------------------------- counts and statistics


class CounterCombineFn(beam.CombineFn):
    """Counts hashable elements: -> dict {element: count} (empty on no input)."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, accumulator, element):
        accumulator[element] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = Counter()
        for accumulator in accumulators:
            merged.update(accumulator)
        return merged

    def extract_output(self, accumulator):
        return dict(accumulator)


class SumTuplesCombineFn(beam.CombineFn):
    """Element-wise sum of equal-length int tuples."""

    def create_accumulator(self):
        return ()

    def add_input(self, accumulator, element):
        return self.merge_accumulators([accumulator, element])

    def merge_accumulators(self, accumulators):
        accumulators = [a for a in accumulators if a]
        return tuple(map(sum, zip(*accumulators, strict=True))) if accumulators else ()

    def extract_output(self, accumulator):
        return accumulator


Moments = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def moments_of(steps: np.ndarray) -> Moments:
    """(count, mean, M2, min, max) per feature of `[length, F]` steps, in float64."""
    values = np.asarray(steps, dtype=np.float64)
    mean = values.mean(axis=0)
    return (values.shape[0], mean, ((values - mean) ** 2).sum(axis=0),
            values.min(axis=0), values.max(axis=0))


def merge_moments(a: Moments | None, b: Moments | None) -> Moments | None:
    """Chan et al.'s parallel merge of two `moments_of` results (None is empty)."""
    if a is None or b is None:
        return a if b is None else b
    n_a, mean_a, m2_a, min_a, max_a = a
    n_b, mean_b, m2_b, min_b, max_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return (n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n),
            np.minimum(min_a, min_b), np.maximum(max_a, max_b))


class FeatureMomentsCombineFn(beam.CombineFn):
    """Steps arrays -> per-feature {num_timesteps, mean, std, min, max} over all timesteps.

    `std` is the population standard deviation (ddof=0, as `np.std`). With no
    input the statistics are None and `num_timesteps` is 0.
    """

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, steps):
        return merge_moments(accumulator, moments_of(steps))

    def merge_accumulators(self, accumulators):
        merged = None
        for accumulator in accumulators:
            merged = merge_moments(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        if accumulator is None:
            return {"num_timesteps": 0, "mean": None, "std": None, "min": None, "max": None}
        n, mean, m2, low, high = accumulator
        return {"num_timesteps": int(n), "mean": mean.tolist(),
                "std": np.sqrt(m2 / n).tolist(), "min": low.tolist(), "max": high.tolist()}


def _pairs(counter: Mapping[Any, int]) -> list[list[Any]]:
    """A dict with non-string keys as a sorted JSON-friendly list of [key, value]."""
    return sorted([key, value] for key, value in counter.items())


class DatasetStatsCombineFn(beam.CombineFn):
    """(split, sequence) -> every dataset statistic in one pass (see `ComputeStats`).

    The accumulator is O(distinct lengths + labels + features), never O(records):
    lengths are counted exactly per value, features merged as moments.
    """

    def __init__(self):
        self._moments = FeatureMomentsCombineFn()

    def create_accumulator(self):
        return {}, Counter(), None, Counter()

    def add_input(self, accumulator, element):
        return self.add_inputs(accumulator, [element])

    def add_inputs(self, accumulator, elements):
        """Adds many (split, sequence) at once: one moments update for all train steps."""
        sizes, lengths, moments, labels = accumulator
        train_steps = []
        for split, sequence in elements:
            num_records, num_timesteps = sizes.get(split, (0, 0))
            sizes[split] = (num_records + 1, num_timesteps + sequence.length)
            lengths[sequence.length] += 1
            if split == "train":
                train_steps.append(sequence.steps)
            if sequence.label:
                labels[sequence.label] += 1
        if train_steps:
            moments = merge_moments(moments, moments_of(np.concatenate(train_steps)))
        return sizes, lengths, moments, labels

    def merge_accumulators(self, accumulators):
        sizes, lengths, moments, labels = self.create_accumulator()
        for part_sizes, part_lengths, part_moments, part_labels in accumulators:
            for split, (num_records, num_timesteps) in part_sizes.items():
                total = sizes.get(split, (0, 0))
                sizes[split] = (total[0] + num_records, total[1] + num_timesteps)
            lengths.update(part_lengths)
            moments = merge_moments(moments, part_moments)
            labels.update(part_labels)
        return sizes, lengths, moments, labels

    def extract_output(self, accumulator):
        sizes, lengths, moments, labels = accumulator
        return {"split_sizes": sorted(sizes.items()), "length_counts": _pairs(lengths),
                "feature_moments": self._moments.extract_output(moments),
                "label_counts": _pairs(labels)}


STATS = ("split_sizes", "length_counts", "feature_moments", "label_counts")


def _pick(stats: Mapping[str, Any], name: str):
    return stats[name]


class MergeStatsCombineFn(DatasetStatsCombineFn):
    """`DatasetStatsCombineFn` accumulators (one per part) -> the dataset statistics."""

    def add_input(self, accumulator, other):
        return self.merge_accumulators([accumulator, other])

    def add_inputs(self, accumulator, others):
        return self.merge_accumulators([accumulator, *others])


def _part_stats(part: ShardPart):
    return part.stats


class ComputeStats(beam.PTransform):
    """parts -> {name: singleton PCollection} of the dataset statistics.

    `split_sizes`: [(split, (num_records, num_timesteps))]; `length_counts`:
    [[length, n]] over every written record (exact: lengths are few distinct
    ints); `feature_moments`: `FeatureMomentsCombineFn` on the train split only;
    `label_counts`: [[label, n]] of labeled records. Each part carries the
    `DatasetStatsCombineFn` accumulator of its records (computed while it was
    written, in one pass), so this only merges one accumulator per part.
    """

    def expand(self, parts):
        stats = (parts
                 | "part_stats" >> beam.Map(_part_stats)
                 | "merge_stats" >> beam.CombineGlobally(MergeStatsCombineFn()))
        return {name: stats | f"pick_{name}" >> beam.Map(_pick, name) for name in STATS}


def _read_key(result: Sequence | Rejection):
    return "read", result.source, ""


def _written_key(candidate: Candidate):
    return "written", candidate.source, ""


def _truncated_key(candidate: Candidate):
    return "truncated", candidate.source, ""


def _is_truncated(candidate: Candidate) -> bool:
    return candidate.truncated


def _rejected_key(rejection: Rejection):
    return "rejected", rejection.source, rejection.reason


class CountRecords(beam.PTransform):
    """(read results, written `Candidate`s, rejects) -> [[kind, source, reason, n]].

    `kind` is `read`, `written`, `truncated` or `rejected` (with its reason).
    """

    def expand(self, pcolls):
        read, written, rejects = pcolls
        keys = (
            read | "read_keys" >> beam.Map(_read_key),
            written | "written_keys" >> beam.Map(_written_key),
            written | "truncated_only" >> beam.Filter(_is_truncated)
            | "truncated_keys" >> beam.Map(_truncated_key),
            rejects | "rejected_keys" >> beam.Map(_rejected_key),
        )
        return (keys
                | "all_keys" >> beam.Flatten()
                | "count_keys" >> beam.CombineGlobally(CounterCombineFn())
                | "count_rows" >> beam.Map(_count_rows))


def _count_rows(counter: Mapping[tuple[str, str, str], int]) -> list[list[Any]]:
    return sorted([*key, n] for key, n in counter.items())


def shard_part_dict(part: ShardPart) -> dict[str, Any]:
    """A part as JSON for the driver (without its statistics)."""
    return {field.name: getattr(part, field.name)
            for field in dataclasses.fields(part) if field.name != "stats"}


class WriteSummary(beam.PTransform):
    """{name: PCollection} -> one JSON object file at `path` (for the driver).

    Each PCollection is a singleton (its one value is stored) or, for the
    names in `list_names`, a list of values. Counts and statistics travel as
    data, not as runner metrics, so the driver reads them the same way on
    every runner. One write step with the values as side inputs (no
    combine stages: each stage costs a round trip to the workers).
    """

    def __init__(self, path: str, list_names: tuple[str, ...] = ()):
        super().__init__()
        self._path = path
        self._list_names = list_names

    def expand(self, pcolls: Mapping[str, Any]):
        values = {name: beam.pvalue.AsList(pcoll) if name in self._list_names
                  else beam.pvalue.AsSingleton(pcoll) for name, pcoll in pcolls.items()}
        pipeline = next(iter(pcolls.values())).pipeline
        return (pipeline
                | "start" >> beam.Create([self._path])
                | "write_json" >> beam.Map(_write_summary, **values))


def _write_summary(path: str, **values) -> str:
    return _write_json(values, path)


def _write_json(value: Any, path: str) -> str:
    """Writes one JSON document (whole: a retry overwrites it); returns the path."""
    with FileSystems.create(path, mime_type="application/json") as stream:
        stream.write(json.dumps(value, sort_keys=True).encode("utf-8"))
    return path


# ---------------------------------------------------------------- statistics (pure)


def _sorted_counts(length_counts: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array(sorted(length_counts), dtype=np.int64)
    counts = np.array([length_counts[v] for v in values], dtype=np.int64)
    return values, counts


def exact_quantile(length_counts: Mapping[int, int], q: float) -> float:
    """`np.quantile(lengths, q)` (linear interpolation) from {length: count}."""
    values, counts = _sorted_counts(length_counts)
    ends = np.cumsum(counts)
    position = q * (ends[-1] - 1)
    low, high = math.floor(position), math.ceil(position)
    value_low = values[np.searchsorted(ends, low, side="right")]
    value_high = values[np.searchsorted(ends, high, side="right")]
    return float(value_low + (value_high - value_low) * (position - low))


def length_histogram(length_counts: Mapping[int, int],
                     bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Integer-edged histogram: bin i counts lengths in [edges[i], edges[i+1])."""
    if not length_counts:
        return {"edges": [], "counts": []}
    values, counts = _sorted_counts(length_counts)
    low, high = int(values[0]), int(values[-1]) + 1
    edges = np.unique(np.round(np.linspace(low, high, min(bins, high - low) + 1)).astype(int))
    hist, _ = np.histogram(values, bins=edges, weights=counts)
    return {"edges": edges.tolist(), "counts": hist.astype(int).tolist()}


def length_stats(length_counts: Mapping[int, int]) -> dict[str, Any]:
    """min, max, mean, quantiles (`LENGTH_QUANTILES`) and histogram of the lengths."""
    if not length_counts:
        return {"min": None, "max": None, "mean": None,
                "quantiles": {str(q): None for q in LENGTH_QUANTILES},
                "histogram": length_histogram({})}
    values, counts = _sorted_counts(length_counts)
    return {
        "min": int(values[0]),
        "max": int(values[-1]),
        "mean": float((values * counts).sum() / counts.sum()),
        "quantiles": {str(q): exact_quantile(length_counts, q) for q in LENGTH_QUANTILES},
        "histogram": length_histogram(length_counts),
    }
