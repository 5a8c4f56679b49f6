"""The tf.data input pipeline: TFRecord shards -> bucketed, padded, mask-weighted batches.

The element contract
--------------------

`make_dataset` yields Keras `(inputs, targets, sample_weight)` triples:

    inputs   {"x":    float32 [B, T, F]   normalized steps, right-padded with 0.0
              "mask": float32 [B, T]}     1.0 on real steps, 0.0 on padding
    targets  float32 [B, T, F]            == x, or each sequence reversed within
                                          its own length (`reverse_target`)
    weights  float32 [B, T]               == inputs["mask"], exactly

With `with_keys=True` (embedding, evaluation) `inputs` also carries

              "id":     string [B]        the record ids
              "label":  string [B]        the labels (b"" when unlabeled)
              "length": int32  [B]        real steps per sequence == mask.sum(1)

The mask comes from each record's `length` field, never from `x == 0`: a
genuine all-zero timestep is real data and has weight 1.0. Padding is on the
right (real steps first, as cuDNN wants it), and padded values of `x` and of
the target are 0.0. `T` differs from batch to batch (length bucketing); `F`
is static. `B` is the per-replica batch size and varies with `T` (see
Batching); no record is ever dropped.

A literal example: F=2, normalize off, two sequences in one batch,
`a = [[1, 2], [0, 0], [3, 4]]` (length 3, with a genuine all-zero step) and
`b = [[5, 6]]` (length 1), padded to T=3:

    inputs["x"]    = [[[1, 2], [0, 0], [3, 4]],
                      [[5, 6], [0, 0], [0, 0]]]
    inputs["mask"] = [[1, 1, 1],
                      [1, 0, 0]]
    targets        = inputs["x"]                      # reverse_target=False
                   = [[[3, 4], [0, 0], [1, 2]],       # reverse_target=True
                      [[5, 6], [0, 0], [0, 0]]]
    weights        = inputs["mask"]

Batching (`DataConfig.batching`)
--------------------------------

`sorted_window` (default; fairseq/tensor2tensor style): the shuffled record
stream is cut into windows of `sort_window` records; each window is sorted by
length (stable) and cut into batches in that order; the batches are shuffled.
A batch holds `batch_size` records, or with a `timestep_budget`
`min(batch_size, max(1, budget // T))` (-1 = `batch_size x length_stats.mean`;
the default 0 means no budget: on CPU a recurrent step costs about the same at
B=16 as at B=32, so capping B for long T only adds steps), and is padded to
its longest record (`length_grid` 0, the default) or to the first value of
`buckets.length_grid(length_stats.max, length_grid)` whose full batch of the
next records fits. With `min_batch_efficiency` (default 0.9) a batch ends
early, before the first record that would leave less than that fraction of
it real (with a grid, padded to the record's grid length): sorted records
are dense except in sparse tails (the few longest, the very shortest), where
32 records can span 150..356 steps. So a batch is full unless it is a
window's last or was cut for efficiency; with a grid and no floor, batches
have at most `len(grid)` distinct shapes `(B(T), T)` plus one per window (87
for lengths up to 356 with 16 per doubling: what `train.jit_compile` needs),
and with a budget `B x T <= budget` except for a single sequence longer than
the budget. Sequences longer than the grid (custom metadata) pad to their
batch's longest. Seed-shaped data (`benchmarks/padding_efficiency.py`):
padding efficiency 0.98 (uniform) and 0.96 (long-tailed) with the defaults,
0.98 and 0.94 without the floor, 0.96 and 0.93 on a 16-per-doubling grid.

`buckets`: records are grouped by length as they stream by, with boundaries
`b_0 < b_1 < ... < b_{n-1}` (`DataConfig.bucket_boundaries`, else
`num_buckets` boundaries minimizing padding for the metadata's length
histogram, else the metadata's `bucket_boundaries`): bucket `i` holds lengths
in `(b_{i-1}, b_i]` and a final *overflow* bucket holds lengths `> b_{n-1}`
(empty when the last boundary is the longest length, as the metadata's is;
with custom boundaries it keeps longer sequences instead of dropping them or
failing, as `tf.data.Dataset.bucket_by_sequence_length(pad_to_bucket_boundary=True)`
would). Each bucket's batch size is `batch_size`, or with a `timestep_budget`
`min(batch_size, max(1, budget // bucket_upper_length))`. With
`pad_to_bucket_boundary` every batch of bucket `i` has `T = b_i` exactly (at
most n + 1 distinct `T`, the overflow bucket padding to its batch maximum);
otherwise each batch is padded to its own longest sequence. The last batch
of every bucket may be smaller.

`pad_to_max` disables both and pads every batch to the dataset's longest
length (`length_stats.max`): the naive recipe, kept for benchmarks.
`padding_efficiency` measures the difference.

Cost: records stay serialized strings until they are parsed many at a time
with one `tf.io.parse_example` call (`sorted_window`: a whole window, which is
then sorted and cut without a per-record op; the other modes: `_PARSE_BATCH`
at a time); normalization is one op on the parsed steps; the mask, the
weights and the reversed target are made once per padded batch
(`tf.sequence_mask`, `tf.reverse_sequence`), never per record.

`inference_batches` yields the same element contract (with keys) for a
one-pass, fixed-order read of a split (embedding), window by window from
traced functions, without building a `tf.data` pipeline per call.

Order, shuffling, distribution
------------------------------

`training=True` shuffles records (buffer `shuffle_buffer`, seed `seed`, a
new order every iteration), file order and (sorted windows) batch order,
unless `deterministic`; there is no `repeat`: iterate the dataset once per
epoch. `training=False` reads in a fixed order (sorted windows: ascending
length within each window). Bucketed batches come out grouped by bucket as
they fill. Either way the parallel reads and maps keep their order, so the
batches of a dataset's first iteration are a pure function of the data and
the seed: the trainer seeds epoch `e` with `seed + e` and a run resumed
mid-epoch skips exactly the batches it had trained.

`DataConfig.batch_size` and `timestep_budget` are GLOBAL (summed over
replicas). With an `input_context` (`strategy.distribute_datasets_from_function`)
each input pipeline batches `input_context.get_per_replica_batch_size(batch_size)`
records, or uses a budget of `timestep_budget // num_replicas_in_sync`, and
reads a disjoint part of the data: whole shards when there are at least
`num_input_pipelines` shards, else every `num_input_pipelines`-th record (a
warning is logged; every pipeline then reads all shards). Pipelines may yield
different numbers of batches: bucketing makes per-worker batch counts uneven.

Errors
------

A corrupt or truncated shard raises `tf.errors.InvalidArgumentError` whose
message names the shard path and the byte offset where readable records end
(TensorFlow's own `DataLossError` does not name the file). With
`skip_corrupt=True` the rest of a corrupt shard is skipped (TFRecord cannot
resynchronize after a bad record), a warning naming it is printed to stderr,
and records that fail to parse are dropped with
`ignore_errors(log_warning=True)`. A directory without `metadata.json`, with
an unknown schema version, or without shards for the split raises
`records.DatasetError`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from seqpipe.config import DataConfig
from seqpipe.dataset import records
from seqpipe.input_pipeline import buckets as length_buckets

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

# Bytes of TFRecord framing around each record: length (8), length CRC (4), data CRC (4).
_RECORD_OVERHEAD = 16
# Parallel shard readers; fixed (not AUTOTUNE, which is the core count) so that
# the record order is the same on every machine, which record sharding needs.
_MAX_CYCLE_LENGTH = 16
# Records parsed per `tf.io.parse_example` call (vectorized parsing).
_PARSE_BATCH = 256
# Records of one shard whose sizes are added up together (truncation check).
_CHECK_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One length bucket of one input pipeline.

    Attributes:
        max_length: the longest length the bucket holds (its upper boundary),
            or None for the overflow bucket (everything longer than the last
            boundary).
        pad_length: the T every batch is padded to, or None for "the batch's
            longest sequence".
        batch_size: records per batch (per replica).
    """

    max_length: int | None
    pad_length: int | None
    batch_size: int


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How one input pipeline cuts sorted windows into batches.

    Attributes:
        window: records sorted together.
        grid: the lengths T a batch is padded to (increasing); a batch longer
            than the last one is padded to its own longest sequence.
        batch_sizes: records in a full batch padded to `grid[i]`.
        min_efficiency: a batch ends before a record that would leave less
            than this fraction of it real (0: off).
    """

    window: int
    grid: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    min_efficiency: float = 0.0

    def cutter(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        """`lengths [N] -> (order [num_batches, max_size], pad [num_batches])` of a
        window, for use inside a traced function (see `_window_cuts`)."""
        grid = tf.constant(self.grid, tf.int32)
        sizes = tf.constant(self.batch_sizes, tf.int32)
        if len(set(self.batch_sizes)) == 1 and not self.min_efficiency:
            return lambda lengths: _fixed_size_cuts(lengths, grid, sizes)
        return lambda lengths: _window_cuts(lengths, grid, sizes, self.min_efficiency)


def make_dataset(
    data_dir: str | Path,
    split: str,
    cfg: DataConfig,
    *,
    training: bool,
    metadata: Mapping[str, Any] | None = None,
    with_keys: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    skip_corrupt: bool = False,
    normalization: Mapping[str, Any] | None = None,
    seed: int | tf.Tensor | None = None,
) -> tf.data.Dataset:
    """The batched `(inputs, targets, weights)` dataset of one split.

    Args:
        data_dir: a dataset directory written by `seqpipe preprocess`.
        split: `train`, `val` or `test`.
        cfg: the data config; `batch_size` and `timestep_budget` are global.
        training: shuffle (unless `cfg.deterministic`); else a fixed order.
            No repeat either way: iterate once per epoch.
        metadata: the directory's metadata if already read.
        with_keys: add `id`, `label` and `length` to the inputs dict.
        input_context: from `strategy.distribute_datasets_from_function`; this
            pipeline then reads its share and batches per replica.
        skip_corrupt: skip unreadable shard tails and unparseable records
            with a warning instead of failing.
        normalization: `feature_stats` (`mean`, `std`) to normalize with
            instead of this dataset's own; embedding new data passes those of
            the data the model was trained on.
        seed: the shuffle seed, `cfg.seed` if None. May be a scalar int64
            tensor: called inside a `tf.function` with the seed as its
            argument, this builds every epoch's dataset from one trace
            (`seqpipe.training.trainer` does that).

    Returns:
        A dataset following the element contract in this module's docstring.

    Raises:
        records.DatasetError: missing or incompatible metadata, no shards for
            the split, or metadata lacking what `cfg` needs.
    """
    metadata, num_features, files, compression = _split_source(data_dir, split, metadata)
    ordered = not training or cfg.deterministic
    seed = cfg.seed if seed is None else seed

    num_pipelines, pipeline_id = 1, 0
    replicas = 1
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    if num_pipelines > 1 and not shard_files:
        logger.warning(
            "%s split %r has %d shard(s) for %d input pipelines: sharding by record, so "
            "every pipeline reads every shard; write at least %d shards to shard by file",
            data_dir, split, len(files), num_pipelines, num_pipelines)

    ds = tf.data.Dataset.from_tensor_slices(
        (files, np.array([_expected_bytes(f, compression) for f in files], np.int64)))
    if shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)
    if not ordered:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    tf_compression = records.tf_compression_type(metadata)
    ds = ds.interleave(
        lambda path, size: _read_shard(path, size, tf_compression, skip_corrupt),
        cycle_length=min(len(files), _MAX_CYCLE_LENGTH),
        block_length=1,
        num_parallel_calls=AUTOTUNE)
    if num_pipelines > 1 and not shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)

    if not ordered:  # shuffle the serialized records: cheaper to move than parsed ones
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if skip_corrupt:  # drop records that fail to parse, one at a time, before batching
        ds = ds.map(lambda path, serialized: _checked_record(path, serialized, num_features),
                    num_parallel_calls=AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True)
    stats = normalization if normalization is not None else metadata.get("feature_stats")
    mean, std = normalization_arrays(stats, num_features) if cfg.normalize else (None, None)
    finish = _Finish(num_features, cfg.reverse_target, with_keys)

    per_replica_batch = _per_replica_batch(cfg, input_context)
    if cfg.batching == "sorted_window" and not cfg.pad_to_max:
        plan = plan_window(cfg, metadata, num_replicas_in_sync=replicas,
                           per_replica_batch_size=per_replica_batch)
        ds = _sorted_window_batches(ds, plan, num_features, mean, std, finish, ordered, seed)
    else:
        buckets = plan_buckets(cfg, metadata, num_replicas_in_sync=replicas,
                               per_replica_batch_size=per_replica_batch)
        ds = _parse_records(ds, num_features, mean, std)
        ds = _batch(ds, buckets, num_features)
        ds = ds.map(lambda batch: finish(batch["x"], batch["length"], batch["id"],
                                         batch["label"]),
                    num_parallel_calls=AUTOTUNE)
    ds = ds.prefetch(AUTOTUNE)

    options = tf.data.Options()
    # Parallel reads and maps keep their order: the batches are a pure function
    # of the data and the seed, so a resumed epoch skips exactly the batches it
    # trained, and record sharding gives every pipeline the same record order.
    options.deterministic = True
    # Parallelism stays at its default (the core count, at most 16). The
    # model-based autotuner's thread makes deleting an exhausted iterator wait
    # 0.3-2.5 s (measured on TF 2.21), once per split and epoch.
    options.autotune.enabled = False
    if input_context is not None:
        # Already sharded above; keep tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)


def inference_batches(
    data_dir: str | Path,
    split: str,
    cfg: DataConfig,
    *,
    metadata: Mapping[str, Any] | None = None,
    normalization: Mapping[str, Any] | None = None,
    skip_corrupt: bool = False,
    read_ahead: int = 2,
) -> Iterator[tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]]:
    """The batches of a whole split in a fixed order, eagerly, for inference.

    Yields the element contract with keys (`make_dataset(..., training=False,
    with_keys=True)`): every record of the split exactly once, padded as
    `batching: sorted_window` pads (windows of `sort_window` records sorted by
    length, cut into batches, padded like training batches), with the same
    normalization, checks and errors. It reads the shards one after another
    in file order (each with a small reader from one traced function) and
    parses, cuts and pads with traced functions called per window and per
    batch: no `tf.data` pipeline to build and instantiate per call, which on
    a split of a few thousand records costs more than reading it. Windows
    are parsed as they are needed, so memory holds one window of records.

    `batching: buckets`, `pad_to_max` and `skip_corrupt` are served by
    `make_dataset` (same records, its batching).

    A background thread reads and parses up to `read_ahead` batches ahead,
    so reading overlaps the consumer's work (the encoder): both run mostly
    outside the GIL. 0 reads in the caller's thread.

    Raises:
        records.DatasetError: as `make_dataset`.
        tf.errors.InvalidArgumentError: a corrupt or truncated shard (naming
            it) or an inconsistent record (naming it and its shard).
    """
    batches = _inference_batches(data_dir, split, cfg, metadata, normalization, skip_corrupt)
    if read_ahead > 0:
        batches = _read_ahead(batches, read_ahead)
    yield from batches


def _read_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """`items`, produced up to `depth` ahead in a background thread.

    An exception of the producer is raised here, where its item would have
    come; closing this generator stops the producer at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised by the consumer
            offer((end, error))
            return
        offer((end, None))

    producer = threading.Thread(target=produce, name="seqpipe-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        producer.join()


def _inference_batches(data_dir, split, cfg, metadata, normalization, skip_corrupt):
    """`inference_batches` read in the caller's thread."""
    if cfg.batching != "sorted_window" or cfg.pad_to_max or skip_corrupt:
        dataset = make_dataset(data_dir, split, cfg, training=False, metadata=metadata,
                               with_keys=True, skip_corrupt=skip_corrupt,
                               normalization=normalization)
        yield from dataset
        return
    metadata, num_features, files, compression = _split_source(data_dir, split, metadata)
    stats = normalization if normalization is not None else metadata.get("feature_stats")
    mean, std = normalization_arrays(stats, num_features) if cfg.normalize else (None, None)
    plan = plan_window(cfg, metadata)
    parse_and_cut, gather = _inference_functions(
        num_features, None if mean is None else (tuple(mean.tolist()), tuple(std.tolist())),
        plan, cfg.reverse_target)
    tf_compression = records.tf_compression_type(metadata)

    def batches_of(paths: list[tf.Tensor], chunks: list[tf.Tensor]):
        window, order, pads = parse_and_cut(tf.concat(paths, 0), tf.concat(chunks, 0))
        for rows, pad in zip(tf.unstack(order), tf.unstack(pads), strict=True):
            yield gather(window, rows, pad)

    paths: list[tf.Tensor] = []
    chunks: list[tf.Tensor] = []
    pending = 0
    for path in files:
        for chunk in _read_shard_eagerly(path, _expected_bytes(path, compression),
                                         tf_compression):
            while pending + len(chunk) >= plan.window:  # a window is complete
                take = plan.window - pending
                paths.append(tf.fill([take], path))
                chunks.append(chunk[:take])
                yield from batches_of(paths, chunks)
                chunk, paths, chunks, pending = chunk[take:], [], [], 0
            if len(chunk):
                paths.append(tf.fill([len(chunk)], path))
                chunks.append(chunk)
                pending += len(chunk)
    if pending:
        yield from batches_of(paths, chunks)


@functools.lru_cache(maxsize=16)
def _inference_functions(num_features: int, stats: tuple | None, plan: WindowPlan,
                         reverse_target: bool):
    """`(parse_and_cut, gather)` of `inference_batches` as `tf.function`s, traced
    once per process for any window and batch: one call per window and one per
    batch instead of dozens of eager ops."""
    mean, std = ((None, None) if stats is None
                 else (np.asarray(stats[0], np.float32), np.asarray(stats[1], np.float32)))
    cut = plan.cutter()
    finish = _Finish(num_features, reverse_target, with_keys=True)
    strings = tf.TensorSpec([None], tf.string)

    @tf.function(input_signature=[strings, strings], autograph=False)
    def parse_and_cut(paths, serialized):
        window = _parse_window(paths, serialized, num_features, mean, std)
        order, pads = cut(window["length"])
        return window, order, pads

    window_spec = {"steps": tf.TensorSpec([None, num_features], tf.float32),
                   "start": tf.TensorSpec([None], tf.int64),
                   "length": tf.TensorSpec([None], tf.int32), "id": strings, "label": strings}

    @tf.function(input_signature=[window_spec, tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.int32)], autograph=False)
    def gather(window, rows, pad):
        return _gather_batch(window, rows, pad, finish)

    return parse_and_cut, gather


@functools.lru_cache(maxsize=4)
def _eager_shard_reader(compression: str):
    """`path -> chunks of its records` as a `tf.function`: building the reader
    in Python would cost more than reading a small shard."""
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def chunks(path):
        raw = tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
        return raw.batch(_PARSE_BATCH * 4)

    return chunks


def _read_shard_eagerly(path: str, expected: int, compression: str) -> Iterator[tf.Tensor]:
    """The records of one shard, a chunk at a time; raises naming `path` if its
    records do not account for every (decompressed) byte (see `_read_shard`)."""
    total = 0
    for chunk in _eager_shard_reader(compression)(tf.constant(path)):
        total += int(tf.reduce_sum(tf.strings.length(chunk))) + _RECORD_OVERHEAD * len(chunk)
        yield chunk
    modulus = 2**32 if compression else 2**62
    if total % modulus != expected:
        raise tf.errors.InvalidArgumentError(
            None, None,
            f"seqpipe: shard {path} is corrupt or truncated: readable records end at "
            f"{'decompressed byte ' if compression else 'byte '}{total}"
            f"{'; the gzip trailer says ' if compression else ' of '}{expected}")


def plan_buckets(cfg: DataConfig, metadata: Mapping[str, Any], *,
                 num_replicas_in_sync: int = 1,
                 per_replica_batch_size: int | None = None) -> list[Bucket]:
    """The buckets `make_dataset` batches into, overflow bucket last.

    Args:
        cfg: the data config.
        metadata: the dataset metadata (`bucket_boundaries`, `length_stats`).
        num_replicas_in_sync: replicas sharing the global `timestep_budget`.
        per_replica_batch_size: the fixed batch size; defaults to
            `cfg.batch_size // num_replicas_in_sync`.

    Returns:
        With `pad_to_max`, one bucket padded to the longest length; else one
        bucket per boundary plus the overflow bucket.
    """
    max_length = int(metadata.get("length_stats", {}).get("max", 0))
    if per_replica_batch_size is None:
        per_replica_batch_size = max(1, cfg.batch_size // num_replicas_in_sync)
    budget = timestep_budget(cfg, metadata, num_replicas_in_sync, per_replica_batch_size,
                             auto=False)
    if cfg.pad_to_max:
        if max_length < 1:
            raise records.DatasetError("pad_to_max needs length_stats.max in the metadata")
        return [Bucket(max_length, max_length,
                       _capped_batch_size(per_replica_batch_size, budget, max_length))]
    boundaries = bucket_boundaries(cfg, metadata)
    buckets = [Bucket(b, b if cfg.pad_to_bucket_boundary else None,
                      _capped_batch_size(per_replica_batch_size, budget, b))
               for b in boundaries]
    overflow_length = max([max_length, *boundaries[-1:], 1])
    buckets.append(Bucket(None, None,
                          _capped_batch_size(per_replica_batch_size, budget, overflow_length)))
    return buckets


def bucket_boundaries(cfg: DataConfig, metadata: Mapping[str, Any]) -> list[int]:
    """The boundaries `batching: buckets` uses.

    `cfg.bucket_boundaries`, else with `cfg.num_buckets` that many derived from
    the metadata's length histogram (`buckets.optimal_boundaries`), else the
    metadata's `bucket_boundaries`.
    """
    if cfg.bucket_boundaries:
        boundaries = [int(b) for b in cfg.bucket_boundaries]
    elif cfg.num_buckets:
        histogram = metadata.get("length_stats", {}).get("histogram")
        if not histogram:
            raise records.DatasetError("num_buckets needs length_stats.histogram in the "
                                       "metadata")
        boundaries = length_buckets.optimal_boundaries(histogram, cfg.num_buckets)
    else:
        boundaries = [int(b) for b in metadata.get("bucket_boundaries") or ()]
    if any(b >= c for b, c in zip(boundaries, boundaries[1:], strict=False)) or (
            boundaries and boundaries[0] < 1):
        raise records.DatasetError(f"bucket boundaries must be increasing positive ints; "
                                   f"Received: {boundaries}")
    return boundaries


def plan_window(cfg: DataConfig, metadata: Mapping[str, Any], *,
                num_replicas_in_sync: int = 1,
                per_replica_batch_size: int | None = None) -> WindowPlan:
    """The padding grid and full-batch sizes of `batching: sorted_window`.

    The grid is `buckets.length_grid(length_stats.max, cfg.length_grid)`, or
    every length from 1 to `length_stats.max` when `cfg.length_grid` is 0; a
    full batch padded to `grid[i]` holds `min(batch_size, budget // grid[i])`
    records (at least 1), the budget being `timestep_budget` per replica.
    """
    if per_replica_batch_size is None:
        per_replica_batch_size = max(1, cfg.batch_size // num_replicas_in_sync)
    max_length = int(metadata.get("length_stats", {}).get("max") or 0)
    if max_length < 1:
        raise records.DatasetError("batching sorted_window needs length_stats.max in the "
                                   "metadata")
    budget = timestep_budget(cfg, metadata, num_replicas_in_sync, per_replica_batch_size,
                             auto=True)
    grid = (length_buckets.length_grid(max_length, cfg.length_grid) if cfg.length_grid
            else range(1, max_length + 1))
    return WindowPlan(window=cfg.sort_window, grid=tuple(grid),
                      batch_sizes=tuple(_capped_batch_size(per_replica_batch_size, budget, t)
                                        for t in grid),
                      min_efficiency=cfg.min_batch_efficiency)


def timestep_budget(cfg: DataConfig, metadata: Mapping[str, Any], num_replicas_in_sync: int,
                    per_replica_batch_size: int, *, auto: bool) -> int:
    """The per-replica timestep budget; 0 for none.

    `cfg.timestep_budget` -1 means `per_replica_batch_size * length_stats.mean`
    when `auto` (sorted windows), else none.
    """
    if cfg.timestep_budget == -1:
        if not auto:
            return 0
        mean = metadata.get("length_stats", {}).get("mean")
        if not mean:
            raise records.DatasetError("timestep_budget -1 (auto) needs length_stats.mean in "
                                       "the metadata; set data.timestep_budget")
        return max(1, round(per_replica_batch_size * float(mean)))
    budget = cfg.timestep_budget // num_replicas_in_sync if cfg.timestep_budget else 0
    if cfg.timestep_budget and budget < 1:
        raise ValueError(f"timestep_budget {cfg.timestep_budget} is smaller than the "
                         f"{num_replicas_in_sync} replicas it is split over")
    return budget


def _capped_batch_size(batch_size: int, budget: int, length: int) -> int:
    """Records in a batch padded to `length`: at most batch_size and budget // length."""
    return min(batch_size, max(1, budget // length)) if budget else batch_size


def padding_efficiency(dataset: tf.data.Dataset) -> dict[str, Any]:
    """Iterates `dataset` once and measures how much of it is padding.

    Returns:
        `efficiency` (real / padded timesteps), `real_timesteps`,
        `padded_timesteps` (sum of B*T), `num_batches`, `num_records`,
        `distinct_shapes` (distinct [B, T] pairs: what a compiler retraces on),
        `distinct_lengths` (distinct T) and `batch_sizes` ({B: batches}).
    """
    real = padded = batches = num_records = 0
    shapes: set[tuple[int, int]] = set()
    sizes: dict[int, int] = {}
    for _, _, weights in dataset.as_numpy_iterator():
        b, t = weights.shape
        real += int(weights.sum())
        padded += b * t
        batches += 1
        num_records += b
        shapes.add((b, t))
        sizes[b] = sizes.get(b, 0) + 1
    return {
        "efficiency": real / padded if padded else float("nan"),
        "real_timesteps": real,
        "padded_timesteps": padded,
        "num_batches": batches,
        "num_records": num_records,
        "distinct_shapes": len(shapes),
        "distinct_lengths": len({t for _, t in shapes}),
        "batch_sizes": dict(sorted(sizes.items())),
    }


def _split_source(data_dir: str | Path, split: str, metadata: Mapping[str, Any] | None
                  ) -> tuple[Mapping[str, Any], int, list[str], str]:
    """The checked metadata, feature count, shard paths and compression of a split."""
    if metadata is None:
        metadata = records.read_metadata(data_dir)
    else:
        records.check_schema_version(metadata, f"{data_dir} metadata")
    compression = metadata.get("compression", "none")
    if compression not in ("none", "gzip"):
        raise records.DatasetError(f"{data_dir}: unknown compression {compression!r}")
    return (metadata, int(metadata["num_features"]), _split_files(data_dir, split, metadata),
            compression)


def _split_files(data_dir: str | Path, split: str, metadata: Mapping[str, Any]) -> list[str]:
    files = records.split_files(data_dir, split)
    if not files:
        known = sorted(metadata.get("splits", {}))
        raise records.DatasetError(
            f"{data_dir}: no shards for split {split!r} (expected files named "
            f"{records.shard_prefix(split)}-*-of-*; metadata lists splits {known})")
    listed = metadata.get("splits", {}).get(split, {}).get("files")
    if listed:
        present = {Path(f).name for f in files}
        missing = sorted(set(listed) - present)
        if missing:
            raise records.DatasetError(
                f"{data_dir}: split {split!r} is missing shard(s) listed in "
                f"{records.METADATA_FILE}: {missing}")
    return files


def _expected_bytes(path: str, compression: str) -> int:
    """The decompressed size of a shard; its records must account for every byte.

    For gzip this is the trailer's ISIZE (size mod 2**32, of the last gzip
    member: a shard written as several gzip members would be reported corrupt).
    """
    size = tf.io.gfile.stat(path).length
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


def normalization_arrays(stats: Mapping[str, Any] | None,
                         num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, std)` float32 arrays from `feature_stats`; a std of 0 becomes 1.

    Raises:
        records.DatasetError: `stats` lacks `mean`/`std` of `num_features` values.
    """
    stats = stats or {}
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None or std is None or len(mean) != num_features or len(std) != num_features:
        raise records.DatasetError(
            f"normalize needs feature_stats.mean and .std of length {num_features} in the "
            f"metadata; Received: mean={mean!r}, std={std!r}")
    std = np.asarray(std, np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return np.asarray(mean, np.float32), std


def _parse_records(ds: tf.data.Dataset, num_features: int, mean, std) -> tf.data.Dataset:
    """`(path, record)` pairs -> one dict per record: x [(L), F] ragged, length,
    id, label (`batching: buckets` and `pad_to_max`); parsed `_PARSE_BATCH` at
    a time with one `tf.io.parse_example` call."""
    def parse(paths, serialized):
        window = _parse_window(paths, serialized, num_features, mean, std)
        x = tf.RaggedTensor.from_row_lengths(window["steps"],
                                             tf.cast(window["length"], tf.int64),
                                             validate=False)
        return {"x": x, "length": window["length"], "id": window["id"],
                "label": window["label"]}

    return ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=AUTOTUNE).unbatch()


def _parse_window(paths, serialized, num_features, mean, std) -> dict[str, tf.Tensor]:
    """Serialized records -> their steps, concatenated, and where each starts.

    Returns:
        `steps` float32 [sum of lengths, F] (normalized if `mean` is given),
        `start` int64 [N] (the row of `steps` where record i starts),
        `length` int32 [N], `id` and `label` string [N]. Fails naming the
        first inconsistent record and its shard.
    """
    spec = {**records.tf_feature_spec(num_features),
            records.STEPS_KEY: tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)}
    parsed = tf.io.parse_example(serialized, spec)
    values = parsed[records.STEPS_KEY]
    length = tf.cast(parsed[records.LENGTH_KEY], tf.int32)
    num_values = tf.cast(values.row_lengths(), tf.int32)
    consistent = tf.logical_and(tf.equal(num_values, length * num_features), length >= 1)
    bad = tf.argmin(tf.cast(consistent, tf.int32))
    check = tf.debugging.Assert(tf.reduce_all(consistent), [
        "seqpipe: record", tf.gather(parsed[records.ID_KEY], bad), "in", tf.gather(paths, bad),
        "has length", tf.gather(length, bad), "but", tf.gather(num_values, bad), "values for",
        num_features, "features"])
    with tf.control_dependencies([check]):
        steps = tf.reshape(values.flat_values, [-1, num_features])
        start = values.row_starts() // num_features
    if mean is not None:
        steps = (steps - mean) / std
    return {"steps": steps, "start": start, "length": length,
            "id": parsed[records.ID_KEY], "label": parsed[records.LABEL_KEY]}


def _checked_record(path, serialized, num_features):
    """`(path, serialized)` unchanged if the record parses and is consistent; else fails."""
    window = _parse_window(path[None], serialized[None], num_features, None, None)
    with tf.control_dependencies([window["steps"]]):
        return tf.identity(path), tf.identity(serialized)


class _Finish:
    """Padded steps `x` [B, T, F] and lengths -> the element `(inputs, target, weights)`.

    The mask, the weights and the reversed target are made here, once per
    batch, from the lengths (never from `x == 0`).
    """

    def __init__(self, num_features: int, reverse_target: bool, with_keys: bool):
        self.num_features = num_features
        self.reverse_target = reverse_target
        self.with_keys = with_keys

    def __call__(self, x, length, ids, labels, real=None):
        x = tf.ensure_shape(x, [None, None, self.num_features])
        if real is None:
            real = tf.sequence_mask(length, tf.shape(x)[1])
        mask = tf.cast(real, tf.float32)
        # Reverses x[i, :length[i]] and leaves the padding after it in place.
        target = (tf.reverse_sequence(x, length, seq_axis=1, batch_axis=0)
                  if self.reverse_target else x)
        inputs = {"x": x, "mask": mask}
        if self.with_keys:
            inputs.update(id=ids, label=labels, length=length)
        return inputs, target, mask


def _sorted_window_batches(ds: tf.data.Dataset, plan: WindowPlan, num_features: int,
                           mean, std, finish: _Finish, ordered: bool,
                           seed: int | tf.Tensor) -> tf.data.Dataset:
    """`(path, record)` pairs -> batches: parse a window of records at once, sort it
    by length, cut it into batches, pad each, shuffle the batches.

    Records stay serialized strings until a whole window is parsed with one
    `tf.io.parse_example` (and normalized with one op): no per-record tensors
    after the read.
    """
    cut = plan.cutter()

    def parse_and_cut(paths, serialized):
        window = _parse_window(paths, serialized, num_features, mean, std)
        order, pads = cut(window["length"])
        return window, order, pads

    ds = ds.batch(plan.window)
    ds = ds.map(parse_and_cut, num_parallel_calls=AUTOTUNE)
    ds = ds.flat_map(lambda window, order, pads: tf.data.Dataset.from_tensor_slices(
        (order, pads)).map(lambda rows, pad: _gather_batch(window, rows, pad, finish)))
    if not ordered:
        batches_per_window = -(-plan.window // min(plan.batch_sizes))
        ds = ds.shuffle(min(batches_per_window, plan.window), seed=seed,
                        reshuffle_each_iteration=True)
    return ds


def _fixed_size_cuts(lengths: tf.Tensor, grid: tf.Tensor, sizes: tf.Tensor):
    """`_window_cuts` when every full batch has the same size (no timestep budget):
    consecutive runs of the sorted records, computed without a loop."""
    size = sizes[0]
    n = tf.size(lengths)
    num_batches = (n + size - 1) // size
    order = tf.argsort(lengths, stable=True)
    # The longest record of each batch: its last one in sorted order.
    longest = tf.gather(lengths, tf.gather(
        order, tf.minimum(tf.range(num_batches) * size + size - 1, n - 1)))
    # The first grid value >= longest; past the grid, the batch's longest.
    g = tf.minimum(tf.searchsorted(grid, longest, side="left"), tf.size(grid) - 1)
    rows = tf.reshape(tf.pad(order, [[0, num_batches * size - n]], constant_values=-1),
                      [num_batches, size])
    return rows, tf.maximum(tf.gather(grid, g), longest)


def _window_cuts(lengths: tf.Tensor, grid: tf.Tensor, sizes: tf.Tensor,
                 min_efficiency: float = 0.0):
    """Cuts a window into batches: `(order [num_batches, max_size], pad [num_batches])`.

    Records sorted by length (stable) are taken in order. A batch starting at
    record i is padded to the first grid value T whose full batch (`sizes`)
    of records i, i+1, ... all fit in T, and holds that many records; only a
    window's last batch may hold fewer. Lengths beyond the last grid value pad
    to their batch's longest. With `min_efficiency`, a batch ends before the
    first record j that would leave less than that fraction of it real if
    padded to j's (grid) length, and is then padded to its own last record's
    grid length: in a sparse tail of long sequences, a few records spanning
    150..356 steps no longer pad to 356 together. `order` rows list the
    batch's record indices, padded with -1.
    """
    order = tf.argsort(lengths, stable=True)
    sorted_lengths = tf.gather(lengths, order)
    n = tf.size(lengths)
    max_size = tf.reduce_max(sizes)
    # Each record's length rounded up to the grid (itself past the grid's end).
    on_grid = tf.maximum(sorted_lengths, tf.gather(grid, tf.minimum(
        tf.searchsorted(grid, sorted_lengths, side="left"), tf.size(grid) - 1)))

    def efficient_size(start, size):
        """The most of `size` records from `start` keeping the batch efficient enough."""
        real = tf.cast(tf.cumsum(sorted_lengths[start:start + size]), tf.float32)
        count = tf.cast(tf.range(1, size + 1), tf.float32)
        padded = count * tf.cast(on_grid[start:start + size], tf.float32)
        # Record 0 always stays: a lone record is as efficient as its grid allows.
        too_sparse = tf.logical_and(real < min_efficiency * padded, count > 1.0)
        return tf.where(tf.reduce_any(too_sparse),
                        tf.argmax(tf.cast(too_sparse, tf.int32), output_type=tf.int32), size)

    def cut(start, rows, pads):
        last = tf.minimum(start + sizes - 1, n - 1)
        fits = tf.gather(sorted_lengths, last) <= grid
        g = tf.where(tf.reduce_any(fits), tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
                     tf.size(grid) - 1)
        full = tf.minimum(sizes[g], n - start)
        pad = tf.maximum(grid[g], sorted_lengths[start + full - 1])
        size = full
        if min_efficiency:
            size = efficient_size(start, full)
            pad = tf.where(size < full, on_grid[start + size - 1], pad)
        row = tf.pad(order[start:start + size], [[0, max_size - size]], constant_values=-1)
        return start + size, rows.write(rows.size(), row), pads.write(pads.size(), pad)

    _, rows, pads = tf.while_loop(
        lambda start, rows, pads: start < n, cut,
        (tf.constant(0), tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                        element_shape=[None]),
         tf.TensorArray(tf.int32, size=0, dynamic_size=True)))
    return rows.stack(), pads.stack()


def _gather_batch(window, order, pad, finish: _Finish):
    """One batch of a parsed window: records `order` (ignoring -1), right-padded to
    T=`pad` with one gather from the window's steps."""
    order = tf.boolean_mask(order, order >= 0)
    length = tf.gather(window["length"], order)
    start = tf.gather(window["start"], order)
    positions = tf.range(pad)
    real = positions[tf.newaxis, :] < length[:, tf.newaxis]
    positions = tf.cast(positions, tf.int64)
    rows = tf.where(real, start[:, tf.newaxis] + positions[tf.newaxis, :], 0)
    x = tf.where(real[:, :, tf.newaxis], tf.gather(window["steps"], rows), 0.0)
    return finish(x, length, tf.gather(window["id"], order), tf.gather(window["label"], order),
                  real)


def _per_replica_batch(cfg: DataConfig, input_context) -> int:
    if input_context is None:
        return cfg.batch_size
    return input_context.get_per_replica_batch_size(cfg.batch_size)


def _padded_shapes(num_features: int, pad_length: tf.Tensor) -> dict[str, tf.Tensor]:
    """`pad_length` -1 means each batch's longest sequence."""
    steps = tf.reshape(tf.cast(pad_length, tf.int64), [1])
    scalar = tf.constant([], tf.int64)
    return {
        "x": tf.concat([steps, [num_features]], 0),
        "id": scalar,
        "label": scalar,
        "length": scalar,
    }


def _batch(ds: tf.data.Dataset, buckets: Sequence[Bucket], num_features: int):
    """Per-record dicts -> bucketed padded batches (`batching: buckets`, `pad_to_max`)."""
    # Unbatched ragged rows arrive as rank-0-ragged specs, which padded_batch refuses.
    ds = ds.map(lambda record: {key: tf.convert_to_tensor(value)
                                for key, value in record.items()},
                num_parallel_calls=AUTOTUNE)
    if len(buckets) == 1 and buckets[0].max_length is not None:  # pad_to_max
        only = buckets[0]
        return ds.padded_batch(only.batch_size, _padded_shapes(num_features, only.pad_length))
    boundaries = tf.constant([b.max_length for b in buckets[:-1]], tf.int32)
    batch_sizes = tf.constant([b.batch_size for b in buckets], tf.int64)
    pad_lengths = tf.constant([-1 if b.pad_length is None else b.pad_length for b in buckets],
                              tf.int64)

    def bucket_of(element):
        # Bucket i holds (b[i-1], b[i]]; lengths above the last boundary overflow.
        return tf.reduce_sum(tf.cast(element["length"] > boundaries, tf.int64))

    def batch_bucket(key, window):
        return window.padded_batch(batch_sizes[key],
                                   _padded_shapes(num_features, pad_lengths[key]))

    return ds.group_by_window(key_func=bucket_of, reduce_func=batch_bucket,
                              window_size_func=lambda key: batch_sizes[key])
