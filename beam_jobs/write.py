"""Writing: part files in one pass, the rewrite after the dataset checks, shards, rejects.

    Sequence | Rejection ──write_candidates──▶ part files (written by the worker
        that read the record: split assigned, record encoded), each with a log
        of its records' `Candidate`s + a `Candidate` stream + rejects
    parts + drops ──drop_rejected──▶ final parts (only the few parts holding a
        record that `beam_jobs.validate.CheckDataset` rejected are rewritten)
        [──reshard──▶ exactly `num_shards` per split]
    rejections of every stage ──write_rejects──▶ rejects/*.jsonl
    {name: PCollection} ──write_summary──▶ one JSON file for the driver

Why one pass: with the records themselves flowing from stage to stage, every
dataset-level check (it needs all records before any can be written) made the
DirectRunner hold and re-send the whole data set through its single runner
process, which then bounded both speed and memory. Now the candidates are
only combined where they are written (`beam_jobs.validate.CheckDataset`) and
per-part summaries travel; the statistics of
each part are accumulated while it is written. Part files are TFRecords
framed with Beam's TFRecord codec and `records.encode_sequence`'s
hand-written protobuf, so workers never import TensorFlow, and hashed
(SHA-256) as they are written (`HashedFile`). The driver moves the final
parts to their TFDS shard names (`beam_jobs.commit`).

Shards (`num_shards` 0, the default): the part files the workers wrote, at
most `TARGET_SHARD_BYTES` (64 MiB) of records each; every bundle splits each
split over `MIN_SHARDS` (2) parts by id hash, so a split has at least 2
shards unless it has 1 record, and more with more workers or data. The same
inputs and runner settings give byte-identical shards (inputs are spread over
the workers in a fixed order, `beam_jobs.read.Spread`); another worker count
gives the same records per split in other files. With `num_shards` N > 0,
`Reshard` writes exactly N per split (at most one per record), each record in
the shard given by a hash of its id, in hashed-id order: byte-identical on
every runner and worker count, at the cost of one shuffle of all records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.statistics import DatasetStatsCombineFn, SumTuplesCombineFn
from beam_jobs.validate import (
    CANDIDATE_FIELDS,
    REJECTS,
    Candidate,
    Drop,
    count,
    count_rejected,
    id_hash,
)
from seqpipe.dataset import records, sources, times
from seqpipe.dataset.sources import Rejection, Sequence

CANDIDATES = "candidates"
CANDIDATE_LOG_SUFFIX = ".candidates"
# Automatic shard count: one shard per TARGET_SHARD_BYTES of encoded records,
# at least MIN_SHARDS (parallel reads by a few workers) and at most one per record.
TARGET_SHARD_BYTES = 64 * 2**20
MIN_SHARDS = 2


@dataclasses.dataclass(frozen=True)
class ShardPart:
    """One written shard file, before the driver gives it its final name.

    Attributes:
        split: the split of every record in the file.
        path: where it was written (inside the parts directory, any Beam file system).
        num_records, num_bytes: records in the file and its size.
        sha256: the SHA-256 (hex) of the file's bytes, computed while writing.
        order: sort key among the parts of its split, for the final numbering
            (the (source, line) of the first record, or the shard index).
        stats: the `statistics.DatasetStatsCombineFn` accumulator of its records (None
            for resharded files, whose statistics their input parts carry).
        width: the feature count of its records; 0 when they have several
            layouts (widths, or with and without times).
        timed: whether its records have times (when `width` is not 0).
        candidate_log: the path of its records' `Candidate`s, one JSON list of
            their fields a line ("" when none were logged).
    """

    split: str
    path: str
    num_records: int
    num_bytes: int
    sha256: str | None = None
    order: tuple = ()
    stats: Any = dataclasses.field(default=None, compare=False, repr=False)
    width: int = 0
    candidate_log: str = ""
    timed: bool = False

    @property
    def layout(self) -> sources.Layout:
        """`(width, timed)` of its records; width 0 when they have several layouts."""
        return self.width, self.timed

    @property
    def name(self) -> str:
        """The file name, unique within the parts directory."""
        return self.path.rsplit("/", 1)[-1]



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


class HashedFile:
    """A new file on any Beam file system that hashes its bytes as they are written.

    The SHA-256 is of the bytes in the file (after compression), as the
    dataset's `metadata.json` lists it, so nothing is read back to hash it.
    Write records to `stream` (compressed when `compression` is "gzip").
    """

    mode = "wb"  # `CompressedFile` checks the mode of the file it wraps

    def __init__(self, path: str, compression: str = "none"):
        self.path = path
        self._file = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._sha256 = hashlib.sha256()
        self._size = 0
        self.stream = (CompressedFile(self, _compression_type(compression))
                       if compression == "gzip" else self)

    def write(self, data: bytes) -> None:
        self._sha256.update(data)
        self._size += len(data)
        self._file.write(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def finish(self) -> tuple[int, str]:
        """Closes the file; its size and SHA-256 (hex)."""
        self.stream.close()
        return self._size, self._sha256.hexdigest()


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
    several layouts (widths, or with and without times: `sources.Layout`)
    keeps no statistics (`stats` None): some of its records are then always
    rejected (`wrong_feature_count`, `mixed_times`), so `DropRejected`
    rewrites it and computes them anew.
    """

    STATS_BATCH = 256

    def __init__(self, parts_dir: str, split: str, compression: str, name: str = ""):
        self.split = split
        self.name = name or f"{split}-{uuid.uuid4().hex}"
        self.path = FileSystems.join(parts_dir, self.name)
        self._file = HashedFile(self.path, compression)
        self._stream = self._file.stream
        self.num_records = 0
        self.record_bytes = 0
        self._order: tuple = ()
        self._layout: sources.Layout | None = None
        self._stats_fn = DatasetStatsCombineFn()
        self._stats = self._stats_fn.create_accumulator()
        self._pending: list[tuple[str, Sequence]] = []
        self._mixed_widths = False
        self._candidate_log = None

    def write(self, data: bytes, sequence: Sequence, order: tuple = ()) -> int:
        """Appends one encoded record; returns its index in the file."""
        _TFRecordUtil.write_record(self._stream, data)
        self._order = self._order or order
        self._layout = self._layout or sources.layout_of(sequence)
        if sources.layout_of(sequence) != self._layout:
            self._stats, self._pending, self._mixed_widths = None, [], True
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

    def log_candidate(self, candidate: Candidate) -> None:
        """Appends the candidate of a record written here to the part's candidate log
        (`PATH.candidates` beside the part, created with the first one)."""
        if self._candidate_log is None:
            self._candidate_log = FileSystems.create(self.path + CANDIDATE_LOG_SUFFIX)
        fields = [getattr(candidate, name) for name in CANDIDATE_FIELDS]
        self._candidate_log.write(json.dumps(fields).encode("utf-8") + b"\n")

    def close(self, order: tuple = ()) -> ShardPart:
        """Closes the file (and its candidate log); the part that describes it."""
        num_bytes, sha256 = self._file.finish()
        self._flush_stats()
        log = ""
        if self._candidate_log is not None:
            self._candidate_log.close()
            log = self.path + CANDIDATE_LOG_SUFFIX
        width, timed = self._layout or (0, False)
        return ShardPart(split=self.split, path=self.path, num_records=self.num_records,
                         num_bytes=num_bytes, sha256=sha256, order=order or self._order,
                         stats=self._stats, width=0 if self._mixed_widths else width,
                         candidate_log=log, timed=timed and not self._mixed_widths)


def read_candidate_log(part: ShardPart):
    """The `Candidate`s `PartWriter.log_candidate` logged for `part`, in write order."""
    if not part.candidate_log:
        return
    with FileSystems.open(part.candidate_log) as log:
        for line in log:
            yield Candidate(*json.loads(line))


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
            yield beam.pvalue.TaggedOutput(REJECTS, count_rejected(result))
            return
        split = sources.assign_split(result, *self._fractions)
        slot = split, id_hash(result.id) % MIN_SHARDS
        writer = self._open.get(slot) or self._open.setdefault(
            slot, PartWriter(self._parts_dir, split, self._compression))
        data = records.encode_sequence(result.id, result.steps, result.label,
                                       result.time_delta)
        index = writer.write(data, result, order=sources.origin(result)[:3])
        candidate = Candidate(
            id=result.id, source=result.source, line=result.line, label=result.label,
            split_field=result.split, width=result.num_features,
            truncated=bool(result.truncated_from), part=writer.name, index=index,
            offset=result.offset, timed=result.has_times)
        writer.log_candidate(candidate)
        yield beam.pvalue.TaggedOutput(CANDIDATES, candidate)
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
    checks (`validate.CheckDataset`). Part files stay in `parts_dir` until the driver
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


class _DropRejectedFn(beam.DoFn):
    """Rewrites a part without its dropped records; rejections for those.

    A part without drops passes unchanged (the common case: no file is read
    twice). The rewritten file gets a new name, so a retried bundle never
    reads a half-rewritten file.
    """

    def __init__(self, parts_dir: str, compression: str, time_key: str):
        self._parts_dir = parts_dir
        self._compression = compression
        self._time_key = time_key

    def process(self, part: ShardPart, drops_by_part, num_features: int):
        drops = {drop.candidate.index: drop for drop in drops_by_part[part.name]}
        if not drops:
            if part.stats is None:
                raise RuntimeError(f"{part.path}: records of several layouts, none rejected")
            count("written", part.num_records)
            yield part
            return
        writer = PartWriter(self._parts_dir, part.split, self._compression)
        for index, data in enumerate(read_tfrecords(part.path, self._compression)):
            drop = drops.get(index)
            if drop is None:
                decoded = records.decode_sequence(data, num_features)
                writer.write(data, Sequence(id=decoded["id"], steps=decoded["steps"],
                                            label=decoded["label"],
                                            time_delta=decoded["time_delta"]))
            else:
                yield beam.pvalue.TaggedOutput(REJECTS, count_rejected(
                    _rejection(drop, data, self._time_key)))
        count("written", writer.num_records)
        final = writer.close(order=part.order)
        if final.num_records:
            yield final


def _rejection(drop: Drop, data: bytes, time_key: str) -> Rejection:
    """The rejection of a dropped record: its candidate's fields and its encoded steps
    (times under `time_key`)."""
    c = drop.candidate
    decoded = records.decode_sequence(data, c.width)
    sequence = Sequence(id=c.id, steps=decoded["steps"], label=c.label, split=c.split_field,
                        source=c.source, line=c.line, offset=c.offset,
                        time_delta=decoded["time_delta"])
    return sources.reject_sequence(sequence, drop.reason, drop.message, time_key)


class DropRejected(beam.PTransform):
    """(parts, (part, Drop) pairs, num_features) -> (final parts, rejects).

    Removes the candidates that the dataset-level checks rejected from their
    part files (rewriting only the parts that hold one) and turns them into
    rejections with their re-serialized record (times under `time_key`, the
    job's `preprocess.json_time_key`).
    """

    def __init__(self, parts_dir: str, compression: str = "none",
                 time_key: str = times.DEFAULT_JSON_TIME_KEY):
        super().__init__()
        self._parts_dir = parts_dir
        self._compression = compression
        self._time_key = time_key

    def expand(self, pcolls):
        parts, drops, num_features = pcolls
        outputs = parts | "rewrite_parts" >> beam.ParDo(
            _DropRejectedFn(self._parts_dir, self._compression, self._time_key),
            beam.pvalue.AsMultiMap(drops), beam.pvalue.AsSingleton(num_features),
        ).with_outputs(REJECTS, main="parts")
        return outputs.parts, outputs[REJECTS]


def _split_records(part: ShardPart):
    return part.split, (part.num_records, part.num_bytes)


def _shard_count(element, configured: int):
    split, (num_records, num_bytes) = element
    return split, num_shards_for(num_records, num_bytes, configured)


class _ReadPartFn(beam.DoFn):
    """A part -> ((split, shard), (id, record)) for each of its records."""

    def __init__(self, compression: str):
        self._compression = compression

    def setup(self):
        # The only TensorFlow import of the workers, and only when resharding.
        from tensorflow.core.example import example_pb2

        self._example = example_pb2.Example

    def process(self, part: ShardPart, shard_counts: Mapping[str, int]):
        for data in read_tfrecords(part.path, self._compression):
            sequence_id = self._record_id(data)
            yield (part.split, id_hash(sequence_id) % shard_counts[part.split]), (
                sequence_id, data)

    def _record_id(self, data: bytes) -> str:
        feature = self._example.FromString(data).features.feature
        return feature[records.ID_KEY].bytes_list.value[0].decode()


class _WriteShardFn(beam.DoFn):
    """Writes one shard's records, in hashed-id order, to `parts_dir`."""

    def __init__(self, parts_dir: str, compression: str):
        self._parts_dir = parts_dir
        self._compression = compression

    def process(self, element):
        (split, index), entries = element
        shard = HashedFile(FileSystems.join(self._parts_dir, f"{split}-{index:05d}"),
                           self._compression)
        entries = sorted(entries, key=lambda entry: (id_hash(entry[0]), entry[0]))
        for _, data in entries:
            _TFRecordUtil.write_record(shard.stream, data)
        num_bytes, sha256 = shard.finish()
        yield ShardPart(split=split, path=shard.path, num_records=len(entries),
                        num_bytes=num_bytes, sha256=sha256, order=(index,))


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

