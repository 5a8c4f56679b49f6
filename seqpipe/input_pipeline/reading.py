"""Reading a split: shard listing, the one shard reader, the one record parser, normalization.

Every batch of `seqpipe.input_pipeline` (training, evaluation, embedding)
comes through these functions:

* `split_source` takes a split's shards from `metadata.json` (the files it
  lists, never a directory listing: stray files are not read) and checks
  that each exists with its listed size;
* `read_records` reads them as `(shard path, serialized record)` pairs: this
  input pipeline's share, in a fixed or a shuffled order;
* `parse_window` parses many serialized records with one
  `tf.io.parse_example` call into their concatenated steps (normalized with
  one op) and where each record starts. Records stay serialized strings until
  then: no per-record tensors after the read.

Errors
------

A corrupt or truncated shard raises `tf.errors.InvalidArgumentError` whose
message names the shard path and the byte offset where readable records end
(TensorFlow's own `DataLossError` does not name the file). With
`skip_corrupt=True` the rest of a corrupt shard is skipped (TFRecord cannot
resynchronize after a bad record), a warning naming it is printed to stderr,
and records that fail to parse are dropped with
`ignore_errors(log_warning=True)`. A record whose length does not match its
values fails naming the record and its shard. A directory without
`metadata.json`, with an unknown schema version, without shards for the
split, or with a listed shard missing or of another size than listed raises
`records.DatasetError` naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, times
from seqpipe.dataset.metadata import DatasetMetadata, FeatureStats, TimeDeltaStats

logger = logging.getLogger(__name__)

# Bytes of TFRecord framing around each record: length (8), length CRC (4), data CRC (4).
_RECORD_OVERHEAD = 16
# Parallel shard readers; fixed (not AUTOTUNE, which is the core count) so that
# the record order is the same on every machine, which record sharding needs.
_MAX_CYCLE_LENGTH = 16
# Records of one shard whose sizes are added up together (truncation check).
_CHECK_CHUNK = 256
# Records parsed per `tf.io.parse_example` call by `parse_records` (vectorized parsing).
_PARSE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """The shards of one split and what reading them needs.

    Attributes:
        data_dir: the dataset directory.
        split: the split's name.
        metadata: the directory's checked metadata.
        files: the split's shard paths, in the order the metadata lists them.
        sizes: their sizes in bytes.
    """

    data_dir: str
    split: str
    metadata: DatasetMetadata
    files: tuple[str, ...]
    sizes: tuple[int, ...] = ()

    @property
    def num_features(self) -> int:
        return self.metadata.num_features

    @property
    def compression(self) -> str:
        """`none` or `gzip`."""
        return self.metadata.compression


def split_source(data_dir: str | Path, split: str,
                 metadata: DatasetMetadata | None = None) -> SplitSource:
    """The checked metadata and shard paths of a split.

    Args:
        data_dir: the dataset directory.
        split: the split's name.
        metadata: the directory's metadata if already read (else `metadata.read`).

    Raises:
        records.DatasetError: no or incompatible metadata, an unknown
            compression, no shards for the split, or a listed shard missing
            or of another size than listed (`metadata.check_files`).
    """
    if metadata is None:
        metadata = metadata_lib.read(data_dir)
    if metadata.compression not in ("none", "gzip"):
        raise records.DatasetError(f"{data_dir}: unknown compression "
                                   f"{metadata.compression!r}")
    listed = metadata.split(split).files
    if not listed:
        known = sorted(name for name in metadata.splits if metadata.split(name).files)
        raise records.DatasetError(f"{data_dir}: no shards for split {split!r} "
                                   f"({records.METADATA_FILE} lists shards for {known})")
    sizes = metadata_lib.check_files(data_dir, metadata, listed)
    return SplitSource(str(data_dir), split, metadata,
                       tuple(metadata_lib.listed_path(data_dir, name) for name in listed),
                       tuple(sizes[name] for name in listed))


def read_records(source: SplitSource, *, skip_corrupt: bool = False,
                 num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                 shuffle_buffer: int = 0,
                 seed: int | tf.Tensor | None = None) -> tf.data.Dataset:
    """`(shard path, serialized record)` pairs of this input pipeline's share of a split.

    Shards are read `_MAX_CYCLE_LENGTH` at a time, a record from each in turn,
    and every shard is checked to the last byte (`_read_shard`). The parallel
    reads keep their order, so the records are a pure function of the files
    and the seed.

    Args:
        source: the split.
        skip_corrupt: skip unreadable shard tails and records that fail to
            parse, with a warning, instead of failing.
        num_input_pipelines, input_pipeline_id: read the `input_pipeline_id`-th
            of `num_input_pipelines` disjoint parts: whole shards when there
            are at least as many shards as pipelines, else every
            `num_input_pipelines`-th record (a warning is logged; every
            pipeline then reads every shard).
        shuffle_buffer: 0 reads in a fixed order (shard file order, records
            interleaved); > 0 shuffles the shard order and the records (this
            buffer size, a new order on every iteration).
        seed: the shuffle seed (an int or a scalar int64 tensor).
    """
    files = list(source.files)
    shard_files = num_input_pipelines > 1 and len(files) >= num_input_pipelines
    if num_input_pipelines > 1 and not shard_files:
        logger.warning(
            "%s split %r has %d shard(s) for %d input pipelines: sharding by record, so "
            "every pipeline reads every shard; write at least %d shards to shard by file",
            source.data_dir, source.split, len(files), num_input_pipelines,
            num_input_pipelines)
    expected = np.array([_expected_bytes(f, size, source.compression)
                         for f, size in zip(files, source.sizes, strict=True)], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((files, expected))
    if shard_files:
        ds = ds.shard(num_input_pipelines, input_pipeline_id)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    compression = source.metadata.tf_compression_type
    ds = ds.interleave(
        lambda path, size: _read_shard(path, size, compression, skip_corrupt),
        cycle_length=min(len(files), _MAX_CYCLE_LENGTH),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE)
    if num_input_pipelines > 1 and not shard_files:
        ds = ds.shard(num_input_pipelines, input_pipeline_id)
    if shuffle_buffer:  # shuffle the serialized records: cheaper to move than parsed ones
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if skip_corrupt:  # drop records that fail to parse, one at a time, before batching
        num_features = source.num_features
        ds = ds.map(lambda path, serialized: _checked_record(path, serialized, num_features),
                    num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True)
    return ds


def _expected_bytes(path: str, size: int, compression: str) -> int:
    """The decompressed size of a shard of `size` bytes; its records must account for
    every byte.

    For gzip this is the trailer's ISIZE (size mod 2**32, of the last gzip
    member: a shard written as several gzip members would be reported corrupt).
    """
    if compression != "gzip":
        return size
    if size < 4:
        return -1
    with tf.io.gfile.GFile(path, "rb") as f:
        f.seek(size - 4)
        return int.from_bytes(f.read(4), "little")


def _read_shard(path: tf.Tensor, expected: tf.Tensor, compression: str,
                skip_corrupt: bool) -> tf.data.Dataset:
    """`(path, record)` pairs of one shard; fails naming `path` if it is unreadable.

    TensorFlow's reader raises `DataLossError` without the file name. So the
    reader's errors are swallowed (it stops at the first unreadable record)
    and an empty sentinel chunk after the last record checks that the records
    read account for every byte of the file (`batch` never yields an empty
    chunk, and the sentinel unbatches to nothing).
    """
    raw = tf.data.TFRecordDataset(path, compression_type=compression)
    raw = raw.ignore_errors(log_warning=skip_corrupt)
    # Checked a chunk at a time: a per-record `scan` costs more than parsing.
    chunks = raw.batch(_CHECK_CHUNK).concatenate(
        tf.data.Dataset.from_tensors(tf.constant([], tf.string)))
    modulus = tf.constant(2**32 if compression else 2**62, tf.int64)

    def check(total, chunk):
        at_end = tf.equal(tf.size(chunk), 0)
        complete = tf.logical_or(tf.logical_not(at_end),
                                 tf.equal(tf.math.floormod(total, modulus), expected))
        message = tf.strings.join([
            "seqpipe: shard ", path, " is corrupt or truncated: readable records end at ",
            "decompressed byte " if compression else "byte ", tf.strings.as_string(total),
            "; the gzip trailer says " if compression else " of ",
            tf.strings.as_string(expected)])
        if skip_corrupt:
            checked = tf.cond(
                complete, tf.no_op,
                lambda: tf.print("WARNING:", message, "; skipped the rest of it",
                                 output_stream=sys.stderr))
        else:
            checked = tf.debugging.Assert(complete, [message])
        size = (tf.reduce_sum(tf.cast(tf.strings.length(chunk), tf.int64))
                + _RECORD_OVERHEAD * tf.size(chunk, out_type=tf.int64))
        with tf.control_dependencies([checked]):
            return total + size, (tf.fill(tf.shape(chunk), path), tf.identity(chunk))

    return chunks.scan(tf.constant(0, tf.int64), check).unbatch()


def parse_window(paths, serialized, num_features: int,
                 normalization: tuple[np.ndarray, np.ndarray] | None,
                 fill: str | None = None,
                 time_delta: tuple[float, float] | None = None) -> dict[str, tf.Tensor]:
    """Serialized records -> their steps, concatenated, and where each starts.

    Args:
        paths: string [N], the shard of each record (for error messages).
        serialized: string [N], the records.
        num_features: F.
        normalization: `(mean, std)` float32 [F] (`normalization_arrays`), or
            None for the raw values.
        fill: None: steps as stored (complete data); `zero` or `forward`: the
            missing entries (NaN in the record) are filled after
            normalization (`fill_missing`) and `observed` is returned too.
        time_delta: None: the records' times are not read; `(log_mean,
            log_std)` (`time_normalization`): `time_delta` is returned too,
            each step's normalized time gap (`time_delta_feature`).

    Returns:
        `steps` float32 [sum of lengths, F], `start` int64 [N] (the row of
        `steps` where record i starts), `length` int32 [N], `id` and `label`
        string [N]; with `fill`, `observed` float32 [sum of lengths, F] (1.0
        observed, 0.0 missing) and `steps` without NaN; with `time_delta`,
        `time_delta` float32 [sum of lengths]. Fails naming the first
        inconsistent record and its shard (a record without times counts as
        inconsistent when `time_delta` is asked for).
    """
    ragged = tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)
    spec = {**records.tf_feature_spec(num_features), records.STEPS_KEY: ragged}
    if time_delta is not None:
        spec[records.TIME_DELTA_KEY] = ragged
    parsed = tf.io.parse_example(serialized, spec)
    values = parsed[records.STEPS_KEY]
    length = tf.cast(parsed[records.LENGTH_KEY], tf.int32)
    checks = [_check_counts(paths, parsed, length, values, num_features, "features")]
    if time_delta is not None:
        checks.append(_check_counts(paths, parsed, length, parsed[records.TIME_DELTA_KEY], 1,
                                    "time delta"))
    with tf.control_dependencies(checks):
        steps = tf.reshape(values.flat_values, [-1, num_features])
        start = values.row_starts() // num_features
    window = {"steps": normalize(steps, normalization), "start": start, "length": length,
              "id": parsed[records.ID_KEY], "label": parsed[records.LABEL_KEY]}
    if time_delta is not None:
        with tf.control_dependencies(checks):
            window["time_delta"] = time_delta_feature(
                parsed[records.TIME_DELTA_KEY].flat_values, tf.repeat(start, length),
                time_delta)
    if fill is not None:
        observed = tf.logical_not(tf.math.is_nan(window["steps"]))
        window["steps"] = fill_missing(window["steps"], observed,
                                       tf.repeat(start, length), fill)
        window["observed"] = tf.cast(observed, tf.float32)
    return window


def _check_counts(paths, parsed, length, values, per_step: int, what: str):
    """An assertion that every record has `per_step` values of `values` per step."""
    num_values = tf.cast(values.row_lengths(), tf.int32)
    consistent = tf.logical_and(tf.equal(num_values, length * per_step), length >= 1)
    bad = tf.argmin(tf.cast(consistent, tf.int32))
    return tf.debugging.Assert(tf.reduce_all(consistent), [
        "seqpipe: record", tf.gather(parsed[records.ID_KEY], bad), "in", tf.gather(paths, bad),
        "has length", tf.gather(length, bad), "but", tf.gather(num_values, bad), "values for",
        per_step, what])


def time_delta_feature(deltas: tf.Tensor, row_start: tf.Tensor,
                       normalization: tuple[float, float]) -> tf.Tensor:
    """The normalized time-delta input feature of concatenated sequences.

    Args:
        deltas: float32 [N], the stored gaps of several sequences one after
            the other (`records`: 0 at each sequence's first step).
        row_start: int64 [N], the row where each row's sequence starts.
        normalization: `(log_mean, log_std)` of the train intervals
            (`time_normalization`).

    Returns:
        float32 [N]: `(log(max(delta, MIN_DELTA)) - log_mean) / log_std`, and
        exactly 0.0 at each sequence's first step (no interval there; 0 is a
        typical interval). `seqpipe.dataset.times` says why the log.
    """
    log_mean, log_std = normalization
    logs = tf.math.log(tf.maximum(tf.cast(deltas, tf.float64), times.MIN_DELTA))
    feature = tf.cast((logs - log_mean) / log_std, tf.float32)
    first = tf.equal(tf.range(tf.size(deltas, out_type=tf.int64)), row_start)
    return tf.where(first, 0.0, feature)


def time_normalization(stats: TimeDeltaStats | None) -> tuple[float, float]:
    """`(log_mean, log_std)` from a dataset's `time_stats`: (0, 1) when the train
    split has no interval, a std of 0 becomes 1."""
    if stats is None or stats.log_mean is None:
        return 0.0, 1.0
    return float(stats.log_mean), float(stats.log_std) if stats.log_std else 1.0


def fill_missing(steps: tf.Tensor, observed: tf.Tensor, row_start: tf.Tensor,
                 fill: str) -> tf.Tensor:
    """Concatenated sequences with their missing entries filled (no NaN left).

    Args:
        steps: float32 [N, F], the rows of several sequences one after the other.
        observed: bool [N, F], False where an entry is missing.
        row_start: int64 [N], the row where each row's sequence starts.
        fill: `zero`: a missing entry becomes 0.0; `forward`: the last observed
            value of its feature at or before it in its own sequence, 0.0
            before the sequence's first observation of that feature.

    Example: one sequence `[[1, nan], [nan, nan], [3, 4]]` fills to
    `[[1, 0], [0, 0], [3, 4]]` (`zero`) or `[[1, 0], [1, 0], [3, 4]]` (`forward`).
    """
    if fill == "zero":
        return tf.where(observed, steps, 0.0)
    num_rows = tf.shape(steps, out_type=tf.int64)[0]
    num_features = tf.shape(steps, out_type=tf.int64)[1]
    rows = tf.broadcast_to(tf.range(num_rows)[:, tf.newaxis], tf.shape(steps, tf.int64))
    features = tf.broadcast_to(tf.range(num_features)[tf.newaxis, :], tf.shape(rows, tf.int64))
    # The k-th observation of feature f is the one row with `seen == k` that is
    # observed; every row with `seen == k` carries it forward. One segment per (k, f).
    seen = tf.cumsum(tf.cast(observed, tf.int64), axis=0)
    segment = seen * num_features + features
    last_row = tf.math.unsorted_segment_max(tf.where(observed, rows, -1), segment,
                                            (num_rows + 1) * num_features)
    last = tf.gather(last_row, segment)
    carried = last >= row_start[:, tf.newaxis]  # an observation earlier in the same sequence
    index = tf.where(carried, last, 0) * num_features + features
    values = tf.gather(tf.reshape(steps, [-1]), index)
    return tf.where(observed, steps, tf.where(carried, values, 0.0))


def parse_records(pairs: tf.data.Dataset, num_features: int,
                  normalization: tuple[np.ndarray, np.ndarray] | None,
                  fill: str | None = None,
                  time_delta: tuple[float, float] | None = None) -> tf.data.Dataset:
    """`(path, record)` pairs -> one dict per record: `x` [L, F] (ragged), `length`,
    `id`, `label` (and `observed` [L, F] with `fill`, `time_delta` [L] with
    `time_delta`); parsed `_PARSE_BATCH` at a time by `parse_window`."""
    def records_of(window):
        lengths = tf.cast(window["length"], tf.int64)
        record = {"length": window["length"], "id": window["id"], "label": window["label"]}
        for key, name in (("steps", "x"), ("observed", "observed"),
                          ("time_delta", "time_delta")):
            if key in window:
                record[name] = tf.RaggedTensor.from_row_lengths(window[key], lengths,
                                                                validate=False)
        return record

    windows = pairs.batch(_PARSE_BATCH).map(
        lambda paths, serialized: parse_window(paths, serialized, num_features, normalization,
                                               fill, time_delta),
        num_parallel_calls=tf.data.AUTOTUNE)
    return windows.map(records_of, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _checked_record(path, serialized, num_features):
    """`(path, serialized)` unchanged if the record parses and is consistent; else fails."""
    window = parse_window(path[None], serialized[None], num_features, None)
    with tf.control_dependencies([window["steps"]]):
        return tf.identity(path), tf.identity(serialized)


def normalization_arrays(stats: FeatureStats,
                         num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, std)` float32 arrays from a dataset's `feature_stats`; a std of 0 becomes 1.

    A feature never observed in the train split (None mean and std) is left as
    it is: mean 0, std 1.

    Raises:
        records.DatasetError: `stats` lacks `mean`/`std` of `num_features` values.
    """
    mean, std = stats.mean, stats.std
    if mean is None or std is None or len(mean) != num_features or len(std) != num_features:
        raise records.DatasetError(
            f"normalize needs feature_stats.mean and .std of length {num_features} in the "
            f"metadata; Received: mean={mean!r}, std={std!r}")
    std = np.array([1.0 if value is None else value for value in std], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return np.array([0.0 if value is None else value for value in mean], np.float32), std


def normalize(steps, normalization: tuple[np.ndarray, np.ndarray] | None):
    """`(steps - mean) / std` of float32 steps `[..., F]` (a tensor or an array);
    `normalization` None returns them unchanged."""
    if normalization is None:
        return steps
    mean, std = normalization
    return (steps - mean) / std
