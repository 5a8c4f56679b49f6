"""The PTransforms of the preprocessing job, one per concern.

    file paths ──read_jsonl | read_csv | read_parquet──▶ Sequence | Rejection  (one per
      record, parsed and length-checked) ──route_rejections──▶ Sequence
      ──check_feature_count──▶ ──drop_duplicate_ids──▶ Sequence
      ──assign_splits──▶ (split, Sequence) ──write_shards──▶ ShardPart per shard file
    rejections of every stage ──write_rejects──▶ rejects/*.jsonl
    read / written / rejected ──count_records──▶ counts;  ──compute_stats──▶ stats

Per-record logic lives in `seqpipe.sources` (pure, tested without Beam); this
module wires it into Beam, counts every rejection with a Beam counter
(`seqpipe/rejected_<reason>`) and aggregates statistics with CombineFns whose
merges are exact or numerically stable (Chan et al.'s parallel variance).

Readers: `ReadJsonLines` (one record a line), `ReadCsvLong` and
`ReadParquetLong` (long format, one row per timestep, both ending in
`AssembleLongRows`). A new input format is one more reader PTransform that turns file paths into
`Sequence | Rejection` elements, one per input record, checked on their own
(a long-format reader groups rows by id with a GroupByKey, sorts them by time,
then applies `sources.check_length`); everything downstream is shared.

Shards are written by `WriteShards`, not `WriteToTFRecord`: the shard count is
sized from the data's actual byte count (known only inside the pipeline), each
record goes to the shard given by a hash of its id, and each shard's records
are written in a fixed (hashed-id) order, so a re-run writes identical files.
Shard files land in a parts directory; the driver renames them to their TFDS
names once it knows how many are non-empty.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from seqpipe import records, sources
from seqpipe.sources import Rejection, Sequence

METRICS_NAMESPACE = "seqpipe"
REJECTS = "rejects"

# Automatic shard count: one shard per TARGET_SHARD_BYTES of encoded records,
# at least MIN_SHARDS (parallel reads by a few workers) and at most one per record.
TARGET_SHARD_BYTES = 64 * 2**20
MIN_SHARDS = 2
HISTOGRAM_BINS = 20
LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(METRICS_NAMESPACE, name).inc(n)


# ---------------------------------------------------------------- reading


class _ReadJsonLinesFn(beam.DoFn):
    """Reads one (optionally compressed) JSONL file; validates every non-blank line."""

    def __init__(self, min_length: int, max_length: int, too_long: str):
        self._limits = {"min_length": min_length, "max_length": max_length,
                        "too_long": too_long}

    def process(self, path: str):
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
            for number, data in enumerate(iter(stream.readline, b""), start=1):
                if not data.strip():
                    continue
                _count("read")
                result = sources.validate_json_line(data.rstrip(b"\r\n"), path, number,
                                                    **self._limits)
                if isinstance(result, Sequence) and result.truncated_from:
                    _count("truncated")
                yield result


class ReadJsonLines(beam.PTransform):
    """File paths -> one `Sequence | Rejection` per non-blank line (`validate_json_line`).

    Each file is read whole by one worker (gzip files cannot be split anyway),
    which gives exact line numbers; the dataset-level checks downstream
    redistribute the records.
    Every reader yields records checked on their own (parsing, length limits);
    the dataset-level checks come after.
    """

    def __init__(self, min_length: int = 1, max_length: int = 0, too_long: str = "reject"):
        super().__init__()
        self._limits = (min_length, max_length, too_long)

    def expand(self, paths):
        return paths | "read_and_validate_lines" >> beam.ParDo(_ReadJsonLinesFn(*self._limits))


class _ReadCsvRowsFn(beam.DoFn):
    """Reads one (optionally compressed) long-format CSV file: a `Row | Rejection` per row."""

    def __init__(self, fmt: sources.LongFormat):
        self._fmt = fmt

    def process(self, path: str):
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
            lines = (data.decode("utf-8", errors="replace")
                     for data in iter(stream.readline, b""))
            reader = csv.reader(lines)
            header = [column.strip() for column in next(reader, [])]
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
                | "spread_row_groups" >> beam.Reshuffle()
                | "read_row_groups" >> beam.ParDo(_ReadRowGroupFn(self._fmt))
                | "assemble_rows" >> AssembleLongRows(*self._limits))


# ---------------------------------------------------------------- validation


class _SplitRejectionsFn(beam.DoFn):
    """Passes sequences on; routes rejections to the `rejects` output and counts them."""

    def process(self, result: Sequence | Rejection):
        if isinstance(result, Rejection):
            _count(f"rejected_{result.reason}")
            yield beam.pvalue.TaggedOutput(REJECTS, result)
        else:
            yield result


def _split_rejections(results, label: str):
    """(sequences, rejects) of a PCollection of `Sequence | Rejection`."""
    outputs = results | label >> beam.ParDo(_SplitRejectionsFn()).with_outputs(
        REJECTS, main="sequences")
    return outputs.sequences, outputs[REJECTS]


class RouteRejections(beam.PTransform):
    """`Sequence | Rejection` -> (sequences, rejects), counting each rejection by reason."""

    def expand(self, results):
        return _split_rejections(results, "route_rejects")


def _width(sequence: Sequence) -> int:
    return sequence.num_features


class CheckFeatureCount(beam.PTransform):
    """sequences -> (sequences, rejects, num_features singleton).

    The dataset's feature count is `sources.dataset_feature_count` of all widths
    (the most common one); other widths are rejected as `wrong_feature_count`.
    """

    def expand(self, sequences):
        num_features = (sequences
                        | "widths" >> beam.Map(_width)
                        | "count_widths" >> beam.CombineGlobally(CounterCombineFn())
                        | "most_common_width" >> beam.Map(sources.dataset_feature_count))
        checked = sequences | "compare_width" >> beam.Map(
            sources.check_feature_count, beam.pvalue.AsSingleton(num_features))
        kept, rejects = _split_rejections(checked, "route_rejects")
        return kept, rejects, num_features


def _id_origin(sequence: Sequence):
    return sequence.id, sources.origin(sequence)


class FirstOriginCombineFn(beam.CombineFn):
    """Origins of one id -> (number of copies, smallest origin)."""

    def create_accumulator(self):
        return 0, None

    def add_input(self, accumulator, element):
        return self.merge_accumulators([accumulator, (1, element)])

    def merge_accumulators(self, accumulators):
        count, first = 0, None
        for n, candidate in accumulators:
            count += n
            if candidate is not None and (first is None or candidate < first):
                first = candidate
        return count, first

    def extract_output(self, accumulator):
        return accumulator


def _is_duplicated(element) -> bool:
    return element[1][0] > 1


def _kept_origin(element):
    sequence_id, (_, first) = element
    return sequence_id, first


def _check_duplicate(sequence: Sequence, kept: Mapping[str, tuple]):
    return sources.check_duplicate(sequence, kept.get(sequence.id))


class DropDuplicateIds(beam.PTransform):
    """sequences -> (sequences, rejects): one record per id (`sources.check_duplicate`).

    Only (id, origin) pairs are grouped, never the sequences: the ids that
    occur more than once, with the origin to keep, reach every worker as a
    side input (small unless the data is mostly duplicates).
    """

    def expand(self, sequences):
        kept = (sequences
                | "id_origins" >> beam.Map(_id_origin)
                | "first_origin_per_id" >> beam.CombinePerKey(FirstOriginCombineFn())
                | "duplicated_only" >> beam.Filter(_is_duplicated)
                | "kept_origins" >> beam.Map(_kept_origin))
        checked = sequences | "keep_first_copy" >> beam.Map(
            _check_duplicate, beam.pvalue.AsDict(kept))
        return _split_rejections(checked, "route_rejects")


def _with_split(sequence: Sequence, train_fraction: float, val_fraction: float):
    return sources.assign_split(sequence, train_fraction, val_fraction), sequence


class AssignSplits(beam.PTransform):
    """sequences -> (split, sequence): the record's split field, else a hash of its id."""

    def __init__(self, train_fraction: float, val_fraction: float):
        super().__init__()
        self._fractions = (train_fraction, val_fraction)

    def expand(self, sequences):
        return sequences | "split_of_record" >> beam.Map(_with_split, *self._fractions)


# ---------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class ShardPart:
    """One written shard file, before the driver gives it its final name."""

    split: str
    index: int
    path: str
    num_records: int
    num_bytes: int


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


def _encode(element):
    split, sequence = element
    return split, sequence.id, records.encode_sequence(sequence.id, sequence.steps,
                                                       sequence.label)


def _split_size(element):
    split, _, data = element
    return split, (1, len(data))


def _shard_count(element, configured: int):
    split, (num_records, num_bytes) = element
    return split, num_shards_for(num_records, num_bytes, configured)


def _assign_shard(element, shard_counts: Mapping[str, int]):
    split, sequence_id, data = element
    return (split, id_hash(sequence_id) % shard_counts[split]), (sequence_id, data)


class _WriteShardFn(beam.DoFn):
    """Writes one shard's records, in hashed-id order, to `parts_dir`."""

    def __init__(self, parts_dir: str, compression: str):
        self._parts_dir = parts_dir
        self._compression = compression

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        self._options = tf.io.TFRecordOptions(
            compression_type="GZIP" if self._compression == "gzip" else "")

    def process(self, element):
        (split, index), entries = element
        entries = sorted(entries, key=lambda entry: (id_hash(entry[0]), entry[0]))
        path = os.path.join(self._parts_dir, f"{split}-{index:05d}")
        with self._tf.io.TFRecordWriter(path, options=self._options) as writer:
            for _, data in entries:
                writer.write(data)
        _count("written", len(entries))
        yield ShardPart(split=split, index=index, path=path, num_records=len(entries),
                        num_bytes=self._tf.io.gfile.stat(path).length)


class WriteShards(beam.PTransform):
    """(split, sequence) -> `ShardPart` per written file (TFRecords of `encode_sequence`)."""

    def __init__(self, parts_dir: str, num_shards: int = 0, compression: str = "none"):
        super().__init__()
        self._parts_dir = parts_dir
        self._num_shards = num_shards
        self._compression = compression

    def expand(self, keyed_sequences):
        encoded = keyed_sequences | "encode" >> beam.Map(_encode)
        shard_counts = (encoded
                        | "split_sizes" >> beam.Map(_split_size)
                        | "sum_split_sizes" >> beam.CombinePerKey(SumTuplesCombineFn())
                        | "shards_per_split" >> beam.Map(_shard_count, self._num_shards))
        return (encoded
                | "assign_shards" >> beam.Map(_assign_shard,
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
        split, sequence = element
        sizes, lengths, moments, labels = accumulator
        num_records, num_timesteps = sizes.get(split, (0, 0))
        sizes[split] = (num_records + 1, num_timesteps + sequence.length)
        lengths[sequence.length] += 1
        if split == "train":
            moments = self._moments.add_input(moments, sequence.steps)
        if sequence.label:
            labels[sequence.label] += 1
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


class ComputeStats(beam.PTransform):
    """(split, sequence) -> {name: singleton PCollection} of the dataset statistics.

    `split_sizes`: [(split, (num_records, num_timesteps))]; `length_counts`:
    [[length, n]] over every written record (exact: lengths are few distinct
    ints); `feature_moments`: `FeatureMomentsCombineFn` on the train split only;
    `label_counts`: [[label, n]] of labeled records. One combiner computes them
    all (`DatasetStatsCombineFn`): one pass, partial results per bundle.
    """

    def expand(self, keyed):
        stats = keyed | "combine_stats" >> beam.CombineGlobally(DatasetStatsCombineFn())
        return {name: stats | f"pick_{name}" >> beam.Map(_pick, name) for name in STATS}


def _read_key(result: Sequence | Rejection):
    return "read", result.source, ""


def _written_key(element):
    return "written", element[1].source, ""


def _truncated_key(element):
    return "truncated", element[1].source, ""


def _is_truncated(element) -> bool:
    return bool(element[1].truncated_from)


def _rejected_key(rejection: Rejection):
    return "rejected", rejection.source, rejection.reason


class CountRecords(beam.PTransform):
    """(read results, written (split, sequence), rejects) -> [[kind, source, reason, n]].

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


def _named(value, name: str):
    return name, value


def _shard_part_dict(part: ShardPart) -> dict[str, Any]:
    return dataclasses.asdict(part)


class WriteSummary(beam.PTransform):
    """{name: singleton PCollection} -> one JSON object file at `path` (for the driver).

    Counts and statistics travel as data, not as runner metrics, so the driver
    reads them the same way on every runner.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, singletons: Mapping[str, Any]):
        named = [pcoll | f"name_{name}" >> beam.Map(_named, name)
                 for name, pcoll in singletons.items()]
        return (named
                | "merge_entries" >> beam.Flatten()
                | "to_dict" >> beam.combiners.ToDict()
                | "to_json" >> beam.Map(json.dumps, sort_keys=True)
                | "write_json" >> beam.io.WriteToText(self._path, num_shards=1,
                                                      shard_name_template=""))


class CollectShardParts(beam.PTransform):
    """`ShardPart`s -> one list of dicts."""

    def expand(self, parts):
        return (parts
                | "to_dicts" >> beam.Map(_shard_part_dict)
                | "collect" >> beam.combiners.ToList())


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
